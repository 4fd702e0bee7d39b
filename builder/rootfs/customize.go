package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/updater/layout"
)

// AddFiles writes the spec's files into root with their modes and owners.
// Owner and group names are looked up in the root's own passwd and group.
func AddFiles(root string, s *spec.Spec) error {
	for i, f := range s.Files {
		where := fmt.Sprintf("%s:%d: files[%d] (%s)", s.Path, f.Line, i, f.Path)
		var data []byte
		if f.Content != nil {
			data = []byte(*f.Content)
		} else {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		uid, gid := f.UID, f.GID
		var err error
		if f.Owner != "" {
			if uid, err = lookupID(root, "etc/passwd", f.Owner); err != nil {
				return fmt.Errorf("%s: owner: %w", where, err)
			}
		}
		if f.Group != "" {
			if gid, err = lookupID(root, "etc/group", f.Group); err != nil {
				return fmt.Errorf("%s: group: %w", where, err)
			}
		}
		target, err := writeInRoot(root, f.Path, data)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := os.Lchown(target, uid, gid); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := unix.Chmod(target, f.Mode); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// writeInRoot creates the file rel of root with data and mode 0600 and
// returns its path. Whatever was there is replaced, not written through:
// a symlink such as /etc/resolv.conf or an absolute one pointing out of
// the root stays untouched, and a hard link's other names keep their data.
func writeInRoot(root, rel string, data []byte) (string, error) {
	target, err := inRoot(root, rel)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", err
	}
	if err := os.RemoveAll(target); err != nil {
		return "", err
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", err
	}
	return target, f.Close()
}

// writeRootFile is writeInRoot for the builder's own files, with their mode.
func writeRootFile(root, rel string, data []byte, mode uint32) error {
	target, err := writeInRoot(root, rel, data)
	if err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	if err := unix.Chmod(target, mode); err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	return nil
}

// lookupID finds name in an /etc/passwd-style file of the root.
func lookupID(root, file, name string) (int, error) {
	// Resolved inside root: an absolute etc symlink must not read the
	// build machine's accounts.
	p, err := securejoin.SecureJoin(root, file)
	if err != nil {
		return 0, fmt.Errorf("look up %q: %w", name, err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("look up %q: %w", name, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Split(line, ":")
		if len(fields) >= 3 && fields[0] == name {
			return strconv.Atoi(fields[2])
		}
	}
	return 0, fmt.Errorf("%q is not in the image's /%s; use a numeric id or add the account", name, file)
}

// ApplyUnits enables, disables and masks units with systemctl --root, which
// works offline on a tree and follows each unit's [Install] section.
func ApplyUnits(ctx context.Context, root string, s *spec.Spec) error {
	ops := []struct {
		verb  string
		units []string
	}{{"enable", s.Units.Enable}, {"disable", s.Units.Disable}, {"mask", s.Units.Mask}}
	for _, op := range ops {
		if len(op.units) == 0 {
			continue
		}
		if _, err := exec.LookPath("systemctl"); err != nil {
			return errors.New("systemctl not found: install the systemd package on the build machine (make deps)")
		}
		args := append([]string{"--root=" + root, "--no-reload", op.verb}, op.units...)
		out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
				msg = msg[i+1:]
			}
			return fmt.Errorf("%s: units.%s: systemctl %s failed: %s", s.Path, op.verb, op.verb, msg)
		}
	}
	return nil
}

// WriteOSRelease brands the root as berth while keeping ID_LIKE=debian so
// tools that branch on the distribution still work.
func WriteOSRelease(root string, s *spec.Spec) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "NAME=\"berth\"\nID=berth\nID_LIKE=debian\n")
	fmt.Fprintf(&b, "PRETTY_NAME=\"berth %s (%s)\"\n", s.Version, s.Name)
	fmt.Fprintf(&b, "VERSION=%q\nVERSION_ID=%q\n", s.Version, s.Version)
	fmt.Fprintf(&b, "IMAGE_ID=%q\nIMAGE_VERSION=%q\n", s.Name, s.Version)
	fmt.Fprintf(&b, "%s=%q\n", layout.OSReleaseVersionKey, s.Version)
	fmt.Fprintf(&b, "HOME_URL=\"https://github.com/berth-os/berth\"\n")
	if err := writeRootFile(root, "usr/lib/os-release", b.Bytes(), 0o644); err != nil {
		return err
	}
	if err := replaceWithSymlink(root, "etc/os-release", "../usr/lib/os-release"); err != nil {
		return fmt.Errorf("link /etc/os-release: %w", err)
	}
	return nil
}

