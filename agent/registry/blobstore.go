package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// diskBlobs stores blobs as DIR/sha256/HEX, the layout of ggcr's disk
// handler, but checks a blob's digest once, when it is stored, instead of
// on every HEAD and GET: ggcr's handler hashes the whole file in Stat, which
// in an emulated node cost about 10 s of CPU per read of a 100 MB OS
// payload, on every node, for every download, stage and peer fetch. Clients
// still verify what they read (go-containerregistry checks digests), so a
// file damaged on disk is refused by the reader, not served as good.
type diskBlobs struct {
	dir    string // DIR/sha256/HEX
	tmpDir string // same filesystem as dir, for write-then-rename
}

var (
	_ ggcr.BlobStatHandler   = (*diskBlobs)(nil)
	_ ggcr.BlobPutHandler    = (*diskBlobs)(nil)
	_ ggcr.BlobDeleteHandler = (*diskBlobs)(nil)
)

func (d *diskBlobs) path(h v1.Hash) string { return filepath.Join(d.dir, h.Algorithm, h.Hex) }

// Stat returns the blob's size from the file system.
func (d *diskBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	fi, err := os.Stat(d.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return 0, ggcr.ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Get opens the blob.
func (d *diskBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	f, err := os.Open(d.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ggcr.ErrNotFound
	}
	return f, err
}

// Put stores a blob for ggcr's upload handler, which hands over a reader
// that checks the digest itself (an error at EOF when the content is not h:
// then nothing is stored), so the content is hashed once, not twice.
func (d *diskBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	return d.store(h, rc, nil)
}

// putVerified stores a blob from an unverified source (a peer), hashing it
// on the way and refusing it unless its digest is h.
func (d *diskBlobs) putVerified(h v1.Hash, r io.Reader) error {
	hasher := sha256.New()
	return d.store(h, io.TeeReader(r, hasher), func() error {
		if got := hex.EncodeToString(hasher.Sum(nil)); got != h.Hex {
			return fmt.Errorf("blob %s: digest mismatch: content has sha256:%s", h, got)
		}
		return nil
	})
}

// store streams r into a temp file and renames it into place after an
// fsync (and after check, when given, accepts it): a crash or an error
// leaves the old state or the whole blob, never a partial one under its
// digest.
func (d *diskBlobs) store(h v1.Hash, r io.Reader, check func() error) error {
	if h.Algorithm != "sha256" {
		return fmt.Errorf("blob %s: only sha256 digests are stored", h)
	}
	tmp, err := os.CreateTemp(d.tmpDir, "blob-*")
	if err != nil {
		return fmt.Errorf("blob %s: temp file: %w", h, err)
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	defer tmp.Close()
	if _, err := io.Copy(tmp, r); err != nil {
		return fmt.Errorf("blob %s: write: %w", h, err)
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("blob %s: sync: %w", h, err)
	}
	if err := os.MkdirAll(filepath.Join(d.dir, h.Algorithm), 0o755); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	if err := os.Rename(tmp.Name(), d.path(h)); err != nil {
		return fmt.Errorf("blob %s: %w", h, err)
	}
	return nil
}

// Delete removes the blob.
func (d *diskBlobs) Delete(_ context.Context, _ string, h v1.Hash) error {
	err := os.Remove(d.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return ggcr.ErrNotFound
	}
	return err
}
