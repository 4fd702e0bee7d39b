package blockdev

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fakeSys builds <root>/class/block with links into <root>/devices, as the
// kernel lays it out: a partition's directory sits inside its disk's.
func fakeSys(t *testing.T, uevents map[string]string) string {
	t.Helper()
	sys := t.TempDir()
	class := filepath.Join(sys, "class", "block")
	if err := os.MkdirAll(class, 0o755); err != nil {
		t.Fatal(err)
	}
	for rel, uevent := range uevents {
		dir := filepath.Join(sys, "devices", "virtio0", "block", rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte(uevent), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "size"), []byte("2048\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(dir, filepath.Join(class, filepath.Base(rel))); err != nil {
			t.Fatal(err)
		}
	}
	return sys
}

func TestScan(t *testing.T) {
	sys := fakeSys(t, map[string]string{
		"vda":      "MAJOR=253\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
		"vda/vda2": "MAJOR=253\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=BERTH-A\n",
		"vda/vda1": "MAJOR=253\nMINOR=1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ESP\n", // no DEVNAME
	})
	// A device that went away between listing and reading is skipped.
	if err := os.Symlink(filepath.Join(sys, "gone"), filepath.Join(sys, "class", "block", "vdz")); err != nil {
		t.Fatal(err)
	}
	devs, err := Scan(sys)
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{Name: "vda", DevName: "vda", Major: 253, Sectors: 2048},
		{Name: "vda1", DevName: "vda1", Major: 253, Minor: 1, Partition: true, PartN: 1, PartName: "ESP", Disk: "vda", Sectors: 2048},
		{Name: "vda2", DevName: "vda2", Major: 253, Minor: 2, Partition: true, PartN: 2, PartName: "BERTH-A", Disk: "vda", Sectors: 2048},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Fatalf("Scan:\n got %+v\nwant %+v", devs, want)
	}
	if got := ByPartName(devs, "BERTH-A"); len(got) != 1 || got[0].Name != "vda2" {
		t.Errorf("ByPartName = %+v", got)
	}
	if d, ok := ByDiskPartN(devs, "vda", 1); !ok || d.Name != "vda1" {
		t.Errorf("ByDiskPartN = %+v, %v", d, ok)
	}
	if got := Disks(devs); !reflect.DeepEqual(got, []string{"vda"}) {
		t.Errorf("Disks = %q", got)
	}
	if got := Names(devs); got != "vda vda1 vda2" {
		t.Errorf("Names = %q", got)
	}
	if got := Names(nil); got != "none" {
		t.Errorf("Names(nil) = %q", got)
	}
}

func TestScanErrors(t *testing.T) {
	for _, tc := range []struct{ uevent, want string }{
		{"DEVTYPE=partition\nPARTN=x\n", `block device vdb: PARTN="x"`},
		{"MAJOR=-1\n", `block device vdb: MAJOR="-1"`},
		{"MAJOR=8\nMINOR=99999999999\n", `block device vdb: MINOR="99999999999"`},
	} {
		sys := fakeSys(t, map[string]string{"vdb": tc.uevent})
		if _, err := Scan(sys); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("uevent %q: error %v, want prefix %q", tc.uevent, err, tc.want)
		}
	}
	if _, err := Scan(filepath.Join(t.TempDir(), "nosys")); err == nil || !strings.HasPrefix(err.Error(), "list block devices: ") {
		t.Errorf("missing sysfs: %v", err)
	}
}

func TestLogicalBlockSize(t *testing.T) {
	sys := t.TempDir()
	q := filepath.Join(sys, "class", "block", "vda", "queue")
	if err := os.MkdirAll(q, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		content string
		want    int
		err     string
	}{
		{"512\n", 512, ""},
		{"4096\n", 4096, ""},
		{"256\n", 0, `sector size of vda: "256" is not a sector size`},
		{"lots\n", 0, `sector size of vda: "lots" is not a sector size`},
	} {
		if err := os.WriteFile(filepath.Join(q, "logical_block_size"), []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		n, err := LogicalBlockSize(sys, "vda")
		if n != tc.want || (tc.err == "") != (err == nil) || (err != nil && err.Error() != tc.err) {
			t.Errorf("%q: got %d, %v; want %d, %q", tc.content, n, err, tc.want, tc.err)
		}
	}
}

// TestImportsStayLight: the initrd's static /init links this package, so a
// new import here grows every initrd; only these are expected.
func TestImportsStayLight(t *testing.T) {
	allowed := map[string]bool{"errors": true, "fmt": true, "os": true, "path/filepath": true, "sort": true, "strconv": true, "strings": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		ast, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); !allowed[p] {
				t.Errorf("%s imports %s: the initrd links this package, keep it to the standard library basics", f, p)
			}
		}
	}
}
