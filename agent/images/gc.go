package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// GC deletes the images for which inUse says false (and the refs naming
// them), then every layer no remaining image uses, and returns the bytes
// freed. Images that a mounted container uses are kept whatever inUse says.
// A nil inUse means no image is in use.
func (s *Store) GC(ctx context.Context, inUse func(digest string) bool) (freedBytes int64, err error) {
	s.gcLock.Lock()
	defer s.gcLock.Unlock()

	mounted, err := s.mountedImages()
	if err != nil {
		return 0, err
	}
	images, err := s.List()
	if err != nil {
		return 0, err
	}
	keepLayers := map[string]bool{}
	dropped := map[string]bool{}
	for _, img := range images {
		if mounted[img.Digest] || (inUse != nil && inUse(img.Digest)) {
			for _, l := range img.Layers {
				keepLayers[strings.TrimPrefix(l, "sha256:")] = true
			}
			continue
		}
		dropped[img.Digest] = true
	}
	// Refs first: a ref must never name a record that is gone.
	if len(dropped) > 0 {
		if err := s.updateRefs(func(m map[string]string) {
			for ref, d := range m {
				if dropped[d] {
					delete(m, ref)
				}
			}
		}); err != nil {
			return 0, err
		}
	}
	for d := range dropped {
		p := s.recordPath(d)
		if fi, err := os.Stat(p); err == nil {
			freedBytes += fi.Size()
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freedBytes, fmt.Errorf("gc: remove image %s: %w", d, err)
		}
		s.log.Info("image removed", "digest", d)
	}

	entries, err := os.ReadDir(s.path("layers"))
	if err != nil {
		return freedBytes, fmt.Errorf("gc: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return freedBytes, err
		}
		if keepLayers[e.Name()] {
			continue
		}
		dir := s.path("layers", e.Name())
		size, err := diskUsage(dir)
		if err != nil {
			return freedBytes, fmt.Errorf("gc: layer %s: %w", e.Name(), err)
		}
		// Move it out of layers/ first so a crash mid-delete never leaves a
		// half layer under its real name; Open empties tmp/.
		doomed, err := os.MkdirTemp(s.path("tmp"), "gc-")
		if err != nil {
			return freedBytes, fmt.Errorf("gc: %w", err)
		}
		if err := os.Rename(dir, filepath.Join(doomed, "layer")); err != nil {
			return freedBytes, fmt.Errorf("gc: layer %s: %w", e.Name(), err)
		}
		if err := os.RemoveAll(doomed); err != nil {
			return freedBytes, fmt.Errorf("gc: layer %s: %w", e.Name(), err)
		}
		freedBytes += size
		s.log.Info("layer removed", "diffid", "sha256:"+e.Name(), "bytes", size)
	}
	return freedBytes, nil
}

// mountedImages reads which image each container directory was mounted from.
func (s *Store) mountedImages() (map[string]bool, error) {
	entries, err := os.ReadDir(s.path("containers"))
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		data, err := os.ReadFile(s.path("containers", e.Name(), "image"))
		if err != nil {
			continue
		}
		out[strings.TrimSpace(string(data))] = true
	}
	return out, nil
}

// diskUsage is the bytes of the regular files under dir, each inode once.
func diskUsage(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			key := inode{uint64(st.Dev), st.Ino}
			if seen[key] {
				return nil
			}
			seen[key] = true
		}
		total += fi.Size()
		return nil
	})
	return total, err
}
