package slot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/blockdev"
	"github.com/berth-os/berth/updater/layout"
)

// blockDevices finds slot partitions through sysfs and /dev; the roots are
// fields so tests can build a fake tree.
type blockDevices struct {
	sys     string                         // sysfs mount, /sys
	dev     string                         // devtmpfs mount, /dev
	rootDev func() (uint32, uint32, error) // major:minor of the filesystem on "/"
}

func hostBlockDevices() blockDevices {
	return blockDevices{sys: "/sys", dev: "/dev", rootDev: statRootDev}
}

// statRootDev returns the device of "/": berth's root is the booted slot's
// read-only filesystem, mounted straight from the partition.
func statRootDev() (uint32, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/", &st); err != nil {
		return 0, 0, fmt.Errorf("stat /: %w", err)
	}
	return unix.Major(st.Dev), unix.Minor(st.Dev), nil
}

// partitions lists the partitions in <sys>/class/block.
func (b blockDevices) partitions() ([]blockdev.Device, error) {
	devs, err := blockdev.Scan(b.sys)
	if err != nil {
		return nil, err
	}
	var out []blockdev.Device
	for _, d := range devs {
		if d.Partition {
			out = append(out, d)
		}
	}
	return out, nil
}

// slotDevice returns /dev/<partition> labelled slot.Label() on the disk the
// booted slot lives on, so a second berth disk attached to the node is
// never written.
func (b blockDevices) slotDevice(cmdlinePath string, slot layout.Slot) (string, error) {
	parts, err := b.partitions()
	if err != nil {
		return "", err
	}
	booted, err := b.bootedPartition(parts, cmdlinePath)
	if err != nil {
		return "", err
	}
	var found []blockdev.Device
	for _, p := range parts {
		if p.Disk == booted.Disk && p.PartName == slot.Label() {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no partition labelled %s on %s, the disk of the booted slot", slot.Label(), booted.Disk)
	case 1:
		return filepath.Join(b.dev, found[0].DevName), nil
	}
	return "", fmt.Errorf("%d partitions labelled %s on %s: the disk layout is broken", len(found), slot.Label(), booted.Disk)
}

// bootedPartition finds the partition the running OS was booted from: the
// device of "/" first, then the kernel command line's berth.root.
func (b blockDevices) bootedPartition(parts []blockdev.Device, cmdlinePath string) (blockdev.Device, error) {
	if b.rootDev != nil {
		if major, minor, err := b.rootDev(); err == nil {
			for _, p := range parts {
				if p.Major == major && p.Minor == minor {
					return p, nil
				}
			}
		}
	}
	data, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return blockdev.Device{}, fmt.Errorf("find the booted slot: read kernel command line: %w", err)
	}
	var root string
	for _, f := range strings.Fields(string(data)) {
		if k, v, ok := strings.Cut(f, "="); ok && k == layout.CmdlineRoot {
			root = v
		}
	}
	kind, value, _ := strings.Cut(root, "=")
	switch kind {
	case "PARTUUID":
		dev, err := b.byPartUUID(value)
		if err != nil {
			return blockdev.Device{}, err
		}
		for _, p := range parts {
			if p.DevName == filepath.Base(dev) {
				return p, nil
			}
		}
		return blockdev.Device{}, fmt.Errorf("find the booted slot: %s is not a partition in sysfs", dev)
	case "PARTLABEL":
		var found []blockdev.Device
		for _, p := range parts {
			if p.PartName == value {
				found = append(found, p)
			}
		}
		if len(found) == 1 {
			return found[0], nil
		}
		return blockdev.Device{}, fmt.Errorf("find the booted slot: %d partitions are labelled %s", len(found), value)
	}
	return blockdev.Device{}, fmt.Errorf("find the booted slot: \"/\" is not on a partition and the kernel command line has no %s=PARTUUID=… or PARTLABEL=…", layout.CmdlineRoot)
}

// byPartUUID resolves <dev>/disk/by-partuuid/<uuid> (udev writes it in
// lower case).
func (b blockDevices) byPartUUID(uuid string) (string, error) {
	link := filepath.Join(b.dev, "disk", "by-partuuid", strings.ToLower(uuid))
	dev, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", fmt.Errorf("resolve PARTUUID %s: %w", uuid, err)
	}
	return dev, nil
}

// partUUID finds the PARTUUID of a device among the by-partuuid links.
func (b blockDevices) partUUID(dev string) (string, error) {
	want, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", dev, err)
	}
	dir := filepath.Join(b.dev, "disk", "by-partuuid")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range ents {
		got, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err == nil && got == want {
			return strings.ToUpper(e.Name()), nil
		}
	}
	return "", fmt.Errorf("no PARTUUID link in %s points to %s", dir, dev)
}
