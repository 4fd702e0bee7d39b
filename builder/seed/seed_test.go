package seed

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// TestWrite checks the image with the filesystem tools a node and a user
// would use: fsck finds nothing to fix, blkid sees the label, and mtools
// reads back the exact bytes.
func TestWrite(t *testing.T) {
	needTools(t, "mkfs.vfat", "mcopy", "mtype", "fsck.vfat", "blkid")
	// Bytes that a text-mode copy would alter: CRLF, no final newline, UTF-8.
	body := []byte("hostname: node-1\r\nagent:\n  voters: 3\n  labels: {zone: \"é\"}\n# end")
	img := filepath.Join(t.TempDir(), "seed.img")
	if err := Write(img, body); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command("fsck.vfat", "-n", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.vfat -n: %v\n%s", err, out)
	}
	// fsck counts the volume label's entry as a file.
	if s := string(out); !strings.Contains(s, "2 files, 1/") {
		t.Errorf("fsck.vfat -n: want the label and one file in one cluster:\n%s", s)
	}

	out, err = exec.Command("blkid", "-p", "-o", "export", img).Output()
	if err != nil {
		t.Fatalf("blkid -p: %v", err)
	}
	tags := string(out)
	if !strings.Contains(tags, "\nLABEL="+Label+"\n") || !strings.Contains(tags, "\nTYPE=vfat\n") {
		t.Errorf("blkid -p: want LABEL=%s and TYPE=vfat, got:\n%s", Label, tags)
	}

	cmd := exec.Command("mtype", "-i", img, "::/"+FileName)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("mtype: %v", err)
	}
	if !bytes.Equal(got, body) {
		t.Errorf("read back %q, wrote %q", got, body)
	}

	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (the file may hold a join token)", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(filepath.Dir(img))
	if len(ents) != 1 {
		t.Errorf("work files left beside the image: %v", ents)
	}
}

func TestWriteIsReproducible(t *testing.T) {
	needTools(t, "mkfs.vfat", "mcopy")
	dir := t.TempDir()
	sums := map[string]bool{}
	for _, name := range []string{"a.img", "b.img"} {
		p := filepath.Join(dir, name)
		if err := Write(p, []byte("hostname: x\n")); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		sums[string(sum[:])] = true
	}
	if len(sums) != 1 {
		t.Error("two seeds of the same node.yaml differ")
	}
}

func TestWriteLarge(t *testing.T) {
	needTools(t, "mkfs.vfat", "mcopy", "mtype")
	body := bytes.Repeat([]byte("# padding line of a big but legal file\n"), MaxBytes/40)
	img := filepath.Join(t.TempDir(), "seed.img")
	if err := Write(img, body); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mtype", "-i", img, "::/"+FileName)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("large file not read back intact (err %v, %d of %d bytes)", err, len(got), len(body))
	}
}

func TestWriteRefuses(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "big.img"), make([]byte, MaxBytes+1)); err == nil {
		t.Error("a node.yaml over MaxBytes was accepted")
	}
	for _, label := range []string{"", "lower", "TWELVE-CHARS", "A B", "A/B"} {
		if err := WriteWithLabel(filepath.Join(dir, "l.img"), label, []byte("x: 1\n")); err == nil {
			t.Errorf("label %q was accepted", label)
		}
	}
	if err := Write(filepath.Join(dir, "missing", "seed.img"), []byte("x: 1\n")); err == nil {
		t.Error("a seed in a missing directory was reported written")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused writes left files: %v", ents)
	}
}
