package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

// fakeBlock builds a sysfs and /dev tree with two berth disks, vda and
// vdb, each with ESP, BERTH-A, BERTH-B and BERTH-STATE partitions.
func fakeBlock(t *testing.T) (blockDevices, string) {
	t.Helper()
	root := t.TempDir()
	b := blockDevices{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	classDir := filepath.Join(b.sys, "class", "block")
	mk := func(path, data string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, name); err != nil {
			t.Fatal(err)
		}
	}
	labels := []string{layout.LabelESP, layout.LabelSlotA, layout.LabelSlotB, layout.LabelState}
	for d, disk := range []string{"vda", "vdb"} {
		diskDir := filepath.Join(b.sys, "devices", "pci0000:00", fmt.Sprintf("virtio%d", d), "block", disk)
		mk(filepath.Join(diskDir, "uevent"), fmt.Sprintf("MAJOR=253\nMINOR=%d\nDEVNAME=%s\nDEVTYPE=disk\n", d*16, disk))
		link(diskDir, filepath.Join(classDir, disk))
		mk(filepath.Join(b.dev, disk), "")
		for i, label := range labels {
			part := fmt.Sprintf("%s%d", disk, i+1)
			mk(filepath.Join(diskDir, part, "uevent"), fmt.Sprintf("MAJOR=253\nMINOR=%d\nDEVNAME=%s\nDEVTYPE=partition\nPARTN=%d\nPARTNAME=%s\n", d*16+i+1, part, i+1, label))
			link(filepath.Join(diskDir, part), filepath.Join(classDir, part))
			mk(filepath.Join(b.dev, part), "")
			link("../../"+part, filepath.Join(b.dev, "disk", "by-partuuid", strings.ToLower(partUUIDOf(disk, i+1))))
		}
	}
	return b, root
}

func partUUIDOf(disk string, n int) string {
	return fmt.Sprintf("%08X-0000-5000-8000-%012d", n, len(disk)+int(disk[2]))
}

func TestSlotDeviceOnTheBootedDisk(t *testing.T) {
	b, root := fakeBlock(t)
	cmdline := filepath.Join(root, "cmdline")
	// Booted from vdb's slot A, found through its PARTUUID ("/" is not a partition).
	os.WriteFile(cmdline, []byte("berth.root=PARTUUID="+partUUIDOf("vdb", 2)+" berth.slot=a"), 0o644)
	b.rootDev = func() (uint32, uint32, error) { return 0, 0, errors.New("overlay") }
	dev, err := b.slotDevice(cmdline, layout.SlotB)
	if err != nil || dev != filepath.Join(b.dev, "vdb3") {
		t.Errorf("slot b device = %q, %v; want vdb3, on the booted disk", dev, err)
	}
	if uuid, err := b.partUUID(dev); err != nil || uuid != partUUIDOf("vdb", 3) {
		t.Errorf("partUUID = %q, %v", uuid, err)
	}
	// The device of "/" wins over the command line.
	b.rootDev = func() (uint32, uint32, error) { return 253, 2, nil } // vda2
	if dev, err := b.slotDevice(cmdline, layout.SlotB); err != nil || dev != filepath.Join(b.dev, "vda3") {
		t.Errorf("with / on vda2: slot b device = %q, %v", dev, err)
	}
	// A label found on both disks cannot tell the booted one.
	b.rootDev = nil
	os.WriteFile(cmdline, []byte("berth.root=PARTLABEL=BERTH-A berth.slot=a"), 0o644)
	if _, err := b.slotDevice(cmdline, layout.SlotB); err == nil || !strings.Contains(err.Error(), "2 partitions are labelled BERTH-A") {
		t.Errorf("ambiguous label: %v", err)
	}
	os.WriteFile(cmdline, []byte("berth.slot=a"), 0o644)
	if _, err := b.slotDevice(cmdline, layout.SlotB); err == nil || !strings.Contains(err.Error(), "no berth.root") {
		t.Errorf("no root: %v", err)
	}
	os.WriteFile(cmdline, []byte("berth.root=PARTUUID=00000000-0000-0000-0000-000000000000"), 0o644)
	if _, err := b.slotDevice(cmdline, layout.SlotB); err == nil {
		t.Error("unknown PARTUUID accepted")
	}
}

func TestSlotDeviceMissingLabel(t *testing.T) {
	b, root := fakeBlock(t)
	// Relabel vda3: the booted disk no longer has a BERTH-B.
	p := filepath.Join(b.sys, "class", "block", "vda3", "uevent")
	data, _ := os.ReadFile(p)
	os.WriteFile(p, []byte(strings.Replace(string(data), "PARTNAME=BERTH-B", "PARTNAME=OTHER", 1)), 0o644)
	b.rootDev = func() (uint32, uint32, error) { return 253, 2, nil }
	_, err := b.slotDevice(filepath.Join(root, "none"), layout.SlotB)
	if err == nil || !strings.Contains(err.Error(), "no partition labelled BERTH-B on vda") {
		t.Errorf("err = %v", err)
	}
}

func TestDecodeEFIString(t *testing.T) {
	got, err := decodeEFIString([]byte{7, 0, 0, 0, 'a', 0, 0xe9, 0, 0, 0, 'x', 0})
	if err != nil || got != "aé" {
		t.Errorf("decode = %q, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {1, 2, 3}, {1, 2, 3, 4, 5}} {
		if _, err := decodeEFIString(bad); err == nil {
			t.Errorf("decode(%v) accepted", bad)
		}
	}
}
