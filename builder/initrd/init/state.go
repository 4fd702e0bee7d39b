package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/initrd/init/internal/ext4fs"
	"github.com/berth-os/berth/builder/initrd/init/internal/finder"
	"github.com/berth-os/berth/internal/blockdev"
	"github.com/berth-os/berth/updater/layout"
)

const (
	mib = 1 << 20
	// mkfsPath is the OS's own mke2fs, run inside the slot so that the
	// filesystem matches the e2fsprogs (and mke2fs.conf) of the OS.
	mkfsPath = "/sbin/mke2fs"
)

// setUpState finds the state partition on the slot's disk, grows it to the
// end of the disk, formats it if it holds no ext4, mounts it on /var and
// grows the filesystem to the partition.
func (b *boot) setUpState(disk string) *failure {
	fd := finder.Finder{Sys: "/sys", Dev: "/dev"}
	state, err := fd.State(disk)
	if err != nil {
		return fail("find state partition", err)
	}
	node := fd.Node(state)
	if err := b.growPartition(fd, disk, state); err != nil {
		// Not fatal: the node runs fine on a state partition of the
		// built size; the next boot tries again.
		b.log.Infof("warning: grow state partition %s: %v", node, err)
	}
	sb, err := ext4fs.ProbeFile(node)
	if errors.Is(err, ext4fs.ErrNotExt) {
		if f := b.formatState(node); f != nil {
			return f
		}
		sb, err = ext4fs.ProbeFile(node)
	}
	if err != nil {
		return fail("read state filesystem "+node, err)
	}
	target := filepath.Join(newRoot, "var")
	if err := unix.Mount(node, target, "ext4", 0, ""); err != nil {
		return fail(fmt.Sprintf("mount state %s (ext4) on %s", node, target), err)
	}
	sb, f := b.growFilesystem(node, target, sb)
	if f != nil {
		return f
	}
	b.log.Infof("mounted state %s on /var (%d MiB)", node, sb.Bytes()/mib)
	return nil
}

// growPartition extends the state partition to the end of the disk when
// the disk got bigger than the image (qemu-img resize, a larger real disk).
func (b *boot) growPartition(fd finder.Finder, disk string, state blockdev.Device) error {
	t, err := fd.ReadGPT(disk)
	if err != nil {
		return err
	}
	p, ok := t.Partition(state.PartN)
	if !ok || p.Name != layout.LabelState {
		return fmt.Errorf("GPT entry %d of %s is not %s", state.PartN, disk, layout.LabelState)
	}
	f, err := os.OpenFile(filepath.Join(fd.Dev, disk), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open disk: %w", err)
	}
	defer f.Close()
	g, err := t.Grow(f, state.PartN, mib)
	if err != nil {
		return err
	}
	if !g.Changed() {
		return nil
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync GPT: %w", err)
	}
	if g.NewLastLBA != g.OldLastLBA {
		// BLKRRPART would fail: the slot on this disk is mounted. BLKPG
		// resizes the one partition in the kernel's view.
		ss := int64(t.SectorSize)
		if err := blkpgResize(f, state.PartN, int64(p.FirstLBA)*ss, int64(g.NewLastLBA-p.FirstLBA+1)*ss); err != nil {
			return err
		}
	}
	b.log.Infof("grew state partition %s from %d MiB to %d MiB (backup GPT moved to the disk's end: %v)",
		state.Name, (g.OldLastLBA-p.FirstLBA+1)*uint64(t.SectorSize)/mib,
		(g.NewLastLBA-p.FirstLBA+1)*uint64(t.SectorSize)/mib, g.BackupMoved)
	return nil
}

func blkpgResize(disk *os.File, partN int, start, length int64) error {
	part := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(partN)}
	arg := unix.BlkpgIoctlArg{
		Op:      unix.BLKPG_RESIZE_PARTITION,
		Datalen: int32(unsafe.Sizeof(part)),
		Data:    (*byte)(unsafe.Pointer(&part)),
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, disk.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return fmt.Errorf("tell the kernel about the new size of partition %d (BLKPG_RESIZE_PARTITION): %w", partN, errno)
	}
	return nil
}

// formatState makes a fresh ext4 with the OS's own mke2fs.
func (b *boot) formatState(node string) *failure {
	b.log.Infof("state partition %s holds no ext4: formatting it", node)
	// -F: never stop at a question; the partition holds nothing we keep.
	if err := runInSlot(mkfsPath, "-q", "-F", "-t", "ext4", "-L", layout.LabelState, node); err != nil {
		return fail("format state: "+mkfsPath+" "+node, err)
	}
	b.log.Infof("formatted %s as ext4 (label %s)", node, layout.LabelState)
	return nil
}

// runInSlot runs one of the OS's own tools (e2fsprogs) chrooted into the
// mounted slot, which needs /dev (for the node) and /proc (to check the
// device is not mounted).
func runInSlot(args ...string) error {
	var mounted []string
	defer func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			_ = unix.Unmount(mounted[i], unix.MNT_DETACH)
		}
	}()
	for _, m := range []struct{ dir, fstype string }{{"dev", "devtmpfs"}, {"proc", "proc"}} {
		dir := filepath.Join(newRoot, m.dir)
		if err := unix.Mount(m.fstype, dir, m.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, dir, err)
		}
		mounted = append(mounted, dir)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: newRoot}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if msg := strings.Join(strings.Fields(string(out)), " "); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

// growFilesystem grows the ext4 mounted at mountpoint to fill its
// partition, online, as the kernel does it (EXT4_IOC_RESIZE_FS): the
// builder's mke2fs reserves the GDT blocks for that (resize_inode), and
// the groups it adds stay uninitialised (metadata_csum) until used. It
// runs on every boot so that a boot that grew the partition but died
// before this step is finished by the next. It returns the superblock as
// it is afterwards.
func (b *boot) growFilesystem(node, mountpoint string, sb ext4fs.Superblock) (ext4fs.Superblock, *failure) {
	dev, err := os.Open(node)
	if err != nil {
		return sb, fail("size of state partition", err)
	}
	size, err := dev.Seek(0, io.SeekEnd)
	dev.Close()
	if err != nil {
		return sb, fail("size of state partition", err)
	}
	blocks := uint64(size) / sb.BlockSize
	if blocks <= sb.BlocksCount {
		return sb, nil
	}
	b.log.Infof("growing the state filesystem from %d MiB to %d MiB", sb.Bytes()/mib, blocks*sb.BlockSize/mib)
	if err := ext4fs.Resize(mountpoint, blocks); err != nil {
		// Not fatal: /var works at its old size; the next boot tries again.
		b.log.Infof("warning: grow state filesystem: %v", err)
		return sb, nil
	}
	sb.BlocksCount = blocks
	return sb, nil
}
