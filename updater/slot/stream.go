package slot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/updater/payload"
)

// Streaming parameters: large chunks keep syscalls few, and several of
// them in flight let reading, hashing and writing each run at their own
// pace on separate cores.
const (
	chunkSize   = 4 << 20
	chunksAhead = 6
)

// chunk is one buffer in flight; it goes back to the free pool once both
// the hasher and the writer are done with it.
type chunk struct {
	buf  []byte
	n    int
	refs *atomic.Int32
}

func (c chunk) release(free chan<- []byte) {
	if c.refs.Add(-1) == 0 {
		free <- c.buf
	}
}

// copyVerified copies exactly want.Size bytes from src to dst while
// hashing them, and fails unless the source then ends and the bytes match
// want's digest. A reader, a hasher and the writer run concurrently: on a
// slot image the copy takes as long as the slowest of the three.
func copyVerified(ctx context.Context, dst io.Writer, src io.Reader, want payload.Blob, progress func(done, total int64)) error {
	wantSum, err := hex.DecodeString(want.SHA256)
	if err != nil || len(wantSum) != sha256.Size {
		return fmt.Errorf("manifest digest %q is not a hex sha256", want.SHA256)
	}
	if want.Size < 0 {
		return fmt.Errorf("manifest size %d is negative", want.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	free := make(chan []byte, chunksAhead)
	for range chunksAhead {
		free <- make([]byte, chunkSize)
	}
	toWrite := make(chan chunk, chunksAhead)
	toHash := make(chan chunk, chunksAhead)
	readErr := make(chan error, 1)
	go func() { readErr <- readChunks(ctx, src, want.Size, free, toWrite, toHash) }()

	h := sha256.New()
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for c := range toHash {
			h.Write(c.buf[:c.n])
			c.release(free)
		}
	}()

	var done int64
	var werr error
	for c := range toWrite {
		if werr == nil {
			if _, werr = dst.Write(c.buf[:c.n]); werr != nil {
				werr = fmt.Errorf("write at byte %d: %w", done, werr)
				cancel() // stop reading; the loop drains what is in flight
			}
			done += int64(c.n)
		}
		c.release(free)
		if werr == nil && progress != nil {
			progress(done, want.Size)
		}
	}
	<-hashed
	rerr := <-readErr
	if werr != nil {
		return werr
	}
	if rerr != nil {
		return rerr
	}
	if done != want.Size {
		return fmt.Errorf("got %d bytes, the manifest says %d", done, want.Size)
	}
	if got := h.Sum(nil); !bytes.Equal(got, wantSum) {
		return fmt.Errorf("sha256 %x does not match the manifest's %s", got, want.SHA256)
	}
	return nil
}

// readChunks fills free buffers from src until size bytes are read, then
// checks that src ends there: a payload reader reports a bad digest at its
// end, and more bytes than the manifest says must not go unnoticed.
func readChunks(ctx context.Context, src io.Reader, size int64, free chan []byte, toWrite, toHash chan<- chunk) error {
	defer close(toWrite)
	defer close(toHash)
	var read int64
	for read < size {
		var buf []byte
		select {
		case <-ctx.Done():
			return ctx.Err()
		case buf = <-free:
		}
		want := int64(len(buf))
		if size-read < want {
			want = size - read
		}
		n, err := io.ReadFull(src, buf[:want])
		if n > 0 {
			read += int64(n)
			c := chunk{buf: buf, n: n, refs: new(atomic.Int32)}
			c.refs.Store(2)
			toHash <- c
			toWrite <- c
		} else {
			free <- buf
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("source ended after %d bytes, the manifest says %d", read, size)
		}
		if err != nil {
			return fmt.Errorf("read source at byte %d: %w", read, err)
		}
	}
	var one [1]byte
	n, err := io.ReadFull(src, one[:])
	if n > 0 {
		return fmt.Errorf("source is longer than the manifest's %d bytes", size)
	}
	if !errors.Is(err, io.EOF) {
		return fmt.Errorf("read source end: %w", err)
	}
	return nil
}

// writeSlot streams a slot image into dev (a partition, or a file in
// tests) and makes it durable. A block device is never truncated.
func writeSlot(ctx context.Context, dev string, src io.Reader, want payload.Blob, progress func(done, total int64)) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := copyVerified(ctx, &writeback{f: f}, src, want, progress); err != nil {
		return fmt.Errorf("write slot image to %s: %w", dev, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dev, err)
	}
	return nil
}

// writeback starts the disk write of each chunk as soon as it is in the
// page cache, so the device works while later chunks are still hashed,
// the final fsync has little left to do, and a large image does not pile
// up gigabytes of dirty pages on the node.
type writeback struct {
	f   *os.File
	off int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if n > 0 {
		// Only a hint: fsync at the end is what makes the data durable.
		_ = unix.SyncFileRange(int(w.f.Fd()), w.off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
		w.off += int64(n)
	}
	return n, err
}
