// Package blockdev lists block devices and partitions from sysfs
// (/sys/class/block) and finds the berth partitions among them. The
// initrd's static /init links it, so it imports nothing beyond the
// standard library's basics: keep it that way.
package blockdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Device is one entry of /sys/class/block.
type Device struct {
	Name      string // kernel name in sysfs, e.g. "vda2"; the node is /dev/<Name>
	DevName   string // DEVNAME, the node's path under /dev; Name when uevent has none
	Major     uint32
	Minor     uint32
	Partition bool
	PartN     int    // 1-based partition number, partitions only
	PartName  string // GPT partition name (PARTNAME=), partitions only
	Disk      string // the whole disk a partition belongs to, e.g. "vda"
	Sectors   uint64 // size in 512-byte units, as sysfs reports it
}

// Scan reads every entry of <sys>/class/block, sorted by name. Entries
// that vanish while scanning (a device going away) are skipped, not errors.
func Scan(sys string) ([]Device, error) {
	dir := filepath.Join(sys, "class", "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var devs []Device
	for _, e := range ents {
		d, err := readDevice(dir, e.Name())
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Name < devs[j].Name })
	return devs, nil
}

func readDevice(dir, name string) (Device, error) {
	link := filepath.Join(dir, name)
	uevent, err := os.ReadFile(filepath.Join(link, "uevent"))
	if err != nil {
		return Device{}, fmt.Errorf("block device %s: %w", name, err)
	}
	d := Device{Name: name}
	for _, line := range strings.Split(string(uevent), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "DEVTYPE":
			d.Partition = v == "partition"
		case "PARTN":
			if d.PartN, err = strconv.Atoi(v); err != nil {
				return Device{}, fmt.Errorf("block device %s: PARTN=%q: %w", name, v, err)
			}
		case "PARTNAME":
			d.PartName = v
		case "DEVNAME":
			d.DevName = v
		case "MAJOR", "MINOR":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return Device{}, fmt.Errorf("block device %s: %s=%q: %w", name, k, v, err)
			}
			if k == "MAJOR" {
				d.Major = uint32(n)
			} else {
				d.Minor = uint32(n)
			}
		}
	}
	if d.DevName == "" {
		d.DevName = name
	}
	if size, err := os.ReadFile(filepath.Join(link, "size")); err == nil {
		d.Sectors, _ = strconv.ParseUint(strings.TrimSpace(string(size)), 10, 64)
	}
	if d.Partition {
		// A partition's sysfs directory sits inside its disk's directory.
		real, err := filepath.EvalSymlinks(link)
		if err != nil {
			return Device{}, fmt.Errorf("block device %s: %w", name, err)
		}
		d.Disk = filepath.Base(filepath.Dir(real))
	}
	return d, nil
}

// Names lists device names, for error messages.
func Names(devs []Device) string {
	if len(devs) == 0 {
		return "none"
	}
	n := make([]string, len(devs))
	for i, d := range devs {
		n[i] = d.Name
	}
	return strings.Join(n, " ")
}

// ByPartName returns the partitions whose GPT name is label.
func ByPartName(devs []Device, label string) []Device {
	var out []Device
	for _, d := range devs {
		if d.Partition && d.PartName == label {
			out = append(out, d)
		}
	}
	return out
}

// ByDiskPartN returns partition n of disk.
func ByDiskPartN(devs []Device, disk string, n int) (Device, bool) {
	for _, d := range devs {
		if d.Partition && d.Disk == disk && d.PartN == n {
			return d, true
		}
	}
	return Device{}, false
}

// Disks returns the whole-disk devices that have partitions.
func Disks(devs []Device) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range devs {
		if d.Partition && !seen[d.Disk] {
			seen[d.Disk] = true
			out = append(out, d.Disk)
		}
	}
	sort.Strings(out)
	return out
}

// LogicalBlockSize reads the sector size the disk's GPT is written in.
func LogicalBlockSize(sys, disk string) (int, error) {
	p := filepath.Join(sys, "class", "block", disk, "queue", "logical_block_size")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("sector size of %s: %w", disk, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 512 {
		return 0, fmt.Errorf("sector size of %s: %q is not a sector size", disk, strings.TrimSpace(string(b)))
	}
	return n, nil
}
