// Package ext4fs recognises an ext4 superblock and grows a mounted ext4
// filesystem online.
package ext4fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	superblockOffset     = 1024
	magic                = 0xEF53
	featureIncompat64Bit = 0x80
	// iocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
	iocResizeFS = 0x40086610
)

// Superblock holds the fields needed to decide about a resize.
type Superblock struct {
	BlockSize   uint64
	BlocksCount uint64
	Label       string
}

// Bytes is the filesystem size.
func (s Superblock) Bytes() uint64 { return s.BlockSize * s.BlocksCount }

// ErrNotExt is returned by Probe when the magic number is absent.
var ErrNotExt = errors.New("no ext2/3/4 superblock (magic 0xEF53 at byte 1080)")

// Probe reads the primary superblock.
func Probe(r io.ReaderAt) (Superblock, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, superblockOffset); err != nil {
		return Superblock{}, fmt.Errorf("read ext4 superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != magic {
		return Superblock{}, ErrNotExt
	}
	logBlock := binary.LittleEndian.Uint32(sb[0x18:])
	if logBlock > 6 { // 64 KiB is the largest block size ext4 knows
		return Superblock{}, fmt.Errorf("ext4 superblock: block size 2^(10+%d) is invalid", logBlock)
	}
	s := Superblock{
		BlockSize:   1024 << logBlock,
		BlocksCount: uint64(binary.LittleEndian.Uint32(sb[0x4:])),
	}
	if binary.LittleEndian.Uint32(sb[0x60:])&featureIncompat64Bit != 0 {
		s.BlocksCount |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	label := sb[0x78 : 0x78+16]
	for i, c := range label {
		if c == 0 {
			label = label[:i]
			break
		}
	}
	s.Label = string(label)
	return s, nil
}

// ProbeFile is Probe on a path such as /dev/vda4.
func ProbeFile(path string) (Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return Superblock{}, err
	}
	defer f.Close()
	return Probe(f)
}

// Resize grows the ext4 filesystem mounted at mountpoint to blocks
// filesystem blocks, online, as resize2fs does.
func Resize(mountpoint string, blocks uint64) error {
	f, err := os.Open(mountpoint)
	if err != nil {
		return fmt.Errorf("resize ext4: %w", err)
	}
	defer f.Close()
	n := blocks
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), iocResizeFS, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return fmt.Errorf("resize ext4 at %s to %d blocks: EXT4_IOC_RESIZE_FS: %w", mountpoint, blocks, errno)
	}
	return nil
}
