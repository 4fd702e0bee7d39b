package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

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

type partition struct {
	name     string // kernel name, e.g. vda3
	partName string // GPT partition name
	disk     string // kernel name of the whole disk, e.g. vda
	major    uint32
	minor    uint32
}

// partitions lists the partitions in <sys>/class/block.
func (b blockDevices) partitions() ([]partition, error) {
	dir := filepath.Join(b.sys, "class", "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var out []partition
	for _, e := range ents {
		link := filepath.Join(dir, e.Name())
		uevent, err := os.ReadFile(filepath.Join(link, "uevent"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the device went away while listing
		}
		if err != nil {
			return nil, fmt.Errorf("block device %s: %w", e.Name(), err)
		}
		p := partition{name: e.Name()}
		isPart := false
		for _, line := range strings.Split(string(uevent), "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "DEVTYPE":
				isPart = v == "partition"
			case "PARTNAME":
				p.partName = v
			case "DEVNAME":
				p.name = v
			case "MAJOR", "MINOR":
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("block device %s: %s=%q: %w", e.Name(), k, v, err)
				}
				if k == "MAJOR" {
					p.major = uint32(n)
				} else {
					p.minor = uint32(n)
				}
			}
		}
		if !isPart {
			continue
		}
		// A partition's sysfs directory sits inside its disk's directory.
		real, err := filepath.EvalSymlinks(link)
		if err != nil {
			return nil, fmt.Errorf("block device %s: %w", e.Name(), err)
		}
		p.disk = filepath.Base(filepath.Dir(real))
		out = append(out, p)
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
	var found []partition
	for _, p := range parts {
		if p.disk == booted.disk && p.partName == slot.Label() {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no partition labelled %s on %s, the disk of the booted slot", slot.Label(), booted.disk)
	case 1:
		return filepath.Join(b.dev, found[0].name), nil
	}
	return "", fmt.Errorf("%d partitions labelled %s on %s: the disk layout is broken", len(found), slot.Label(), booted.disk)
}

// bootedPartition finds the partition the running OS was booted from: the
// device of "/" first, then the kernel command line's berth.root.
func (b blockDevices) bootedPartition(parts []partition, cmdlinePath string) (partition, error) {
	if b.rootDev != nil {
		if major, minor, err := b.rootDev(); err == nil {
			for _, p := range parts {
				if p.major == major && p.minor == minor {
					return p, nil
				}
			}
		}
	}
	data, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return partition{}, fmt.Errorf("find the booted slot: read kernel command line: %w", err)
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
			return partition{}, err
		}
		for _, p := range parts {
			if p.name == filepath.Base(dev) {
				return p, nil
			}
		}
		return partition{}, fmt.Errorf("find the booted slot: %s is not a partition in sysfs", dev)
	case "PARTLABEL":
		var found []partition
		for _, p := range parts {
			if p.partName == value {
				found = append(found, p)
			}
		}
		if len(found) == 1 {
			return found[0], nil
		}
		return partition{}, fmt.Errorf("find the booted slot: %d partitions are labelled %s", len(found), value)
	}
	return partition{}, fmt.Errorf("find the booted slot: \"/\" is not on a partition and the kernel command line has no %s=PARTUUID=… or PARTLABEL=…", layout.CmdlineRoot)
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
