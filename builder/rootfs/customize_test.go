package rootfs

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/updater/layout"
)

func strp(s string) *string { return &s }

// accountsRoot is a root with its own users and groups, different from
// the build machine's.
func accountsRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n" +
			"core:x:1000:1000::/home/core:/bin/sh\n" +
			"svc:x:998:997::/nonexistent:/usr/sbin/nologin\n",
		"etc/group": "root:x:0:\n" +
			"wheel:x:10:core\n" +
			"core:x:1001:\n",
	})
	return root
}

func TestAddFiles(t *testing.T) {
	root := accountsRoot(t)
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho tool\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &spec.Spec{Path: "test.yaml", Files: []spec.File{
		{Path: "/etc/motd", Content: strp("hello\n"), Mode: 0o644, Line: 3},
		{Path: "/usr/local/bin/tool", Source: src, Mode: 0o4750, UID: -1, GID: -1, Owner: "core", Group: "wheel", Line: 7},
		{Path: "/var/lib/app/data", Content: strp(""), Mode: 0o2770, UID: 1234, GID: 5678, Line: 9},
		{Path: "/etc/sticky", Content: strp("x"), Mode: 0o1600, UID: 0, GID: -1, Group: "core", Line: 11},
	}}
	if err := AddFiles(root, s); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, content string
		perm          uint32
		uid, gid      uint32
	}{
		{"etc/motd", "hello\n", 0o644, 0, 0},
		{"usr/local/bin/tool", "#!/bin/sh\necho tool\n", 0o4750, 1000, 10},
		{"var/lib/app/data", "", 0o2770, 1234, 5678},
		{"etc/sticky", "x", 0o1600, 0, 1001},
	} {
		p := filepath.Join(root, tc.path)
		st := lstat(t, p)
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != tc.perm || st.Uid != tc.uid || st.Gid != tc.gid {
			t.Errorf("%s: mode %o owner %d:%d, want regular %04o %d:%d", tc.path, st.Mode, st.Uid, st.Gid, tc.perm, tc.uid, tc.gid)
		}
		if got := readString(t, p); got != tc.content {
			t.Errorf("%s content %q, want %q", tc.path, got, tc.content)
		}
	}
}

func TestAddFilesReplacesLinksAndDirs(t *testing.T) {
	base := t.TempDir()
	host := filepath.Join(base, "host")
	writeTree(t, host, map[string]string{"secret": "host file"})
	root := filepath.Join(base, "root")
	writeTree(t, root, map[string]string{
		"run/systemd/resolve/stub-resolv.conf": "stub",
		"etc/resolv.conf":                      "->../run/systemd/resolve/stub-resolv.conf",
		"etc/hostname":                         "->" + filepath.Join(host, "secret"),
		"usr/bin/a":                            "shared inode",
		"etc/dir/inner":                        "x",
		"opt":                                  "->" + host,
	})
	if err := os.Link(filepath.Join(root, "usr/bin/a"), filepath.Join(root, "usr/bin/b")); err != nil {
		t.Fatal(err)
	}
	s := &spec.Spec{Path: "test.yaml", Files: []spec.File{
		{Path: "/etc/resolv.conf", Content: strp("nameserver 10.0.2.3\n"), Mode: 0o644},
		{Path: "/etc/hostname", Content: strp("node\n"), Mode: 0o644},
		{Path: "/usr/bin/b", Content: strp("new b"), Mode: 0o755},
		{Path: "/etc/dir", Content: strp("now a file"), Mode: 0o644},
		{Path: "/opt/secret", Content: strp("inside"), Mode: 0o644},
	}}
	if err := AddFiles(root, s); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"etc/resolv.conf": "nameserver 10.0.2.3\n",
		"etc/hostname":    "node\n",
		"usr/bin/b":       "new b",
		"etc/dir":         "now a file",
	} {
		if st := lstat(t, filepath.Join(root, p)); st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("%s is not a regular file: %o", p, st.Mode)
		}
		if got := readString(t, filepath.Join(root, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if got := readString(t, filepath.Join(root, "run/systemd/resolve/stub-resolv.conf")); got != "stub" {
		t.Errorf("writing /etc/resolv.conf wrote through its symlink: stub-resolv.conf = %q", got)
	}
	if got := readString(t, filepath.Join(root, "usr/bin/a")); got != "shared inode" {
		t.Errorf("writing /usr/bin/b changed its hard link /usr/bin/a: %q", got)
	}
	if got := readString(t, filepath.Join(host, "secret")); got != "host file" {
		t.Errorf("a file outside root was written: %q", got)
	}
}

func TestAddFilesErrors(t *testing.T) {
	for name, f := range map[string]spec.File{
		"unknown owner":  {Path: "/etc/x", Content: strp("x"), Mode: 0o644, UID: -1, GID: 0, Owner: "nobody-here", Line: 12},
		"unknown group":  {Path: "/etc/x", Content: strp("x"), Mode: 0o644, UID: 0, GID: -1, Group: "nogroup-here", Line: 12},
		"missing source": {Path: "/etc/x", Source: "/nonexistent/berth/source", Mode: 0o644, Line: 12},
	} {
		root := accountsRoot(t)
		err := AddFiles(root, &spec.Spec{Path: "img.yaml", Files: []spec.File{f}})
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		// The error points at the spec line and the file.
		if !strings.Contains(err.Error(), "img.yaml:12") || !strings.Contains(err.Error(), "/etc/x") {
			t.Errorf("%s: error %q lacks the spec position or path", name, err)
		}
		if exists(filepath.Join(root, "etc/x")) {
			t.Errorf("%s: file written despite the error", name)
		}
	}
	// A root without /etc/passwd cannot resolve names.
	err := AddFiles(t.TempDir(), &spec.Spec{Path: "img.yaml", Files: []spec.File{{Path: "/x", Content: strp(""), UID: -1, Owner: "core"}}})
	if err == nil || !strings.Contains(err.Error(), "core") {
		t.Errorf("root without passwd: error %v", err)
	}
}

func osReleaseFields(t *testing.T, data string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("os-release line %q is not KEY=VALUE", line)
		}
		m[k] = strings.Trim(v, `"`)
	}
	return m
}

