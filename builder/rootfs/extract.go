package rootfs

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// OCI whiteout markers (image-spec layer.md): ".wh.NAME" deletes NAME from
// the layers below; ".wh..wh..opq" hides everything the lower layers put in
// its directory.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// whiteoutMeta starts AUFS bookkeeping names (".wh..wh.plnk" and
	// friends): not whiteouts of a file, and not files of the image.
	whiteoutMeta = ".wh..wh."
)

// ApplyLayer unpacks one tar layer onto root, honouring OCI whiteouts. It
// keeps numeric owners, permission bits including setuid/setgid/sticky,
// extended attributes (file capabilities live there) and device nodes.
// Entries may not escape root, neither by ".." nor through symlinks.
func ApplyLayer(root string, r io.Reader) error {
	tr := tar.NewReader(r)
	// What this layer created, and the parents of that: an opaque whiteout
	// must not delete them.
	created := layerPaths{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			// PAX global headers (git archive writes one) carry no file.
			continue
		}
		name := cleanName(hdr.Name)
		if name == "" {
			// The root directory itself: keep the staging dir's own mode.
			continue
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if base == whiteoutOpaque {
			if err := clearDir(root, dir, created); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutMeta) {
			continue
		}
		if victim, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
			// ".wh.." would name the parent and ".wh." the directory itself.
			if victim == "" || victim == "." || victim == ".." {
				return fmt.Errorf("whiteout %s: not a valid whiteout name", name)
			}
			// Resolve the directory only: a whiteout of a symlink removes
			// the link, never what it points at.
			target, err := inRoot(root, path.Join(dir, victim))
			if err != nil {
				return fmt.Errorf("whiteout %s: %w", name, err)
			}
			if err := os.RemoveAll(target); err != nil {
				return fmt.Errorf("whiteout %s: %w", name, err)
			}
			continue
		}
		if err := writeEntry(root, name, hdr, tr); err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		created.add(name)
	}
}

// layerPaths records the slash-separated paths a layer wrote and their
// parent directories, which a layer may imply without entries of their own.
type layerPaths map[string]bool

func (l layerPaths) add(name string) {
	l[name] = true
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if l[d] {
			return // its parents are recorded already
		}
		l[d] = true
	}
}

// inRoot is the path of rel inside root with every directory on the way
// resolved inside root, while the last element is kept as it is, so that
// it can be removed or replaced even when it is a symlink.
func inRoot(root, rel string) (string, error) {
	dir, base := path.Split(cleanName(rel))
	if base == "" {
		return "", fmt.Errorf("%q names the root directory", rel)
	}
	parent, err := securejoin.SecureJoin(root, dir)
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, base), nil
}

// ApplyLayerFile applies a tar file, gzip-compressed or not.
func ApplyLayerFile(root, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %s: %w", file, err)
		}
		defer gz.Close()
		r = gz
	}
	if err := ApplyLayer(root, r); err != nil {
		return fmt.Errorf("layer %s: %w", file, err)
	}
	return nil
}

// cleanName turns "./usr/bin/" into "usr/bin"; "" means the root.
func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// clearDir applies an opaque whiteout: everything under dir that lower
// layers put there goes, what this layer wrote stays. A directory this
// layer wrote over a lower one merged with it, so it is cleared in turn.
func clearDir(root, dir string, created layerPaths) error {
	abs, err := securejoin.SecureJoin(root, dir)
	if err != nil {
		return fmt.Errorf("opaque whiteout in %s: %w", dir, err)
	}
	ents, err := os.ReadDir(abs)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque whiteout in %s: %w", dir, err)
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		if !created[p] {
			if err := os.RemoveAll(filepath.Join(abs, e.Name())); err != nil {
				return fmt.Errorf("opaque whiteout in %s: %w", dir, err)
			}
		} else if e.IsDir() {
			if err := clearDir(root, p, created); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeEntry(root, name string, hdr *tar.Header, r io.Reader) error {
	dir, base := path.Split(name)
	parent, err := securejoin.SecureJoin(root, dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	target := filepath.Join(parent, base)
	mode := uint32(hdr.Mode) & 0o7777

	// A later layer replaces what was there, except that a directory over a
	// directory merges.
	if fi, err := os.Lstat(target); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case tar.TypeReg:
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return err
		}
	case tar.TypeLink:
		// The link names an entry, not what it points at: a hard link to
		// a symlink is a second name of the symlink.
		src, err := inRoot(root, hdr.Linkname)
		if err != nil {
			return err
		}
		if err := os.Link(src, target); err != nil {
			return err
		}
		// A hard link shares the inode: owner and mode are already set.
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknod(target, kind|0o600, int(dev)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}

	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Lsetxattr(target, attr, []byte(v), 0); err != nil {
				return fmt.Errorf("xattr %s: %w", attr, err)
			}
		}
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// chmod after chown: chown clears setuid/setgid bits.
		if err := unix.Chmod(target, mode); err != nil {
			return err
		}
	}
	return nil
}
