package finder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/builder/initrd/init/internal/bootcfg"
	"github.com/berth-os/berth/builder/initrd/init/internal/testdisk"
	"github.com/berth-os/berth/updater/layout"
)

var labels = map[int]string{1: layout.LabelESP, 2: layout.LabelSlotA, 3: layout.LabelSlotB, 4: layout.LabelState}

// addDisk creates what the kernel would show for a berth disk: a sysfs
// directory per disk with one sub-directory per partition, the
// /sys/class/block links, and the disk's node in dev (an image file).
func addDisk(t *testing.T, f Finder, name, guidSalt string) {
	t.Helper()
	testdisk.Make(t, filepath.Join(f.Dev, name), 48, guidSalt)
	diskDir := filepath.Join(f.Sys, "devices", "pci0000:00", name, "block", name)
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		t.Helper()
		rel, err := filepath.Rel(filepath.Join(f.Sys, "class", "block"), target)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(rel, filepath.Join(f.Sys, "class", "block", name)); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(diskDir, "uevent"), fmt.Sprintf("MAJOR=254\nMINOR=0\nDEVNAME=%s\nDEVTYPE=disk\n", name))
	write(filepath.Join(diskDir, "size"), "98304\n")
	write(filepath.Join(diskDir, "queue", "logical_block_size"), "512\n")
	link(diskDir, name)
	for n := 1; n <= 4; n++ {
		part := fmt.Sprintf("%s%d", name, n)
		write(filepath.Join(diskDir, part, "uevent"),
			fmt.Sprintf("MAJOR=254\nMINOR=%d\nDEVNAME=%s\nDEVTYPE=partition\nPARTN=%d\nPARTNAME=%s\n", n, part, n, labels[n]))
		write(filepath.Join(diskDir, part, "size"), "16384\n")
		link(filepath.Join(diskDir, part), part)
	}
}

func newFinder(t *testing.T) Finder {
	dir := t.TempDir()
	f := Finder{Sys: filepath.Join(dir, "sys"), Dev: filepath.Join(dir, "dev")}
	for _, d := range []string{filepath.Join(f.Sys, "class", "block"), f.Dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestSlotByLabelAndState(t *testing.T) {
	t.Parallel()
	f := newFinder(t)
	spec := bootcfg.RootSpec{Kind: bootcfg.RootByPartLabel, Value: layout.LabelSlotB}
	if _, err := f.Slot(spec); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "block devices: none") {
		t.Fatalf("empty sysfs: error = %v, want ErrNotFound listing no devices", err)
	}
	addDisk(t, f, "vda", "")
	d, err := f.Slot(spec)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "vda3" || d.Disk != "vda" || d.PartN != 3 || f.Node(d) != filepath.Join(f.Dev, "vda3") {
		t.Fatalf("slot = %+v, want vda3 on vda", d)
	}
	s, err := f.State(d.Disk)
	if err != nil || s.Name != "vda4" {
		t.Fatalf("state = %+v, %v; want vda4", s, err)
	}
	_, err = f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartLabel, Value: "BERTH-C"})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "vda vda1 vda2 vda3 vda4") {
		t.Fatalf("error = %v, want ErrNotFound listing the devices", err)
	}
}

func TestTwoDisks(t *testing.T) {
	t.Parallel()
	f := newFinder(t)
	addDisk(t, f, "vda", "")
	addDisk(t, f, "vdb", "second")

	// The same label on two disks is refused, not guessed.
	_, err := f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartLabel, Value: layout.LabelSlotA})
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "vda2 vdb2") {
		t.Fatalf("error = %v, want an ambiguity error naming vda2 and vdb2", err)
	}

	// PARTUUID picks one: the GUIDs come from each disk's GPT.
	second := layout.GUID("testdisk", "second", fmt.Sprint(layout.PartSlotA))
	d, err := f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartUUID, Value: second})
	if err != nil || d.Name != "vdb2" {
		t.Fatalf("slot by PARTUUID = %+v, %v; want vdb2", d, err)
	}
	first := testdisk.PartGUID[layout.PartSlotB]
	d, err = f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartUUID, Value: first})
	if err != nil || d.Name != "vda3" {
		t.Fatalf("slot by PARTUUID = %+v, %v; want vda3", d, err)
	}
	_, err = f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartUUID, Value: layout.GUID("nowhere")})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown PARTUUID: error = %v, want ErrNotFound", err)
	}

	// The state partition comes from the slot's own disk.
	s, err := f.State("vdb")
	if err != nil || s.Name != "vdb4" {
		t.Fatalf("state of vdb = %+v, %v; want vdb4", s, err)
	}
	if _, err := f.State("vdc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("state of vdc: error = %v, want ErrNotFound", err)
	}
}

func TestPartUUIDSkipsUnreadableDisks(t *testing.T) {
	t.Parallel()
	f := newFinder(t)
	addDisk(t, f, "vda", "")
	// A disk whose node cannot be read (e.g. an empty CD drive) must not
	// stop the search on the others.
	if err := os.WriteFile(filepath.Join(f.Dev, "vda"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	addDisk(t, f, "vdb", "second")
	second := layout.GUID("testdisk", "second", fmt.Sprint(layout.PartState))
	d, err := f.Slot(bootcfg.RootSpec{Kind: bootcfg.RootByPartUUID, Value: second})
	if err != nil || d.Name != "vdb4" {
		t.Fatalf("slot = %+v, %v; want vdb4", d, err)
	}
}
