package esp

import (
	"bytes"
	"sort"
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

func testInput() Input {
	return Input{
		OSName:       "minimal",
		Version:      "1.2.3",
		BootLoader:   []byte("MZ systemd-boot"),
		Kernel:       []byte("kernel bytes"),
		Initrd:       []byte("initrd bytes"),
		SlotPartUUID: layout.GUID("minimal", "1.2.3", "slot-a"),
		Cmdline:      []string{"console=ttyS0,115200", "quiet"},
		Timeout:      2,
		Tries:        3,
	}
}

func filesByPath(t *testing.T, files []File) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for _, f := range files {
		if _, dup := m[f.Path]; dup {
			t.Fatalf("duplicate ESP path %s", f.Path)
		}
		m[f.Path] = f.Data
	}
	return m
}

func TestFiles(t *testing.T) {
	in := testInput()
	files, err := Files(in)
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.Path
		if strings.HasPrefix(f.Path, "/") {
			t.Errorf("ESP path %q is not relative", f.Path)
		}
	}
	if !sort.StringsAreSorted(paths) {
		t.Errorf("paths not sorted: %q", paths)
	}
	got := filesByPath(t, files)
	entryPath := "loader/entries/berth-a+3.conf"
	for path, want := range map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":            in.BootLoader,
		"EFI/systemd/systemd-bootx64.efi": in.BootLoader,
		"berth/a/vmlinuz":                 in.Kernel,
		"berth/a/initrd.img":              in.Initrd,
	} {
		if data, ok := got[path]; !ok {
			t.Errorf("missing %s", path)
		} else if !bytes.Equal(data, want) {
			t.Errorf("%s = %q, want %q", path, data, want)
		}
	}
	if _, ok := got[layout.LoaderConfPath]; !ok || layout.LoaderConfPath != "loader/loader.conf" {
		t.Errorf("missing loader/loader.conf")
	}
	if len(got) != 6 {
		t.Errorf("got %d files %q, want 6", len(got), paths)
	}

	data, ok := got[entryPath]
	if !ok {
		t.Fatalf("missing %s in %q", entryPath, paths)
	}
	e, err := layout.ParseEntry(data)
	if err != nil {
		t.Fatalf("entry does not parse: %v\n%s", err, data)
	}
	if e.Linux != "berth/a/vmlinuz" || e.Initrd != "berth/a/initrd.img" {
		t.Errorf("entry kernel %q initrd %q", e.Linux, e.Initrd)
	}
	if e.Version != in.Version || !strings.Contains(e.Title, in.Version) {
		t.Errorf("entry version %q title %q, want version %s", e.Version, e.Title, in.Version)
	}
	if v, _ := e.Option(layout.CmdlineRoot); v != "PARTUUID="+in.SlotPartUUID {
		t.Errorf("%s = %q, want PARTUUID=%s", layout.CmdlineRoot, v, in.SlotPartUUID)
	}
	if v, _ := e.Option(layout.CmdlineSlot); v != "a" {
		t.Errorf("%s = %q, want a", layout.CmdlineSlot, v)
	}
	opts := strings.Join(e.Options, " ")
	if !strings.Contains(" "+opts+" ", " ro ") {
		t.Errorf("options %q lack ro", opts)
	}
	// The spec's command line comes after berth's own keys, in order.
	if !strings.HasSuffix(opts, " console=ttyS0,115200 quiet") {
		t.Errorf("options %q do not end with the spec's cmdline", opts)
	}
}

func TestFilesTriesNameTheEntry(t *testing.T) {
	for _, tries := range []int{1, 5} {
		in := testInput()
		in.Tries = tries
		files, err := Files(in)
		if err != nil {
			t.Fatal(err)
		}
		var entries []string
		for _, f := range files {
			if strings.HasPrefix(f.Path, layout.EntriesDir+"/") {
				entries = append(entries, strings.TrimPrefix(f.Path, layout.EntriesDir+"/"))
			}
		}
		if len(entries) != 1 {
			t.Fatalf("tries %d: entries %q, want one", tries, entries)
		}
		n, err := layout.ParseEntryName(entries[0])
		if err != nil {
			t.Fatal(err)
		}
		if n.ID != "berth-a" || !n.HasCounter || n.Left != tries || n.Done != 0 {
			t.Errorf("tries %d: entry name %q parses as %+v", tries, entries[0], n)
		}
	}
}

func TestLoaderConf(t *testing.T) {
	in := testInput()
	in.Timeout = 7
	files, err := Files(in)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(filesByPath(t, files)[layout.LoaderConfPath])
	lines := strings.Split(strings.TrimSpace(conf), "\n")
	want := map[string]bool{"timeout 7": true, "editor no": true}
	for _, l := range lines {
		delete(want, l)
		if strings.HasPrefix(l, "default") {
			t.Errorf("loader.conf sets %q: systemd-boot's own order must choose", l)
		}
	}
	if len(want) > 0 {
		t.Errorf("loader.conf %q lacks %v", conf, want)
	}
}

func TestFilesDeterministic(t *testing.T) {
	a, err := Files(testInput())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Files(testInput())
	for i := range a {
		if a[i].Path != b[i].Path || !bytes.Equal(a[i].Data, b[i].Data) {
			t.Fatalf("two calls differ at %s", a[i].Path)
		}
	}
}

func TestFilesErrors(t *testing.T) {
	for name, mutate := range map[string]func(*Input){
		"no boot loader": func(in *Input) { in.BootLoader = nil },
		"no kernel":      func(in *Input) { in.Kernel = nil },
		"no initrd":      func(in *Input) { in.Initrd = []byte{} },
		"no partuuid":    func(in *Input) { in.SlotPartUUID = "" },
		"zero tries":     func(in *Input) { in.Tries = 0 },
		"negative tries": func(in *Input) { in.Tries = -1 },
	} {
		in := testInput()
		mutate(&in)
		files, err := Files(in)
		if err == nil {
			t.Errorf("%s: Files succeeded with %d files", name, len(files))
			continue
		}
		if !strings.HasPrefix(err.Error(), "esp: ") {
			t.Errorf("%s: error %q lacks context", name, err)
		}
	}
}
