package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// A binary keeps every byte and gets the mode asked for; a script is
// executable by its "#!"; other files stay 0644.
func TestFilesLayerModes(t *testing.T) {
	bin := "\x7fELF\x00\x01\xff\xfe binary"
	l := FilesLayer(t, map[string]string{"/bin/tool": bin, "/etc/conf": "x", "/bin/run": "#!/bin/sh\n"}, Mode("/bin/tool", 0o755))
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.Mode
		if h.Name == "bin/tool" {
			body, _ := io.ReadAll(tr)
			if !bytes.Equal(body, []byte(bin)) {
				t.Errorf("bin/tool body %q, want %q", body, bin)
			}
		}
	}
	for name, mode := range map[string]int64{"bin/tool": 0o755, "bin/run": 0o755, "etc/conf": 0o644, "bin/": 0o755} {
		if got[name] != mode {
			t.Errorf("%s: mode %o, want %o (all: %v)", name, got[name], mode, got)
		}
	}
}
