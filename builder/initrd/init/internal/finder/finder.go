// Package finder locates the berth slot and state partitions among the
// block devices the kernel knows, by GPT partition name or GUID.
package finder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/builder/initrd/init/internal/bootcfg"
	"github.com/berth-os/berth/builder/initrd/init/internal/gpt"
	"github.com/berth-os/berth/internal/blockdev"
	"github.com/berth-os/berth/updater/layout"
)

// Finder looks at a sysfs tree and the matching device nodes.
type Finder struct {
	Sys string // normally /sys
	Dev string // normally /dev
}

// Node is the device node path of a device.
func (f Finder) Node(d blockdev.Device) string { return filepath.Join(f.Dev, d.Name) }

// ErrNotFound means no partition matches (yet: the disk may still appear).
var ErrNotFound = errors.New("no such partition")

// Slot finds the partition named by berth.root. Several partitions with
// the same label (two berth disks attached) is an error: booting the wrong
// disk's slot would be worse than not booting.
func (f Finder) Slot(spec bootcfg.RootSpec) (blockdev.Device, error) {
	devs, err := blockdev.Scan(f.Sys)
	if err != nil {
		return blockdev.Device{}, err
	}
	var found []blockdev.Device
	switch spec.Kind {
	case bootcfg.RootByPartLabel:
		found = blockdev.ByPartName(devs, spec.Value)
	case bootcfg.RootByPartUUID:
		for _, disk := range blockdev.Disks(devs) {
			t, err := f.ReadGPT(disk)
			if err != nil {
				continue // not every disk has a readable GPT; keep looking
			}
			if p, ok := t.ByGUID(spec.Value); ok {
				if d, ok := blockdev.ByDiskPartN(devs, disk, p.Number); ok {
					found = append(found, d)
				}
			}
		}
	default:
		return blockdev.Device{}, fmt.Errorf("root spec %q: unknown kind", spec)
	}
	switch len(found) {
	case 0:
		return blockdev.Device{}, fmt.Errorf("%s: %w (block devices: %s)", spec, ErrNotFound, blockdev.Names(devs))
	case 1:
		return found[0], nil
	}
	return blockdev.Device{}, fmt.Errorf("%s matches %s: detach the other disk or boot by PARTUUID", spec, blockdev.Names(found))
}

// State finds the partition labelled BERTH-STATE on disk, the disk the
// slot was found on.
func (f Finder) State(disk string) (blockdev.Device, error) {
	devs, err := blockdev.Scan(f.Sys)
	if err != nil {
		return blockdev.Device{}, err
	}
	var found []blockdev.Device
	for _, d := range blockdev.ByPartName(devs, layout.LabelState) {
		if d.Disk == disk {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return blockdev.Device{}, fmt.Errorf("no partition labelled %s on %s: %w", layout.LabelState, disk, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return blockdev.Device{}, fmt.Errorf("%d partitions labelled %s on %s", len(found), layout.LabelState, disk)
}

// ReadGPT reads and checks the partition table of a whole disk.
func (f Finder) ReadGPT(disk string) (*gpt.Table, error) {
	ss, err := blockdev.LogicalBlockSize(f.Sys, disk)
	if err != nil {
		return nil, err
	}
	file, err := os.Open(filepath.Join(f.Dev, disk))
	if err != nil {
		return nil, fmt.Errorf("read GPT: %w", err)
	}
	defer file.Close()
	size, err := file.Seek(0, 2)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", disk, err)
	}
	t, err := gpt.Read(file, size, ss)
	if err != nil {
		return nil, fmt.Errorf("GPT of %s: %w", disk, err)
	}
	return t, nil
}
