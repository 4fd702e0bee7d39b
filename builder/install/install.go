// Package install writes a built raw image to a whole disk for bare metal:
// it refuses disks that are in use or hold data, writes with O_DIRECT in
// large blocks, verifies by reading the disk back, and moves the backup GPT
// to the end of a larger disk so the initrd can grow the state partition.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options of one install.
type Options struct {
	Target string // a whole-disk block device, e.g. /dev/sdb
	Image  string // a raw GPT disk image (NAME-VERSION.raw)
	// Force overwrites a disk that holds a partition table or a filesystem.
	Force bool
	// Confirm is asked once every check passed and before anything is
	// written; returning false stops with nothing written. nil: no question.
	Confirm  func(summary string) bool
	Progress Progress // nil: none
	Log      *slog.Logger
}

// Progress receives the long steps (progress.Reporter implements it).
type Progress interface {
	Step(name string, attrs ...any)
	Bytes(done, total int64)
}

// Result reports what was done.
type Result struct {
	ImageBytes, DiskBytes int64
	SHA256                string // of the image, equal to the disk's first ImageBytes
	BackupGPTMoved        bool
	Overwrote             string // what --force overwrote, "" for a blank disk
	Write, Verify         time.Duration
}

// ErrDeclined is returned when Confirm said no.
var ErrDeclined = errors.New("not confirmed; nothing was written")

// blockSize is the unit of writes and read-back: large enough to stream at
// the disk's speed, small enough to keep the progress line moving.
const blockSize = 4 << 20

// headBytes is the region holding the partition table; it is zeroed first
// and written last, so an interrupted install leaves a disk without a
// partition table instead of one that looks bootable but is not.
const headBytes = 1 << 20

// Install writes o.Image to o.Target. Every error says what state the disk
// is in.
func Install(ctx context.Context, o Options) (*Result, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	img, imgSize, err := openImage(o.Image)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	d, err := inspectTarget(o.Target)
	if err != nil {
		return nil, err
	}
	if err := checkInUse(d); err != nil {
		return nil, err
	}
	// O_EXCL claims the device: it fails while anything has it mounted or
	// claimed, and keeps it from being mounted while we write.
	fd, err := unix.Open(o.Target, unix.O_RDWR|unix.O_EXCL|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("target %s is in use (mounted or claimed by another program); nothing was written", o.Target)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w; nothing was written", o.Target, err)
	}
	dev := os.NewFile(uintptr(fd), o.Target)
	defer func() {
		if dev != nil {
			dev.Close()
		}
	}()
	if d.size, err = deviceSize(fd); err != nil {
		return nil, fmt.Errorf("size of %s: %w", o.Target, err)
	}
	if d.logical, err = unix.IoctlGetInt(fd, unix.BLKSSZGET); err != nil {
		return nil, fmt.Errorf("sector size of %s: %w", o.Target, err)
	}
	if d.logical != 512 {
		return nil, fmt.Errorf("target %s has %d-byte logical sectors; the image's GPT is laid out for 512-byte sectors; nothing was written", o.Target, d.logical)
	}
	if d.size < imgSize {
		return nil, fmt.Errorf("target %s is too small: %s, the image needs %s; nothing was written", o.Target, mib(d.size), mib(imgSize))
	}
	buf, err := alignedBuffer(blockSize)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	head := buf[:min(headBytes, d.size)]
	if _, err := dev.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w; nothing was written", o.Target, err)
	}
	data, err := findData(d, head)
	if err != nil {
		return nil, err
	}
	if data != "" && !o.Force {
		return nil, fmt.Errorf("target %s holds data (%s); pass --force to overwrite it; nothing was written", o.Target, data)
	}
	res := &Result{ImageBytes: imgSize, DiskBytes: d.size, Overwrote: data}
	if o.Confirm != nil {
		summary := fmt.Sprintf("write %s (%s) to %s (%s%s)", o.Image, mib(imgSize), o.Target, mib(d.size), modelSuffix(d.model))
		if data != "" {
			summary += ", destroying " + data
		}
		if !o.Confirm(summary) {
			return nil, ErrDeclined
		}
	}
	log.Info("installing", "image", o.Image, "target", o.Target, "image_mib", imgSize>>20, "disk_mib", d.size>>20, "overwriting", data)

	start := time.Now()
	sum, err := writeImage(ctx, dev, img, imgSize, buf, o.Progress)
	if err != nil {
		return nil, err
	}
	res.SHA256, res.Write = sum, time.Since(start)

	start = time.Now()
	if err := verify(ctx, dev, imgSize, sum, buf, o.Progress); err != nil {
		return nil, err
	}
	res.Verify = time.Since(start)
	// sgdisk must see the device unclaimed to make the kernel re-read it.
	dev.Close()
	dev = nil
	if d.size > imgSize {
		if out, err := exec.Command("sgdisk", "-e", o.Target).CombinedOutput(); err != nil {
			return res, fmt.Errorf("sgdisk -e %s: %s: the image is written and verified but the backup GPT is not at the disk's end; the node's initrd moves it at first boot", o.Target, firstLine(out, err))
		}
		res.BackupGPTMoved = true
	}
	return res, nil
}

