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
)

// Options choose the compressor and the timestamps.
type Options struct {
	Compression string // gzip, xz, lz4, lzo, zstd
	Level       int    // 0: the compressor's default
	Epoch       int64  // every inode and the superblock get this time
	// Progress, when set, receives the percentage done (0..100).
	Progress func(percent int)
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
	if pr != nil {
		sc := bufio.NewScanner(pr)
		sc.Split(scanCRLF)
		last := -1
		for sc.Scan() {
			if m := percent.FindStringSubmatch(sc.Text()); m != nil {
				// The redrawn bar can be cut mid-line: only move forward.
				if p, _ := strconv.Atoi(m[1]); p > last && p <= 100 {
					last = p
					o.Progress(p)
				}
			}
		}
		// Should the scanner stop early (an overlong line), mksquashfs
		// must not block on a full pipe while Wait waits for it.
		io.Copy(io.Discard, pr)
	}
	if err := cmd.Wait(); err != nil {
		os.Remove(out)
		return fmt.Errorf("mksquashfs failed: %s", lastLine(stderr.String(), err))
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
