// Package slotfs makes the read-only filesystem of an OS slot from a root
// tree. It drives mksquashfs rather than go-diskfs' squashfs writer, which
// corrupts real trees, drops setuid bits and is not reproducible.
package slotfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Options choose the compressor and the timestamps.
type Options struct {
	Compression string // gzip, xz, lz4, lzo, zstd
	Level       int    // 0: the compressor's default
	Epoch       int64  // every inode and the superblock get this time
	// Progress, when set, receives the percentage done (0..100).
	Progress func(percent int)
	// MaxBytes, when set, stops mksquashfs as soon as the image grows past
	// it (the slot partition's size): a tree that does not fit fails in
	// seconds instead of after the whole compression.
	MaxBytes int64
}

// TooLargeError says the image outgrew Options.MaxBytes; Needed estimates
// the whole image from how far mksquashfs had come (0: unknown).
type TooLargeError struct {
	Max, Written, Needed int64
	Percent              int
}

// Need is what the image needs, as "about N MiB" or "more than N MiB".
func (e *TooLargeError) Need() string {
	if e.Needed > 0 {
		return fmt.Sprintf("about %d MiB", (e.Needed+(1<<20)-1)>>20)
	}
	return fmt.Sprintf("more than %d MiB", e.Max>>20)
}

func (e *TooLargeError) Error() string {
	if e.Needed > 0 {
		return fmt.Sprintf("slot filesystem needs %s (%d MiB written at %d%% of the tree), more than %d MiB",
			e.Need(), e.Written>>20, e.Percent, e.Max>>20)
	}
	return "slot filesystem needs " + e.Need()
}

// Args returns mksquashfs' arguments for building out from root. Exported
// so benchmarks can run the same command as a peer.
func Args(root, out string, o Options) []string {
	args := []string{root, out,
		"-noappend", "-reproducible", "-xattrs",
		"-comp", o.Compression,
		"-mkfs-time", strconv.FormatInt(o.Epoch, 10),
		"-all-time", strconv.FormatInt(o.Epoch, 10),
	}
	if o.Level > 0 {
		switch o.Compression {
		case "zstd", "gzip":
			args = append(args, "-Xcompression-level", strconv.Itoa(o.Level))
		case "lz4":
			args = append(args, "-Xhc")
		}
	}
	return args
}

var percent = regexp.MustCompile(`(\d+)%`)

// Build writes the squashfs image of root to out.
func Build(ctx context.Context, root, out string, o Options) error {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		return errors.New("mksquashfs not found: install the squashfs-tools package (make deps)")
	}
	args := Args(root, out, o)
	if o.Progress == nil {
		args = append(args, "-no-progress", "-quiet")
	}
	cmd := exec.CommandContext(ctx, "mksquashfs", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	var pr io.ReadCloser
	if o.Progress != nil {
		var err error
		if pr, err = cmd.StdoutPipe(); err != nil {
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mksquashfs: %w", err)
	}
	var lastPercent atomic.Int64
	tooLarge := make(chan *TooLargeError, 1)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	if o.MaxBytes > 0 {
		go func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stopWatch:
					return
				case <-tick.C:
				}
				fi, err := os.Stat(out)
				if err != nil || fi.Size() <= o.MaxBytes {
					continue
				}
				e := &TooLargeError{Max: o.MaxBytes, Written: fi.Size(), Percent: int(lastPercent.Load())}
				if e.Percent > 0 {
					e.Needed = e.Written * 100 / int64(e.Percent)
				}
				tooLarge <- e
				cmd.Process.Kill()
				return
			}
		}()
	}
	if pr != nil {
		sc := bufio.NewScanner(pr)
		sc.Split(scanCRLF)
		last := -1
		for sc.Scan() {
			if m := percent.FindStringSubmatch(sc.Text()); m != nil {
				// The redrawn bar can be cut mid-line: only move forward.
				if p, _ := strconv.Atoi(m[1]); p > last && p <= 100 {
					last = p
					lastPercent.Store(int64(p))
					o.Progress(p)
				}
			}
		}
		// Should the scanner stop early (an overlong line), mksquashfs
		// must not block on a full pipe while Wait waits for it.
		io.Copy(io.Discard, pr)
	}
	err := cmd.Wait()
	select {
	case e := <-tooLarge:
		os.Remove(out)
		return e
	default:
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("mksquashfs failed: %s", lastLine(stderr.String(), err))
	}
	if fi, err := os.Stat(out); err == nil && o.MaxBytes > 0 && fi.Size() > o.MaxBytes {
		// Grown past the limit between the last look and the end.
		os.Remove(out)
		return &TooLargeError{Max: o.MaxBytes, Written: fi.Size(), Needed: fi.Size(), Percent: 100}
	}
	return nil
}

// scanCRLF splits on \r as well as \n: progress output redraws one line.
func scanCRLF(data []byte, atEOF bool) (int, []byte, error) {
	for i, b := range data {
		if b == '\n' || b == '\r' {
			return i + 1, data[:i], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func lastLine(s string, err error) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return err.Error()
}
