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
		target, err := securejoin.SecureJoin(root, f.Path)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if fi, err := os.Lstat(target); err == nil && (fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0) {
			if err := os.RemoveAll(target); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		if err := os.WriteFile(target, data, 0o600); err != nil {
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

// lookupID finds name in an /etc/passwd-style file of the root.
func lookupID(root, file, name string) (int, error) {
	data, err := os.ReadFile(filepath.Join(root, file))
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
	p := filepath.Join(root, "usr/lib/os-release")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write os-release: %w", err)
	}
	etc := filepath.Join(root, "etc/os-release")
	os.Remove(etc)
	return os.Symlink("../usr/lib/os-release", etc)
}

// PrepareReadOnly turns a normal root into one that runs from a read-only
// slot: /var moves to a factory copy (the state partition is mounted over
// /var and tmpfiles seeds it), /home and /root point into /var, /tmp is a
// tmpfs, and machine-id is left empty so the first boot creates it once
// and the persistent /etc overlay keeps it.
func PrepareReadOnly(root string) error {
	factory := filepath.Join(root, layout.FactoryVar)
	if err := os.MkdirAll(filepath.Dir(factory), 0o755); err != nil {
		return err
	}
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
		if !top.IsDir() {
			continue
		}
		subs, err := os.ReadDir(filepath.Join(factory, top.Name()))
		if err != nil {
			return err
		}
		for _, sub := range subs {
			p := "/var/" + top.Name() + "/" + sub.Name()
			lines = append(lines, fmt.Sprintf("C %s - - - - /%s/%s/%s", p, layout.FactoryVar, top.Name(), sub.Name()))
		}
	}

	// /root's skeleton files, copied once.
	roothome := filepath.Join(root, "root")
	factoryRoot := filepath.Join(root, "usr/share/factory/root")
	if fi, err := os.Lstat(roothome); err == nil && fi.IsDir() {
		os.RemoveAll(factoryRoot)
		if err := os.Rename(roothome, factoryRoot); err != nil {
			return err
		}
		ents, _ := os.ReadDir(factoryRoot)
		for _, e := range ents {
			lines = append(lines, fmt.Sprintf("C /var/%s/%s - - - - /usr/share/factory/root/%s", layout.RootHome, e.Name(), e.Name()))
		}
	}
	if err := replaceWithSymlink(root, "root", "var/"+layout.RootHome); err != nil {
		return err
	}
	if err := replaceWithSymlink(root, "home", "var/"+layout.Home); err != nil {
		return err
	}
	lines = append(lines,
		fmt.Sprintf("d /var/%s 0755 root root -", layout.Home),
		fmt.Sprintf("d /var/%s 0700 root root -", layout.RootHome))
	sort.Strings(lines[1:])
	tmpfiles := filepath.Join(root, "usr/lib/tmpfiles.d/berth-state.conf")
	if err := os.MkdirAll(filepath.Dir(tmpfiles), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(tmpfiles, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}

	fstab := "# berth: / is a read-only slot; /var is the state partition (mounted by the initrd)\n" +
		"tmpfs /tmp tmpfs mode=1777,strictatime,nosuid,nodev,size=50% 0 0\n"
	if err := os.WriteFile(filepath.Join(root, "etc/fstab"), []byte(fstab), 0o644); err != nil {
		return err
	}
	// Empty machine-id: systemd treats the boot as the first one, creates
	// an id and writes it through the persistent /etc overlay.
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	// Mount points that must exist on a read-only root: the ESP (mounted by
	// systemd-gpt-auto-generator) and /tmp.
	for _, d := range []string{"efi", "tmp", "boot"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(filepath.Join(root, "tmp"), 0o1777)
}

func replaceWithSymlink(root, name, target string) error {
	p := filepath.Join(root, name)
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
	var pkg, ver string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	flush := func() {
		if pkg != "" {
			out = append(out, pkg+" "+ver)
		}
		pkg, ver = "", ""
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
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return err
	}
	sort.Strings(out)
	dst := filepath.Join(root, "usr/share/berth/packages.txt")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, []byte(strings.Join(out, "\n")+"\n"), 0o644)
}