// openImage checks that path is a raw GPT disk image.
func openImage(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("image: %w", err)
	}
	head := make([]byte, 1024)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("image %s is not a regular file", path)
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		err = fmt.Errorf("image %s is a qcow2 file; install the .raw image", path)
	case fi.Size() == 0 || fi.Size()%512 != 0:
		err = fmt.Errorf("image %s is not a raw disk image: its size %d is not a whole number of 512-byte sectors", path, fi.Size())
	case len(head) < 520 || string(head[512:520]) != "EFI PART":
		err = fmt.Errorf("image %s is not a raw GPT disk image (no GPT header at sector 1); give the NAME-VERSION.raw that berth-build built", path)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// writeImage zeroes the head, writes the rest, then the head, and returns
// the image's sha256.
func writeImage(ctx context.Context, dev, img *os.File, size int64, buf []byte, p Progress) (string, error) {
	partial := func(err error) error {
		return fmt.Errorf("%w: %s is partially written and has no partition table (it will not boot); run install again", err, dev.Name())
	}
	if p != nil {
		p.Step("writing the image", "target", dev.Name(), "mib", size>>20)
	}
	headLen := min(headBytes, size)
	imgHead := make([]byte, headLen)
	if _, err := img.ReadAt(imgHead, 0); err != nil {
		return "", fmt.Errorf("read image: %w; nothing was written", err)
	}
	h := sha256.New()
	h.Write(imgHead)
	clear(buf[:headLen])
	if _, err := dev.WriteAt(buf[:headLen], 0); err != nil {
		return "", fmt.Errorf("write %s: %w; its partition table may be damaged", dev.Name(), err)
	}
	for off := headLen; off < size; {
		if err := ctx.Err(); err != nil {
			return "", partial(fmt.Errorf("interrupted at %s of %s", mib(off), mib(size)))
		}
		n := int(min(int64(len(buf)), size-off))
		if _, err := img.ReadAt(buf[:n], off); err != nil {
			return "", partial(fmt.Errorf("read image at %d: %w", off, err))
		}
		// Hash while the disk writes: both only read buf.
		hashed := hashAsync(h, buf[:n])
		_, err := dev.WriteAt(buf[:n], off)
		<-hashed
		if err != nil {
			return "", partial(fmt.Errorf("write %s at %s: %w", dev.Name(), mib(off), err))
		}
		off += int64(n)
		if p != nil {
			p.Bytes(off, size)
		}
	}
	// The rest must be on the disk before the partition table points at it.
	if err := dev.Sync(); err != nil {
		return "", partial(fmt.Errorf("flush %s: %w", dev.Name(), err))
	}
	copy(buf, imgHead)
	if _, err := dev.WriteAt(buf[:headLen], 0); err != nil {
		return "", partial(fmt.Errorf("write the partition table: %w", err))
	}
	if err := dev.Sync(); err != nil {
		return "", fmt.Errorf("flush %s: %w: the image may not be fully on the disk; run install again", dev.Name(), err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// verify reads the image's range back from the disk (O_DIRECT: from the
// device, not the page cache) and compares its sha256.
func verify(ctx context.Context, dev *os.File, size int64, want string, buf []byte, p Progress) error {
	if p != nil {
		p.Step("verifying", "target", dev.Name())
	}
	h := sha256.New()
	// Two halves: the disk reads into one while the other is hashed.
	halves := [2][]byte{buf[:len(buf)/2], buf[len(buf)/2:]}
	hashed := closedChan()
	for i, off := 0, int64(0); off < size; i++ {
		if err := ctx.Err(); err != nil {
			<-hashed
			return fmt.Errorf("interrupted while verifying: %s is written but not verified; run install again to be sure", dev.Name())
		}
		half := halves[i%2]
		n := int(min(int64(len(half)), size-off))
		_, err := dev.ReadAt(half[:n], off)
		<-hashed
		if err != nil {
			return fmt.Errorf("read back %s at %s: %w: the disk may be failing; do not boot it", dev.Name(), mib(off), err)
		}
		hashed = hashAsync(h, half[:n])
		off += int64(n)
		if p != nil {
			p.Bytes(off, size)
		}
	}
	<-hashed
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("verification failed: %s reads back sha256 %s, the image is %s: the copy is corrupt (failing disk or cable?); do not boot it", dev.Name(), got[:16], want[:16])
	}
	return nil
}

// deviceSize asks the kernel for the device's size in bytes.
func deviceSize(fd int) (int64, error) {
	var n uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return 0, errno
	}
	return int64(n), nil
}

// hashAsync feeds b to h in another goroutine; the channel closes when done.
func hashAsync(h hash.Hash, b []byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		h.Write(b)
		close(done)
	}()
	return done
}

func closedChan() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// alignedBuffer returns page-aligned memory, as O_DIRECT requires.
func alignedBuffer(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("allocate I/O buffer: %w", err)
	}
	return b, nil
}

func mib(n int64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func modelSuffix(model string) string {
	if model == "" {
		return ""
	}
	return ", " + model
}

func firstLine(out []byte, err error) string {
	s := strings.TrimSpace(string(out))
	if s == "" {
		return err.Error()
	}
	line, _, _ := strings.Cut(s, "\n")
	return line
}