func TestWriteOSRelease(t *testing.T) {
	for name, setup := range map[string]map[string]string{
		"debian root": {
			"usr/lib/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
			"etc/os-release":     "->../usr/lib/os-release",
		},
		"regular etc file": {"etc/os-release": "ID=other\n"},
		"empty root":       {},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, setup)
			s := &spec.Spec{Name: "minimal", Version: "1.2.3"}
			if err := WriteOSRelease(root, s); err != nil {
				t.Fatal(err)
			}
			if target, err := os.Readlink(filepath.Join(root, "etc/os-release")); err != nil || target != "../usr/lib/os-release" {
				t.Errorf("etc/os-release -> %q (%v), want ../usr/lib/os-release", target, err)
			}
			data := readString(t, filepath.Join(root, "etc/os-release"))
			f := osReleaseFields(t, data)
			for k, want := range map[string]string{
				"NAME": "berth", "ID": "berth", "ID_LIKE": "debian", "VERSION_ID": "1.2.3", "VERSION": "1.2.3",
				"IMAGE_ID": "minimal", "IMAGE_VERSION": "1.2.3", layout.OSReleaseVersionKey: "1.2.3",
			} {
				if f[k] != want {
					t.Errorf("%s = %q, want %q\n%s", k, f[k], want, data)
				}
			}
			if !strings.Contains(f["PRETTY_NAME"], "1.2.3") || strings.Contains(data, "debian\"\nID=debian") {
				t.Errorf("PRETTY_NAME %q", f["PRETTY_NAME"])
			}
		})
	}
}

