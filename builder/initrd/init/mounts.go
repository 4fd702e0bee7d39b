package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/initrd/init/internal/finder"
	"github.com/berth-os/berth/internal/blockdev"
	"github.com/berth-os/berth/updater/layout"
)

// apiMounts are the kernel filesystems the initrd needs and then hands
// over to the OS, in mount order.
var apiMounts = []struct {
	target, fstype, data string
	flags                uintptr
}{
	{"/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
	{"/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
}

func (b *boot) mountAPI() *failure {
	for _, m := range apiMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fail("create "+m.target, err)
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fail(fmt.Sprintf("mount %s on %s", m.fstype, m.target), err)
		}
	}
	b.attachConsole()
	return nil
}

// attachConsole makes /dev/console fds 0-2 (the kernel does so only when
// the initramfs has a /dev/console node) and starts logging to /dev/kmsg.
func (b *boot) attachConsole() {
	if c, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup2(int(c.Fd()), fd) // best effort: stdout stays as it was
		}
		c.Close()
	}
	var kmsg *os.File
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		kmsg = k // kept open for the life of /init; close-on-exec
	}
	if kmsg != nil {
		b.log.Attach(os.Stdout, kmsg)
	} else {
		b.log.Attach(os.Stdout, nil)
	}
}

// waitForSlot polls sysfs until the slot partition shows up or rootwait
// runs out: disks appear asynchronously after their driver loads.
func (b *boot) waitForSlot() (blockdev.Device, *failure) {
	f := finder.Finder{Sys: "/sys", Dev: "/dev"}
	deadline := time.Now().Add(b.cfg.RootWait)
	nextNote := time.Now().Add(5 * time.Second)
	for {
		d, err := f.Slot(b.cfg.Root)
		if err == nil {
			if _, err = os.Stat(f.Node(d)); err == nil {
				b.log.Infof("slot %s is %s", b.cfg.Root, f.Node(d))
				return d, nil
			}
		}
		if !errors.Is(err, finder.ErrNotFound) && !errors.Is(err, os.ErrNotExist) {
			return blockdev.Device{}, fail("find slot partition", err)
		}
		now := time.Now()
		if now.After(deadline) {
			return blockdev.Device{}, fail(fmt.Sprintf("find slot partition %s", b.cfg.Root),
				fmt.Errorf("not found after %s (%s=SECONDS waits longer): %w", b.cfg.RootWait, layout.CmdlineRootWait, err))
		}
		if now.After(nextNote) {
			b.log.Infof("waiting for %s (%.0fs left)", b.cfg.Root, time.Until(deadline).Seconds())
			nextNote = now.Add(5 * time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *boot) mountSlot(slot blockdev.Device) *failure {
	node := filepath.Join("/dev", slot.Name)
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fail("create "+newRoot, err)
	}
	if err := unix.Mount(node, newRoot, b.cfg.FSType, unix.MS_RDONLY, ""); err != nil {
		if errors.Is(err, unix.ENODEV) {
			err = fmt.Errorf("%w (the kernel knows no filesystem %q: is its module in the initrd?)", err, b.cfg.FSType)
		}
		return fail(fmt.Sprintf("mount slot %s (%s) read-only on %s", node, b.cfg.FSType, newRoot), err)
	}
	b.log.Infof("mounted %s (%s) read-only on %s", node, b.cfg.FSType, newRoot)
	return nil
}

// setUpEtc lays the persistent overlay over the slot's read-only /etc and
// creates the home directories /home and /root point to.
func (b *boot) setUpEtc() *failure {
	varDir := filepath.Join(newRoot, "var")
	upper := filepath.Join(varDir, layout.EtcUpper)
	work := filepath.Join(varDir, layout.EtcWork)
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fail("create /etc overlay directory", err)
		}
	}
	etc := filepath.Join(newRoot, "etc")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", etc, upper, work)
	if err := unix.Mount("overlay", etc, "overlay", 0, opts); err != nil {
		return fail("mount overlay on /etc ("+opts+")", err)
	}
	for _, h := range []struct {
		dir  string
		mode os.FileMode
	}{{layout.Home, 0o755}, {layout.RootHome, 0o700}} {
		p := filepath.Join(varDir, h.dir)
		err := os.Mkdir(p, h.mode)
		if errors.Is(err, os.ErrExist) {
			continue // the admin may have changed its mode: keep it
		}
		if err == nil {
			err = os.Chmod(p, h.mode) // Mkdir's mode is cut by the umask
		}
		if err != nil {
			return fail("create /var/"+h.dir, err)
		}
	}
	b.log.Infof("/etc overlay on /var/%s", layout.EtcUpper)
	return nil
}

// switchRoot moves the API mounts into the new root, frees the initramfs
// and execs the OS's init in the new root.
func (b *boot) switchRoot() *failure {
	if _, err := os.Lstat(filepath.Join(newRoot, b.cfg.Init)); err != nil {
		return fail("find init in the slot", err)
	}
	for _, m := range apiMounts {
		if err := unix.Mount(m.target, filepath.Join(newRoot, m.target), "", unix.MS_MOVE, ""); err != nil {
			return fail("move "+m.target+" to the new root", err)
		}
	}
	// The console stays usable: fds 0-2 and the kmsg fd are already open.
	freed, err := removeSameFS("/")
	if err != nil {
		// The OS can boot with the initramfs still in RAM: say so and go on.
		b.log.Infof("warning: freeing the initramfs: %v", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fail("chdir "+newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fail("move "+newRoot+" to /", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fail("chroot into the new root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fail("chdir / in the new root", err)
	}
	argv := append([]string{b.cfg.Init}, os.Args[1:]...)
	b.log.Infof("freed %d KiB of initramfs; starting %s after %.1fs in the initrd",
		freed/1024, b.cfg.Init, time.Since(b.start).Seconds())
	err = unix.Exec(b.cfg.Init, argv, os.Environ())
	return fail("exec "+b.cfg.Init, err)
}

// removeSameFS deletes everything under top that is on top's filesystem,
// returning the bytes of file data freed. Called on "/" it frees the
// initramfs; mount points (the new root) and what is below them are left
// alone. top itself stays.
func removeSameFS(top string) (int64, error) {
	var root unix.Stat_t
	if err := unix.Lstat(top, &root); err != nil {
		return 0, fmt.Errorf("stat %s: %w", top, err)
	}
	var freed int64
	var firstErr error
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil || st.Dev != root.Dev {
				continue // another filesystem: a mount point
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				walk(p)
			case unix.S_IFREG:
				freed += st.Size
			}
			if err := os.Remove(p); err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	walk(top)
	return freed, firstErr
}
