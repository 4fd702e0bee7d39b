package rootfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// DefaultTrim is what every berth image drops: documentation, manuals,
// package manager state and caches, and /boot (the kernel and initrd live
// on the ESP). Paths are globs relative to the root.
var DefaultTrim = []string{
	"usr/share/man",
	"usr/share/info",
	"usr/share/lintian",
	"usr/share/bug",
	"usr/share/doc-base",
	"usr/share/linda",
	"var/cache/*",
	"var/lib/apt",
	"var/lib/dpkg",
	"var/log/*",
	"var/lib/dbus/machine-id",
	"etc/ssh/ssh_host_*",
	"boot/*",
	"vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old",
	"etc/initramfs-tools",
	"usr/share/initramfs-tools",
	"usr/sbin/mkinitramfs", "usr/sbin/update-initramfs",
}

// Trim removes the default paths, the spec's extra paths and all locales
// except keepLocales. It returns the bytes freed.
//
// Every path is resolved inside root: an image may carry absolute symlinks
// (var/log -> /var/log), and following them on the build machine would
// delete the machine's own files.
func Trim(root string, extra, keepLocales []string) (int64, error) {
	var freed int64
	// remove deletes rel, a path relative to root; a symlink goes, not its target.
	remove := func(rel string) error {
		p, err := inRoot(root, filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		n, _ := du(p)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		freed += n
		return nil
	}
	for _, pat := range append(append([]string{}, DefaultTrim...), extra...) {
		pat = strings.TrimPrefix(pat, "/")
		matches, err := filepath.Glob(filepath.Join(root, pat))
		if err != nil {
			return freed, fmt.Errorf("trim pattern %q: %w", pat, err)
		}
		for _, m := range matches {
			rel, err := filepath.Rel(root, m)
			if err == nil {
				err = remove(rel)
			}
			if err != nil {
				return freed, fmt.Errorf("trim %s: %w", m, err)
			}
		}
	}
	docDir, err := securejoin.SecureJoin(root, "usr/share/doc")
	if err != nil {
		return freed, fmt.Errorf("trim documentation: %w", err)
	}
	n, err := trimDocs(docDir)
	freed += n
	if err != nil {
		return freed, err
	}
	keep := map[string]bool{}
	for _, l := range keepLocales {
		keep[l] = true
		// "C.UTF-8" also names the "C.utf8" spelling glibc uses on disk.
		keep[strings.ReplaceAll(l, "UTF-8", "utf8")] = true
	}
	for _, dir := range []string{"usr/share/locale", "usr/lib/locale"} {
		abs, err := securejoin.SecureJoin(root, dir)
		if err != nil {
			return freed, fmt.Errorf("trim locales: %w", err)
		}
		ents, err := os.ReadDir(abs)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return freed, fmt.Errorf("trim locales: %w", err)
		}
		rel, err := filepath.Rel(root, abs)
		if err != nil {
			return freed, err
		}
		for _, e := range ents {
			// locale.alias and friends are files, not translations.
			if !e.IsDir() || keep[e.Name()] {
				continue
			}
			if err := remove(filepath.Join(rel, e.Name())); err != nil {
				return freed, fmt.Errorf("trim locales: %w", err)
			}
		}
	}
	return freed, nil
}

func du(p string) (int64, error) {
	var n int64
	err := filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n, err
}

// Kernel is what the ESP needs from the root.
type Kernel struct {
	Version string
	Image   string // absolute path of vmlinuz in the root
}

// FindKernel locates the one kernel of the root. A root with none or with
// several is an error that says what to do.
func FindKernel(root string) (Kernel, error) {
	var versions []string
	for _, dir := range []string{"usr/lib/modules", "lib/modules"} {
		ents, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				versions = append(versions, e.Name())
			}
		}
		if len(versions) > 0 {
			break
		}
	}
	sort.Strings(versions)
	switch len(versions) {
	case 0:
		return Kernel{}, errors.New("the root has no kernel (no /lib/modules/*): add a kernel package such as linux-image-cloud-amd64 to base.debian.packages")
	case 1:
	default:
		return Kernel{}, fmt.Errorf("the root has %d kernels (%s): keep exactly one", len(versions), strings.Join(versions, ", "))
	}
	k := Kernel{Version: versions[0], Image: filepath.Join(root, "boot", "vmlinuz-"+versions[0])}
	if _, err := os.Stat(k.Image); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s has modules but no /boot/vmlinuz-%s", k.Version, k.Version)
	}
	return k, nil
}

// SystemdBootPath is where Debian's systemd-boot-efi installs the loader.
const SystemdBootPath = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// ReadBootLoader returns systemd-boot from the root, so that boot loader
// and OS (systemd-bless-boot, bootctl) come from one systemd.
func ReadBootLoader(root string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(root, SystemdBootPath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("the root has no systemd-boot (/" + SystemdBootPath + "): add systemd-boot to base.debian.packages")
	}
	return data, err
}

// trimDocs drops documentation but keeps each package's copyright file:
// the licences must travel with the binaries.
func trimDocs(docDir string) (int64, error) {
	var freed int64
	var dirs []string
	err := filepath.WalkDir(docDir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != docDir {
				dirs = append(dirs, p)
			}
			return nil
		}
		// Only a package's own usr/share/doc/PKG/copyright is kept: a file
		// called copyright deeper down is an example (ca-certificates ships
		// a sample package with its debian/copyright).
		if d.Name() == "copyright" && filepath.Dir(filepath.Dir(p)) == docDir {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			freed += fi.Size()
		}
		return os.Remove(p)
	})
	if err != nil {
		return freed, fmt.Errorf("trim documentation: %w", err)
	}
	// Directories left empty go too, deepest first (the walk listed
	// parents before children); os.Remove leaves non-empty ones alone.
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
	return freed, nil
}
