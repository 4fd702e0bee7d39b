package nodeconfig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of where a node configuration is looked for.
const (
	DefaultSeedLabel = "BERTH-SEED"
	SeedFile         = "/node.yaml"
	DefaultESP       = "/efi"
	ESPFile          = "berth/node.yaml"
)

// source is a node configuration that was found.
type source struct {
	name string // FILE in "FILE:LINE" messages
	desc string // for the summary
	data []byte
}

// finder looks for the configuration: seed disk, then ESP, then the copy
// of the last one found (so a detached seed disk does not undo a node's
// static network).
type finder struct {
	root      string
	seedDev   string // "auto", "none" or a block device
	seedLabel string
	seedWait  time.Duration
	esp       string
	errors    []string
	notes     []string
}

func (f *finder) find() (source, bool) {
	if src, ok := f.seed(); ok {
		return src, true
	}
	if src, ok := f.espFile(); ok {
		return src, true
	}
	last, err := securePath(f.root, LastGoodPath)
	if err == nil {
		if data, err := readLimited(last); err == nil {
			return source{name: last, desc: "last applied copy " + LastGoodPath, data: data}, true
		}
	}
	return source{}, false
}

func (f *finder) seed() (source, bool) {
	dev := f.seedDev
	switch dev {
	case "none":
		return source{}, false
	case "", "auto":
		dev = f.findSeedDevice()
		if dev == "" {
			return source{}, false
		}
	}
	name := f.seedLabel + ":" + SeedFile
	data, err := readFromFAT(f.root, dev, SeedFile)
	if errors.Is(err, fs.ErrNotExist) {
		f.errors = append(f.errors, fmt.Sprintf("%s: seed disk %s has no %s; trying the ESP", name, dev, SeedFile))
		return source{}, false
	}
	if err != nil {
		f.errors = append(f.errors, fmt.Sprintf("%s: seed disk %s: %v; trying the ESP", name, dev, err))
		return source{}, false
	}
	return source{name: name, desc: "seed " + dev + " " + SeedFile, data: data}, true
}

// findSeedDevice waits for udev to have processed the devices found so
// far (bounded by seedWait), then looks the label up.
func (f *finder) findSeedDevice() string {
	link := "/dev/disk/by-label/" + f.seedLabel
	deadline := time.Now().Add(f.seedWait)
	settled := false
	if udevadm, err := exec.LookPath("udevadm"); err == nil {
		secs := int(f.seedWait.Round(time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		settled = exec.Command(udevadm, "settle", fmt.Sprintf("--timeout=%d", secs)).Run() == nil
	}
	// Once udev has settled the link exists or never will: a boot without
	// a seed disk must not wait. Without udev, poll until the deadline.
	for {
		if dev, err := filepath.EvalSymlinks(link); err == nil {
			return dev
		}
		if settled || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Without udev (or its by-label links) blkid probes the devices itself.
	if blkid, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command(blkid, "-L", f.seedLabel).Output()
		if dev := strings.TrimSpace(string(out)); err == nil && dev != "" {
			return dev
		}
	}
	return ""
}

// readFromFAT mounts dev read-only on a temporary directory under the
// root's /run, reads file and unmounts.
func readFromFAT(root, dev, file string) ([]byte, error) {
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(run, "berth-seed-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(dir)
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(dev, dir, "vfat", flags, ""); err != nil {
		return nil, fmt.Errorf("mount read-only: %w", err)
	}
	defer func() {
		if unix.Unmount(dir, 0) != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	}()
	return readLimited(filepath.Join(dir, file))
}

// espTimeout bounds reading through the ESP's automount, which blocks
// until systemd has mounted it.
const espTimeout = 15 * time.Second

func (f *finder) espFile() (source, bool) {
	p := filepath.Join(f.esp, ESPFile)
	ctx, cancel := context.WithTimeout(context.Background(), espTimeout)
	defer cancel()
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := readLimited(p)
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		if errors.Is(r.err, fs.ErrNotExist) {
			return source{}, false
		}
		if r.err != nil {
			f.errors = append(f.errors, fmt.Sprintf("%s: %v", p, r.err))
			return source{}, false
		}
		return source{name: p, desc: "ESP " + p, data: r.data}, true
	case <-ctx.Done():
		f.errors = append(f.errors, fmt.Sprintf("%s: the ESP did not answer within %s", p, espTimeout))
		return source{}, false
	}
}

// readLimited reads a file of at most maxFileBytes (more is reported by
// Parse, so one byte extra is read).
func readLimited(p string) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return io.ReadAll(io.LimitReader(fh, maxFileBytes+1))
}
