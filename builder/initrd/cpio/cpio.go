// Package cpio writes cpio archives in the "newc" (SVR4, no CRC) format, the
// only format the Linux kernel unpacks into its initial rootfs.
//
// The writer assigns inode numbers itself, one per entry in write order, so
// that an archive depends only on what is written and never on the build
// machine's filesystem.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// File type bits of Header.Mode, as in stat(2).
const (
	TypeMask    = 0o170000
	TypeReg     = 0o100000
	TypeDir     = 0o040000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
)

const (
	magic      = "070701"
	headerSize = 110 // 6 bytes of magic + 13 fields of 8 hex digits
	trailer    = "TRAILER!!!"
	maxField   = 0xffffffff
)

// Header describes one archive entry. For a symlink, the data written after
// the header is the link target and Size is its length.
type Header struct {
	Name      string // path inside the archive, without a leading slash
	Mode      uint32 // type bits (TypeReg...) | permission bits (incl. setuid/setgid/sticky)
	UID, GID  uint32
	Mtime     int64 // seconds since the Unix epoch
	Size      int64
	RdevMajor uint32 // for character devices
	RdevMinor uint32
}

// Writer writes a newc archive entry by entry, like archive/tar.
type Writer struct {
	w       io.Writer
	nextIno uint32
	left    int64 // data bytes still owed for the current entry
	pad     int   // padding owed after the current entry's data
	closed  bool
	err     error // sticky: a broken archive must not be continued
}

// NewWriter returns a Writer that writes to w. Close must be called to
// write the trailer; it does not close w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, nextIno: 1}
}

// WriteHeader finishes the previous entry and starts a new one.
func (cw *Writer) WriteHeader(h Header) error {
	if err := cw.finishEntry(); err != nil {
		return err
	}
	if err := h.validate(); err != nil {
		return err
	}
	nlink := uint32(1)
	if h.Mode&TypeMask == TypeDir {
		nlink = 2 // "." and the parent's entry; nothing reads it, but it is what stat would say
	}
	ino := cw.nextIno
	cw.nextIno++
	if err := cw.writeRecord(ino, h.Mode, h.UID, h.GID, nlink, uint32(h.Mtime), uint32(h.Size), h.RdevMajor, h.RdevMinor, h.Name); err != nil {
		return err
	}
	cw.left = h.Size
	cw.pad = padding(h.Size)
	return nil
}

// Write writes data of the current entry; writing more than Header.Size
// is an error.
func (cw *Writer) Write(p []byte) (int, error) {
	if cw.err != nil {
		return 0, cw.err
	}
	if cw.closed {
		return 0, errors.New("cpio: write after close")
	}
	if int64(len(p)) > cw.left {
		return 0, fmt.Errorf("cpio: entry data is longer than the %d bytes its header still allows", cw.left)
	}
	n, err := cw.w.Write(p)
	cw.left -= int64(n)
	if err != nil {
		cw.err = fmt.Errorf("cpio: write entry data: %w", err)
		return n, cw.err
	}
	return n, nil
}

// Close writes the trailer entry. It fails if the last entry is short.
func (cw *Writer) Close() error {
	if cw.closed {
		return cw.err
	}
	if err := cw.finishEntry(); err != nil {
		return err
	}
	cw.closed = true
	// The trailer is an empty entry named TRAILER!!!; GNU cpio writes nlink 1.
	return cw.writeRecord(0, 0, 0, 0, 1, 0, 0, 0, 0, trailer)
}

func (cw *Writer) finishEntry() error {
	if cw.err != nil {
		return cw.err
	}
	if cw.closed {
		return errors.New("cpio: archive already closed")
	}
	if cw.left != 0 {
		cw.err = fmt.Errorf("cpio: entry data is %d bytes shorter than its header announced", cw.left)
		return cw.err
	}
	if cw.pad > 0 {
		if _, err := cw.w.Write(make([]byte, cw.pad)); err != nil {
			cw.err = fmt.Errorf("cpio: write padding: %w", err)
			return cw.err
		}
		cw.pad = 0
	}
	return nil
}

// writeRecord writes a header and the NUL-terminated name, padded so that
// the data starts on a 4-byte boundary.
func (cw *Writer) writeRecord(ino, mode, uid, gid, nlink, mtime, size, rdevMajor, rdevMinor uint32, name string) error {
	var b strings.Builder
	b.WriteString(magic)
	// Field order of newc: ino mode uid gid nlink mtime filesize devmajor
	// devminor rdevmajor rdevminor namesize check.
	for _, v := range []uint32{ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdevMajor, rdevMinor, uint32(len(name) + 1), 0} {
		fmt.Fprintf(&b, "%08X", v)
	}
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	if _, err := io.WriteString(cw.w, b.String()); err != nil {
		cw.err = fmt.Errorf("cpio: write header of %q: %w", name, err)
		return cw.err
	}
	return nil
}

func padding(n int64) int { return int((4 - n%4) % 4) }

func (h Header) validate() error {
	if h.Name == "" {
		return errors.New("cpio: entry with an empty name")
	}
	if strings.IndexByte(h.Name, 0) >= 0 {
		return fmt.Errorf("cpio: entry name %q contains a NUL byte", h.Name)
	}
	if h.Name == trailer {
		return fmt.Errorf("cpio: entry name %q is reserved for the trailer", h.Name)
	}
	if len(h.Name)+1 > maxField {
		return fmt.Errorf("cpio: entry name of %d bytes is too long", len(h.Name))
	}
	if h.Mtime < 0 || h.Mtime > maxField {
		return fmt.Errorf("cpio: %s: mtime %d does not fit newc's 32-bit unsigned field", h.Name, h.Mtime)
	}
	if h.Size < 0 || h.Size > maxField {
		return fmt.Errorf("cpio: %s: size %d does not fit newc's 32-bit field (4 GiB limit)", h.Name, h.Size)
	}
	if h.Mode&^uint32(TypeMask|0o7777) != 0 {
		return fmt.Errorf("cpio: %s: mode %#o has unknown bits", h.Name, h.Mode)
	}
	switch h.Mode & TypeMask {
	case TypeReg:
	case TypeSymlink:
		if h.Size == 0 {
			return fmt.Errorf("cpio: %s: symlink with an empty target", h.Name)
		}
	case TypeDir, TypeChar:
		if h.Size != 0 {
			return fmt.Errorf("cpio: %s: a directory or device carries no data, size must be 0", h.Name)
		}
	default:
		return fmt.Errorf("cpio: %s: unsupported file type in mode %#o (want regular file, directory, symlink or character device)", h.Name, h.Mode)
	}
	return nil
}