func TestWriteOSReleaseDoesNotWriteThroughAbsoluteLinks(t *testing.T) {
	base := t.TempDir()
	hostFile := filepath.Join(base, "host-os-release")
	os.WriteFile(hostFile, []byte("ID=host\n"), 0o644)
	root := filepath.Join(base, "root")
	writeTree(t, root, map[string]string{"usr/lib/os-release": "->" + hostFile, "etc/": ""})
	if err := WriteOSRelease(root, &spec.Spec{Name: "n", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, hostFile); got != "ID=host\n" {
		t.Errorf("WriteOSRelease wrote outside root: %q", got)
	}
	if f := osReleaseFields(t, readString(t, filepath.Join(root, "usr/lib/os-release"))); f["ID"] != "berth" {
		t.Errorf("usr/lib/os-release ID = %q", f["ID"])
	}
}

// debianLikeRoot is a small root shaped like a trimmed Debian tree.
func debianLikeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"var/lib/systemd/deb-systemd-helper-enabled/x.wants/y": "y",
		"var/lib/dbus/":                   "",
		"var/lib/shells.state":            "s",
		"var/cache/ldconfig/aux-cache":    "c",
		"var/spool/cron/crontabs/":        "",
		"var/spool/mail":                  "->../mail",
		"var/log/":                        "",
		"var/mail/":                       "",
		"var/local/":                      "",
		"var/run":                         "->/run",
		"var/lock":                        "->/run/lock",
		"root/.bashrc":                    "bashrc",
		"root/.profile":                   "profile",
		"home/core/.ssh/authorized_keys":  "ssh-ed25519 AAAA core",
		"etc/machine-id":                  "0123456789abcdef0123456789abcdef\n",
		"etc/fstab":                       "# UNCONFIGURED FSTAB\n",
		"usr/lib/tmpfiles.d/var.conf":     "q /var 0755 - - -\n",
		"usr/share/factory/var/old/stale": "from an older run",
	})
	// Modes the state partition must get back.
	for p, m := range map[string]uint32{"var/local": 0o2775, "var/mail": 0o2775, "root": 0o700} {
		if err := unix.Chmod(filepath.Join(root, p), m); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestPrepareReadOnly(t *testing.T) {
	root := debianLikeRoot(t)
	if err := PrepareReadOnly(root); err != nil {
		t.Fatal(err)
	}

	// /var is an empty mount point; its content is the factory copy.
	if ents, err := os.ReadDir(filepath.Join(root, "var")); err != nil || len(ents) != 0 {
		t.Errorf("var: %v entries, err %v; want an empty directory", len(ents), err)
	}
	factory := filepath.Join(root, layout.FactoryVar)
	if got := readString(t, filepath.Join(factory, "lib/systemd/deb-systemd-helper-enabled/x.wants/y")); got != "y" {
		t.Errorf("factory var content %q", got)
	}
	if exists(filepath.Join(factory, "old")) {
		t.Error("a stale factory copy survived")
	}
	if st := lstat(t, filepath.Join(factory, "local")); st.Mode&0o7777 != 0o2775 {
		t.Errorf("factory var/local mode %o, want 2775", st.Mode&0o7777)
	}

	// /home and /root point into /var; their files are seeded from factory copies.
	for name, want := range map[string]string{"home": "var/home", "root": "var/roothome"} {
		if got, err := os.Readlink(filepath.Join(root, name)); err != nil || got != want {
			t.Errorf("/%s -> %q (%v), want %s", name, got, err, want)
		}
	}
	if got := readString(t, filepath.Join(root, "usr/share/factory/root/.bashrc")); got != "bashrc" {
		t.Errorf("root's .bashrc not kept: %q", got)
	}
	if got := readString(t, filepath.Join(root, "usr/share/factory/home/core/.ssh/authorized_keys")); got != "ssh-ed25519 AAAA core" {
		t.Errorf("files under /home were not kept: %q", got)
	}

	data := readString(t, filepath.Join(root, "usr/lib/tmpfiles.d/berth-state.conf"))
	lines := strings.Split(strings.TrimSuffix(data, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "#") {
		t.Errorf("first line %q is not a comment", lines[0])
	}
	body := lines[1:]
	if !sort.StringsAreSorted(body) {
		t.Errorf("tmpfiles lines not sorted:\n%s", data)
	}
	copies := map[string]string{}
	var dirs []string
	for _, l := range body {
		f := strings.Fields(l)
		switch {
		case len(f) == 7 && f[0] == "C" && f[2] == "-" && f[3] == "-" && f[4] == "-" && f[5] == "-":
			if _, dup := copies[f[1]]; dup {
				t.Errorf("duplicate C line for %s", f[1])
			}
			copies[f[1]] = f[6]
		case len(f) == 6 && f[0] == "d":
			dirs = append(dirs, strings.Join(f[1:], " "))
		default:
			t.Errorf("unexpected tmpfiles line %q", l)
		}
	}
	wantCopies := map[string]string{
		"/var/lib/systemd":       "/usr/share/factory/var/lib/systemd",
		"/var/lib/dbus":          "/usr/share/factory/var/lib/dbus",
		"/var/lib/shells.state":  "/usr/share/factory/var/lib/shells.state",
		"/var/cache/ldconfig":    "/usr/share/factory/var/cache/ldconfig",
		"/var/spool/cron":        "/usr/share/factory/var/spool/cron",
		"/var/spool/mail":        "/usr/share/factory/var/spool/mail",
		"/var/log":               "/usr/share/factory/var/log",
		"/var/mail":              "/usr/share/factory/var/mail",
		"/var/local":             "/usr/share/factory/var/local",
		"/var/run":               "/usr/share/factory/var/run",
		"/var/lock":              "/usr/share/factory/var/lock",
		"/var/roothome/.bashrc":  "/usr/share/factory/root/.bashrc",
		"/var/roothome/.profile": "/usr/share/factory/root/.profile",
		"/var/home/core":         "/usr/share/factory/home/core",
	}
	for dst, src := range wantCopies {
		if copies[dst] != src {
			t.Errorf("C %s: source %q, want %q", dst, copies[dst], src)
		}
	}
	for dst, src := range copies {
		if _, ok := wantCopies[dst]; !ok {
			t.Errorf("unexpected C line %s <- %s", dst, src)
		}
		// Every source exists in the image (symlinks included).
		if !exists(filepath.Join(root, src)) {
			t.Errorf("C %s: source %s is not in the image", dst, src)
		}
	}
	wantDirs := []string{"/var/home 0755 root root -", "/var/roothome 0700 root root -"}
	if strings.Join(dirs, "|") != strings.Join(wantDirs, "|") {
		t.Errorf("d lines %q, want %q", dirs, wantDirs)
	}

	fstab := readString(t, filepath.Join(root, "etc/fstab"))
	var tmpLine []string
	for _, l := range strings.Split(fstab, "\n") {
		if f := strings.Fields(l); len(f) == 6 && f[1] == "/tmp" {
			tmpLine = f
		}
	}
	if tmpLine == nil || tmpLine[0] != "tmpfs" || tmpLine[2] != "tmpfs" || !strings.Contains(","+tmpLine[3]+",", ",mode=1777,") {
		t.Errorf("fstab has no tmpfs /tmp with mode=1777:\n%s", fstab)
	}
	if strings.Contains(fstab, "UNCONFIGURED") {
		t.Errorf("old fstab kept:\n%s", fstab)
	}
	if st := lstat(t, filepath.Join(root, "etc/machine-id")); st.Size != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("etc/machine-id: size %d mode %o, want an empty file", st.Size, st.Mode)
	}
	for d, perm := range map[string]uint32{"efi": 0o755, "tmp": 0o1777} {
		st := lstat(t, filepath.Join(root, d))
		if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != perm {
			t.Errorf("/%s: mode %o, want a %04o directory", d, st.Mode, perm)
		}
	}
}

func TestPrepareReadOnlyStaysInRoot(t *testing.T) {
	base := t.TempDir()
	host := filepath.Join(base, "host")
	writeTree(t, host, map[string]string{"fstab": "host fstab\n", "machine-id": "host id\n", "tmp/": ""})
	root := filepath.Join(base, "root")
	writeTree(t, root, map[string]string{
		"var/lib/x":      "x",
		"etc/fstab":      "->" + filepath.Join(host, "fstab"),
		"etc/machine-id": "->" + filepath.Join(host, "machine-id"),
		"tmp":            "->" + filepath.Join(host, "tmp"),
	})
	if err := PrepareReadOnly(root); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(host, "fstab")); got != "host fstab\n" {
		t.Errorf("host fstab changed: %q", got)
	}
	if got := readString(t, filepath.Join(host, "machine-id")); got != "host id\n" {
		t.Errorf("host machine-id changed: %q", got)
	}
	if st := lstat(t, filepath.Join(host, "tmp")); st.Mode&0o7777 != 0o755 {
		t.Errorf("host tmp mode changed to %o", st.Mode&0o7777)
	}
	if st := lstat(t, filepath.Join(root, "tmp")); st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != 0o1777 {
		t.Errorf("/tmp: mode %o, want a 1777 directory", st.Mode)
	}
	if st := lstat(t, filepath.Join(root, "etc/fstab")); st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("etc/fstab is still a link")
	}
}