// PrepareReadOnly turns a normal root into one that runs from a read-only
// slot: /var moves to a factory copy (the state partition is mounted over
// /var and tmpfiles seeds it), /home and /root point into /var, /tmp is a
// tmpfs, and machine-id is left empty so the first boot creates it once
// and the persistent /etc overlay keeps it.
func PrepareReadOnly(root string) error {
	factories, err := securejoin.SecureJoin(root, factoryDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(factories, 0o755); err != nil {
		return err
	}
	factory := filepath.Join(factories, "var")
	varDir := filepath.Join(root, "var")
	if err := os.RemoveAll(factory); err != nil {
		return err
	}
	if err := os.Rename(varDir, factory); err != nil {
		return fmt.Errorf("move /var to the factory copy: %w", err)
	}
	if err := os.Mkdir(varDir, 0o755); err != nil {
		return err
	}

	// tmpfiles "C" copies an entry only when it is missing, so a new OS
	// version adds its new /var content without touching existing state.
	var lines []string
	lines = append(lines, "# berth: seed the state partition (/var) from the OS image's factory copy")
	tops, err := os.ReadDir(factory)
	if err != nil {
		return err
	}
	for _, top := range tops {
		var subs []os.DirEntry
		if top.IsDir() {
			if subs, err = os.ReadDir(filepath.Join(factory, top.Name())); err != nil {
				return err
			}
		}
		// Symlinks (/var/run -> /run), files and empty directories with
		// their own mode (/var/mail, /var/local) are copied whole.
		if len(subs) == 0 {
			lines = append(lines, fmt.Sprintf("C /var/%s - - - - /%s/%s", top.Name(), layout.FactoryVar, top.Name()))
			continue
		}
		for _, sub := range subs {
			p := "/var/" + top.Name() + "/" + sub.Name()
			lines = append(lines, fmt.Sprintf("C %s - - - - /%s/%s/%s", p, layout.FactoryVar, top.Name(), sub.Name()))
		}
	}

	// What the image put in /root and /home (skeleton files, the spec's
	// ssh keys) is copied once into the state partition.
	for _, h := range []struct{ dir, state string }{{"root", layout.RootHome}, {"home", layout.Home}} {
		src := filepath.Join(root, h.dir)
		dst := filepath.Join(factories, h.dir)
		if err := os.RemoveAll(dst); err != nil {
			return err
		}
		if fi, err := os.Lstat(src); err == nil && fi.IsDir() {
			if err := os.Rename(src, dst); err != nil {
				return fmt.Errorf("move /%s to the factory copy: %w", h.dir, err)
			}
			ents, err := os.ReadDir(dst)
			if err != nil {
				return err
			}
			for _, e := range ents {
				lines = append(lines, fmt.Sprintf("C /var/%s/%s - - - - /%s/%s/%s", h.state, e.Name(), factoryDir, h.dir, e.Name()))
			}
		}
		if err := replaceWithSymlink(root, h.dir, "var/"+h.state); err != nil {
			return err
		}
	}
	lines = append(lines,
		fmt.Sprintf("d /var/%s 0755 root root -", layout.Home),
		fmt.Sprintf("d /var/%s 0700 root root -", layout.RootHome))
	sort.Strings(lines[1:])
	if err := writeRootFile(root, "usr/lib/tmpfiles.d/berth-state.conf", []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}

	fstab := "# berth: / is a read-only slot; /var is the state partition (mounted by the initrd)\n" +
		"tmpfs /tmp tmpfs mode=1777,strictatime,nosuid,nodev,size=50% 0 0\n"
	if err := writeRootFile(root, "etc/fstab", []byte(fstab), 0o644); err != nil {
		return err
	}
	// mmdebstrap copies the build machine's hostname; a node starts as
	// "berth" until its configuration names it.
	if err := writeRootFile(root, "etc/hostname", []byte("berth\n"), 0o644); err != nil {
		return err
	}
	// Empty machine-id: systemd treats the boot as the first one, creates
	// an id and writes it through the persistent /etc overlay.
	if err := writeRootFile(root, "etc/machine-id", nil, 0o444); err != nil {
		return err
	}
	// Mount points that must exist on a read-only root: the ESP (mounted by
	// systemd-gpt-auto-generator) and /tmp.
	// A symlink there (tmp -> var/tmp) would put the tmpfs elsewhere.
	for _, d := range []string{"efi", "tmp", "boot"} {
		p := filepath.Join(root, d)
		if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	// unix.Chmod: os.Chmod would drop the sticky bit of a plain 0o1777.
	return unix.Chmod(filepath.Join(root, "tmp"), 0o1777)
}

// factoryDir holds the image's copies of what lives on the state
// partition: var, root and home.
var factoryDir = path.Dir(layout.FactoryVar)

// replaceWithSymlink makes rel, a path of root, a symlink to target,
// replacing whatever was there.
func replaceWithSymlink(root, rel, target string) error {
	p, err := inRoot(root, rel)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	return os.Symlink(target, p)
}

// WritePackageList records the installed Debian packages (name and version)
// in the image before dpkg's state is trimmed, for inventories and audits.
func WritePackageList(root string) error {
	status := filepath.Join(root, "var/lib/dpkg/status")
	f, err := os.Open(status)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var out []string
	var pkg, ver, state string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	flush := func() {
		// Removed packages whose configuration files remain are listed too
		// ("deinstall ok config-files"): only installed ones count.
		if pkg != "" && (state == "" || strings.HasSuffix(state, " installed")) {
			out = append(out, pkg+" "+ver)
		}
		pkg, ver, state = "", "", ""
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			flush()
		case strings.HasPrefix(line, "Package: "):
			pkg = strings.TrimPrefix(line, "Package: ")
		case strings.HasPrefix(line, "Version: "):
			ver = strings.TrimPrefix(line, "Version: ")
		case strings.HasPrefix(line, "Status: "):
			state = strings.TrimPrefix(line, "Status: ")
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return err
	}
	sort.Strings(out)
	return writeRootFile(root, "usr/share/berth/packages.txt", []byte(strings.Join(out, "\n")+"\n"), 0o644)
}
