package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// Other ".wh..wh." names are aufs bookkeeping (e.g. .wh..wh.plnk) with
	// no meaning to overlay.
	whiteoutMeta = ".wh..wh."
	xattrPrefix  = "SCHILY.xattr."
)

// unpack writes the layer tar stream r into the empty directory root. OCI
// whiteouts become overlay whiteouts (a 0:0 character device for a deleted
// name, trusted.overlay.opaque=y for an opaque directory). Owners, modes
// (setuid included), times, xattrs, symlinks, hard links and devices are
// kept. Entries that would land outside root (absolute names, "..", a
// parent that is a symlink) are refused: a layer is untrusted input.
func unpack(ctx context.Context, r io.Reader, root string) error {
	tr := tar.NewReader(r)
	type dirTimes struct {
		path         string
		atime, mtime time.Time
	}
	var dirs []dirTimes
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		rel, err := entryPath(hdr.Name)
		if err != nil {
			return err
		}
		if rel == "." {
			// The layer's root directory: keep its owner and mode.
			if hdr.Typeflag == tar.TypeDir {
				if err := applyMeta(root, hdr); err != nil {
					return err
				}
			}
			continue
		}
		parent, base := path.Split(rel)
		parentPath, err := makeParents(root, strings.TrimSuffix(parent, "/"))
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}

		if strings.HasPrefix(base, whiteoutPrefix) {
			if err := whiteout(parentPath, base); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			continue
		}

		target := filepath.Join(parentPath, base)
		if err := clearFor(target, hdr.Typeflag); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			dirs = append(dirs, dirTimes{target, hdr.AccessTime, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			if err := writeFile(target, tr); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeSymlink:
			// The link's text is resolved inside the container, so any
			// text is fine; entries *through* it are refused by makeParents.
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeLink:
			linkRel, err := entryPath(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("entry %q: hard link target: %w", hdr.Name, err)
			}
			if linkRel == "." {
				return fmt.Errorf("entry %q: hard link to the layer root", hdr.Name)
			}
			lp, lb := path.Split(linkRel)
			linkParent, err := existingParents(root, strings.TrimSuffix(lp, "/"))
			if err != nil {
				return fmt.Errorf("entry %q: hard link target %q: %w", hdr.Name, hdr.Linkname, err)
			}
			// linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the
			// symlink itself, never what it points at on the host.
			if err := os.Link(filepath.Join(linkParent, lb), target); err != nil {
				return fmt.Errorf("entry %q: hard link to %q: %w", hdr.Name, hdr.Linkname, err)
			}
			continue // shares the target's inode and metadata
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			mode := uint32(unix.S_IFIFO)
			switch hdr.Typeflag {
			case tar.TypeChar:
				mode = unix.S_IFCHR
			case tar.TypeBlock:
				mode = unix.S_IFBLK
			}
			dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
			if err := unix.Mknod(target, mode|0o600, dev); err != nil {
				return fmt.Errorf("entry %q: mknod: %w", hdr.Name, err)
			}
		default:
			// Sparse, GNU long-name parts etc. are folded in by archive/tar;
			// anything else has no file to make.
			continue
		}
		if err := applyMeta(target, hdr); err != nil {
			return err
		}
	}
	// Directory times last: creating their children changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := setTimes(d.path, d.atime, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

// entryPath cleans a tar entry name into a path relative to the layer root
// and refuses names that would leave it.
func entryPath(name string) (string, error) {
	if name == "" {
		return "", errors.New("tar entry with an empty name")
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("entry %q: absolute path escapes the layer root", name)
	}
	rel := path.Clean(name)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("entry %q: path escapes the layer root", name)
	}
	return rel, nil
}

// makeParents makes sure every directory of rel exists below root as a real
// directory (never through a symlink) and returns its host path.
func makeParents(root, rel string) (string, error) {
	return walkParents(root, rel, true)
}

// existingParents is makeParents without creating anything.
func existingParents(root, rel string) (string, error) {
	return walkParents(root, rel, false)
}

func walkParents(root, rel string, create bool) (string, error) {
	cur := root
	if rel == "" || rel == "." {
		return cur, nil
	}
	for _, part := range strings.Split(rel, "/") {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, os.ErrNotExist) && create:
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", err
			}
		case err != nil:
			return "", err
		case fi.Mode()&os.ModeSymlink != 0:
			return "", fmt.Errorf("path escapes the layer root through symlink %q", strings.TrimPrefix(cur, root+"/"))
		case !fi.IsDir():
			return "", fmt.Errorf("parent %q is not a directory", strings.TrimPrefix(cur, root+"/"))
		}
	}
	return cur, nil
}

// whiteout records an OCI whiteout entry the way overlayfs reads it.
func whiteout(parentPath, base string) error {
	switch {
	case base == opaqueMarker:
		if err := unix.Lsetxattr(parentPath, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			return fmt.Errorf("mark directory opaque: %w", err)
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("whiteout for %q is not a file name", victim)
	}
	target := filepath.Join(parentPath, victim)
	if err := os.RemoveAll(target); err != nil {
		return err
	}
	if err := unix.Mknod(target, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("make whiteout: %w", err)
	}
	return nil
}

// clearFor removes whatever an earlier entry left at target, except a
// directory that a directory entry only updates.
func clearFor(target string, typ byte) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() && typ == tar.TypeDir {
		return nil
	}
	return os.RemoveAll(target)
}

func writeFile(target string, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// applyMeta sets owner, then mode (chown clears setuid), xattrs and times.
func applyMeta(target string, hdr *tar.Header) error {
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("entry %q: chown: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(unix.AT_FDCWD, target, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("entry %q: chmod: %w", hdr.Name, err)
		}
	}
	for key, value := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(key, xattrPrefix)
		if !ok {
			continue
		}
		if err := unix.Lsetxattr(target, attr, []byte(value), 0); err != nil {
			return fmt.Errorf("entry %q: xattr %s: %w", hdr.Name, attr, err)
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		if err := setTimes(target, hdr.AccessTime, hdr.ModTime); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	return nil
}

func setTimes(target string, atime, mtime time.Time) error {
	if mtime.IsZero() {
		return nil // no time recorded (and year 1 does not fit in a timespec)
	}
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", target, err)
	}
	return nil
}
