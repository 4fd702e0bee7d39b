package install

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/mountinfo"
)

// blockDev is what the checks learned about the target.
type blockDev struct {
	path    string
	major   uint32
	minor   uint32
	sysDir  string   // /sys/dev/block/M:m resolved, e.g. /sys/devices/.../block/sda
	name    string   // kernel name, e.g. sda, loop3
	parts   []string // kernel names of its partitions, e.g. sda1
	model   string   // for the confirmation prompt; may be empty
	size    int64
	logical int // logical sector size
}

// inspectTarget refuses anything that is not a whole block device.
func inspectTarget(path string) (*blockDev, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("target %s is not a block device; give a whole disk such as /dev/sdX (to make a disk image file, copy the .raw)", path)
	}
	d := &blockDev{path: path, major: unix.Major(st.Rdev), minor: unix.Minor(st.Rdev)}
	sys, err := filepath.EvalSymlinks(fmt.Sprintf("/sys/dev/block/%d:%d", d.major, d.minor))
	if err != nil {
		return nil, fmt.Errorf("target %s: no sysfs entry for device %d:%d: %w", path, d.major, d.minor, err)
	}
	d.sysDir, d.name = sys, filepath.Base(sys)
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		whole := filepath.Base(filepath.Dir(sys))
		return nil, fmt.Errorf("target %s is a partition (of /dev/%s); give the whole disk", path, whole)
	}
	ents, err := os.ReadDir(sys)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(sys, e.Name(), "partition")); err == nil {
			d.parts = append(d.parts, e.Name())
		}
	}
	if b, err := os.ReadFile(filepath.Join(sys, "device", "model")); err == nil {
		d.model = strings.TrimSpace(string(b))
	}
	return d, nil
}

// checkInUse refuses a disk that is, or has partitions that are, mounted,
// used as swap or held by another block device (dm, md, LVM).
func checkInUse(d *blockDev) error {
	devs := map[string]string{} // "major:minor" -> kernel name
	devs[fmt.Sprintf("%d:%d", d.major, d.minor)] = d.name
	for _, p := range d.parts {
		if b, err := os.ReadFile(filepath.Join(d.sysDir, p, "dev")); err == nil {
			devs[strings.TrimSpace(string(b))] = p
		}
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if name, ok := devs[m.Device]; ok {
			return fmt.Errorf("target %s is in use: /dev/%s is mounted on %s; unmount it first", d.path, name, m.MountPoint)
		}
	}
	if b, err := os.ReadFile("/proc/swaps"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) == 0 {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(fields[0], &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				if name, ok := devs[fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))]; ok {
					return fmt.Errorf("target %s is in use: /dev/%s is active swap; swapoff it first", d.path, name)
				}
			}
		}
	}
	for _, n := range append([]string{""}, d.parts...) {
		holders, _ := os.ReadDir(filepath.Join(d.sysDir, n, "holders"))
		if len(holders) > 0 {
			name := d.name
			if n != "" {
				name = n
			}
			return fmt.Errorf("target %s is in use: /dev/%s is held by %s (device-mapper, RAID or LVM); release it first", d.path, name, holders[0].Name())
		}
	}
	return nil
}

// findData names what marks a disk as holding data: partitions the kernel
// sees, a partition table or a filesystem signature. "" means blank.
func findData(d *blockDev, head []byte) (string, error) {
	if len(d.parts) > 0 {
		return fmt.Sprintf("partitions %s", strings.Join(d.parts, ", ")), nil
	}
	for _, off := range []int{512, 4096} {
		if len(head) >= off+8 && string(head[off:off+8]) == "EFI PART" {
			return "a GPT partition table", nil
		}
	}
	if len(head) >= 512 && head[510] == 0x55 && head[511] == 0xAA {
		return "an MBR boot signature", nil
	}
	// blkid -p probes the device itself (no cache) for filesystems, RAID
	// and LVM signatures and partition tables: exit 2 means none found.
	out, err := exec.Command("blkid", "-p", "-o", "export", d.path).Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 2:
	case errors.Is(err, exec.ErrNotFound):
		return "", errors.New("blkid not found: install util-linux")
	case err != nil:
		return "", fmt.Errorf("blkid -p %s: %w", d.path, err)
	default:
		return describeSignature(out), nil
	}
	if !allZero(head) {
		// Not a known format, but not blank either (e.g. a raw database).
		return "non-zero data in its first MiB", nil
	}
	return "", nil
}

// describeSignature turns blkid's export lines into "an ext4 filesystem (LABEL=x)".
func describeSignature(out []byte) string {
	vals := map[string]string{}
	for _, line := range bytes.Split(out, []byte("\n")) {
		k, v, ok := strings.Cut(string(line), "=")
		if ok {
			vals[k] = v
		}
	}
	switch {
	case vals["PTTYPE"] != "":
		return fmt.Sprintf("a %s partition table", vals["PTTYPE"])
	case vals["TYPE"] != "" && vals["LABEL"] != "":
		return fmt.Sprintf("a %s signature (LABEL=%s)", vals["TYPE"], vals["LABEL"])
	case vals["TYPE"] != "":
		return fmt.Sprintf("a %s signature", vals["TYPE"])
	}
	return "a signature blkid recognises"
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