func TestPrepareReadOnlyWithoutVar(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"etc/": ""})
	if err := PrepareReadOnly(root); err == nil || !strings.Contains(err.Error(), "var") {
		t.Errorf("root without /var: error %v", err)
	}
}

func TestWritePackageList(t *testing.T) {
	root := t.TempDir()
	status := `Package: zlib1g
Status: install ok installed
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime
 Version: 9.9 (a continuation line, not a field)

Package: bash
Status: install ok installed
Priority: required
Version: 5.2.15-2+b2

Package: old-removed
Status: deinstall ok config-files
Version: 1.0

Package: apt
Status: install ok installed
Version: 2.6.1
`
	writeTree(t, root, map[string]string{"var/lib/dpkg/status": status})
	if err := WritePackageList(root); err != nil {
		t.Fatal(err)
	}
	got := readString(t, filepath.Join(root, "usr/share/berth/packages.txt"))
	want := "apt 2.6.1\nbash 5.2.15-2+b2\nzlib1g 1:1.2.13.dfsg-1\n"
	if got != want {
		t.Errorf("packages.txt =\n%s\nwant\n%s", got, want)
	}
}

func TestWritePackageListWithoutDpkg(t *testing.T) {
	root := t.TempDir()
	if err := WritePackageList(root); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(root, "usr/share/berth/packages.txt")) {
		t.Error("a package list was written for a root without dpkg")
	}
}
