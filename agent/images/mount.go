package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/mountinfo"
)

// containerID is the runtime's container id syntax; it names a directory.
var containerID = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)

func (s *Store) containerDir(id string) string { return s.path("containers", id) }

// Mount gives container id a root filesystem: an overlay of the image's
// layers with a writable upper directory of its own. It is idempotent:
// when the overlay is already mounted (also by an agent before a restart)
// it returns the same path.
func (s *Store) Mount(ctx context.Context, digest, id string) (rootfs string, err error) {
	if !containerID.MatchString(id) {
		return "", fmt.Errorf("container id %q: want 1-128 of a-z 0-9 _ . - starting with a letter or digit", id)
	}
	unlock, err := s.containerLocks.lock(ctx, id)
	if err != nil {
		return "", err
	}
	defer unlock()
	s.gcLock.RLock()
	defer s.gcLock.RUnlock()

	img, err := s.Get(digest)
	if err != nil {
		return "", err
	}
	cdir := s.containerDir(id)
	merged := cdir + "/merged"
	mounted, err := isMountPoint(merged)
	if err != nil {
		return "", err
	}
	if mounted {
		owner, err := os.ReadFile(cdir + "/image")
		if err == nil && strings.TrimSpace(string(owner)) != img.Digest {
			return "", fmt.Errorf("container %s already has a root filesystem from image %s, not %s", id, strings.TrimSpace(string(owner)), img.Digest)
		}
		return merged, nil
	}

	lower := make([]string, 0, len(img.Layers)+1)
	for i := len(img.Layers) - 1; i >= 0; i-- { // overlay wants the top layer first
		dir := s.layerDir(img.Layers[i])
		if _, err := os.Stat(dir); err != nil {
			return "", fmt.Errorf("image %s: layer %s is missing from the store; pull the image again", img.Digest, img.Layers[i])
		}
		lower = append(lower, dir)
	}
	for _, sub := range []string{"upper", "work", "merged"} {
		if err := os.MkdirAll(cdir+"/"+sub, 0o755); err != nil {
			return "", fmt.Errorf("container %s: %w", id, err)
		}
	}
	// The upper directory's root is the container's "/".
	if err := os.Chmod(cdir+"/upper", 0o755); err != nil {
		return "", fmt.Errorf("container %s: %w", id, err)
	}
	if len(lower) == 0 {
		// An image without layers: overlay still needs a lower directory.
		empty := cdir + "/empty"
		if err := os.MkdirAll(empty, 0o755); err != nil {
			return "", fmt.Errorf("container %s: %w", id, err)
		}
		lower = append(lower, empty)
	}
	// GC reads this to keep images that containers still use.
	if err := os.WriteFile(cdir+"/image", []byte(img.Digest+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("container %s: %w", id, err)
	}
	opts := "lowerdir=" + strings.Join(lower, ":") + ",upperdir=" + cdir + "/upper,workdir=" + cdir + "/work"
	if len(opts) >= os.Getpagesize() {
		return "", fmt.Errorf("image %s: %d layers make overlay options longer than the kernel's %d-byte limit", img.Digest, len(img.Layers), os.Getpagesize())
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("container %s: mount overlay: %w", id, err)
	}
	return merged, nil
}

// Unmount removes container id's overlay and deletes its writable layer.
// Unknown ids are fine (idempotent). A rootfs still in use is reported,
// not detached lazily: its upper directory must not vanish under a process.
func (s *Store) Unmount(id string) error {
	if !containerID.MatchString(id) {
		return fmt.Errorf("container id %q: want 1-128 of a-z 0-9 _ . - starting with a letter or digit", id)
	}
	unlock, err := s.containerLocks.lock(context.Background(), id)
	if err != nil {
		return err
	}
	defer unlock()
	cdir := s.containerDir(id)
	merged := cdir + "/merged"
	for {
		mounted, err := isMountPoint(merged)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(merged, 0); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("container %s: root filesystem %s is busy (a process still uses it); stop the container first", id, merged)
			}
			return fmt.Errorf("container %s: unmount %s: %w", id, merged, err)
		}
	}
	if err := os.RemoveAll(cdir); err != nil {
		return fmt.Errorf("container %s: remove %s: %w", id, cdir, err)
	}
	return nil
}

// isMountPoint reports whether path is a mount point in this process's
// mount namespace, from /proc/self/mountinfo (so it also sees mounts made
// before an agent restart).
func isMountPoint(path string) (bool, error) {
	points, err := mountPoints()
	if err != nil {
		return false, err
	}
	return points[path], nil
}

func mountPoints() (map[string]bool, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	points := map[string]bool{}
	for _, m := range mounts {
		points[m.MountPoint] = true
	}
	return points, nil
}
