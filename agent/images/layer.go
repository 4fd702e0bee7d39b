package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// unpackCompressed streams a layer blob into dir, checking the blob's
// digest and the uncompressed stream's diffID. A bad digest is reported as
// such even when the corruption broke decompression first.
func unpackCompressed(ctx context.Context, l v1.Layer, diffID v1.Hash, dir string) error {
	want, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer %s: digest: %w", diffID, err)
	}
	if want.Algorithm != "sha256" {
		return fmt.Errorf("layer %s: unsupported digest algorithm %q", want, want.Algorithm)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", want, err)
	}
	defer rc.Close()

	blobHash := sha256.New()
	blob := bufio.NewReaderSize(io.TeeReader(rc, blobHash), 64<<10)
	var unpackErr error
	if dec, err := decompressor(blob); err != nil {
		unpackErr = err
	} else {
		unpackErr = unpackVerified(ctx, dec, diffID, dir)
		dec.Close()
	}
	// Read what is left so the digest covers the whole blob (bounded by
	// the manifest's size: the registry reader stops there).
	_, _ = io.Copy(io.Discard, blob)
	if got := hex.EncodeToString(blobHash.Sum(nil)); got != want.Hex {
		return fmt.Errorf("layer %s: digest mismatch: registry sent content hashing to sha256:%s", want, got)
	}
	if unpackErr != nil {
		return fmt.Errorf("layer %s: %w", want, unpackErr)
	}
	return nil
}

// unpackUncompressed reads a layer's tar stream (imports) into dir and
// checks it against diffID.
func unpackUncompressed(ctx context.Context, l v1.Layer, diffID v1.Hash, dir string) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	defer rc.Close()
	if err := unpackVerified(ctx, rc, diffID, dir); err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	return nil
}

func unpackVerified(ctx context.Context, r io.Reader, diffID v1.Hash, dir string) error {
	h := sha256.New()
	tee := io.TeeReader(r, h)
	if err := unpack(ctx, tee, dir); err != nil {
		return err
	}
	// The tar reader stops at the end-of-archive marker; padding after it
	// is still part of the diffID.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
		return fmt.Errorf("uncompressed content digest mismatch: got sha256:%s, config says %s", got, diffID)
	}
	return nil
}

// decompressor picks gzip, zstd or plain tar from the stream's first bytes
// (media types lie often enough; the magic numbers do not).
func decompressor(br *bufio.Reader) (io.ReadCloser, error) {
	head, err := br.Peek(4)
	if err != nil && len(head) == 0 {
		return nil, fmt.Errorf("read layer: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// commitDir makes the unpacked tree durable and then gives it its final
// name, so a crash leaves either nothing under final or a whole layer.
func commitDir(tmp, final string) error {
	d, err := os.Open(tmp)
	if err != nil {
		return err
	}
	// One syncfs instead of an fsync per file.
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return nil // another process finished the same layer first
		}
		return fmt.Errorf("rename into place: %w", err)
	}
	return syncDir(filepath.Dir(final))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
