package rootfs

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTree creates files (path -> content) under root; a content
// starting with "->" makes a symlink to the rest.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(content, "->"); ok {
			err = os.Symlink(target, full)
		} else if strings.HasSuffix(p, "/") {
			err = os.MkdirAll(full, 0o755)
		} else {
			err = os.WriteFile(full, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// regularBytes sums the sizes of the regular files under root.
func regularBytes(t *testing.T, root string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, _ := d.Info()
			n += fi.Size()
		}
		return nil
	})
	return n
}

func TestTrim(t *testing.T) {
	root := t.TempDir()
	big := strings.Repeat("x", 4096)
	writeTree(t, root, map[string]string{
		"usr/share/man/man1/ls.1.gz":                     big,
		"usr/share/info/dir":                             "info",
		"usr/share/lintian/overrides/bash":               "l",
		"var/cache/apt/pkgcache.bin":                     big,
		"var/cache/debconf/config.dat":                   "c",
		"var/lib/apt/lists/x_Packages":                   big,
		"var/lib/dpkg/status":                            "Package: x\n",
		"var/lib/systemd/keep":                           "k",
		"var/log/syslog":                                 "log",
		"var/log/apt/history.log":                        "log",
		"etc/ssh/ssh_host_ed25519_key":                   "secret",
		"etc/ssh/sshd_config":                            "config",
		"boot/vmlinuz-6.1.0-1-cloud-amd64":               big,
		"boot/initrd.img-6.1.0-1-cloud-amd64":            big,
		"vmlinuz":                                        "->boot/vmlinuz-6.1.0-1-cloud-amd64",
		"usr/sbin/update-initramfs":                      "#!/bin/sh",
		"usr/share/doc/bash/copyright":                   "GPL",
		"usr/share/doc/bash/changelog.gz":                big,
		"usr/share/doc/bash/README":                      "readme",
		"usr/share/doc/bash/examples/a/b.sh":             "ex",
		"usr/share/doc/ca/examples/pkg/debian/copyright": "an example file, not ca's licence",
		"usr/share/doc/onlydocs/README":                  "r",
		"usr/share/doc/libfoo":                           "->bash",
		"usr/share/locale/de/LC_MESSAGES/a.mo":           big,
		"usr/share/locale/en/LC_MESSAGES/a.mo":           "en",
		"usr/share/locale/locale.alias":                  "alias",
		"usr/lib/locale/C.utf8/LC_CTYPE":                 "ctype",
		"usr/lib/locale/de_DE.utf8/LC_CTYPE":             big,
		"opt/app/logs/a.log":                             "a",
		"opt/app/logs/b.log":                             "b",
		"opt/app/logs/keep.txt":                          "k",
		"usr/lib/x86_64-linux-gnu/gconv/X.so":            big,
		"usr/lib/x86_64-linux-gnu/libc.so.6":             "libc",
		"usr/share/common-licenses/GPL-3":                "GPL",
		"usr/share/zoneinfo/Europe/Berlin":               "tz",
		"etc/initramfs-tools/initramfs.conf":             "conf",
		"usr/share/initramfs-tools/hook-functs":          "h",
	})
	before := regularBytes(t, root)

	freed, err := Trim(root, []string{"/opt/app/logs/*.log", "usr/lib/x86_64-linux-gnu/gconv", "/does/not/exist/*"}, []string{"C.UTF-8", "en"})
	if err != nil {
		t.Fatal(err)
	}
	if freed <= 0 || freed != before-regularBytes(t, root) {
		t.Errorf("freed %d bytes, want %d (the size of the removed files)", freed, before-regularBytes(t, root))
	}

	gone := []string{
		"usr/share/man", "usr/share/info", "usr/share/lintian",
		"var/cache/apt", "var/cache/debconf", "var/lib/apt", "var/lib/dpkg",
		"var/log/syslog", "var/log/apt", "etc/ssh/ssh_host_ed25519_key",
		"boot/vmlinuz-6.1.0-1-cloud-amd64", "boot/initrd.img-6.1.0-1-cloud-amd64", "vmlinuz",
		"usr/sbin/update-initramfs", "etc/initramfs-tools", "usr/share/initramfs-tools",
		"usr/share/doc/bash/changelog.gz", "usr/share/doc/bash/README", "usr/share/doc/bash/examples",
		"usr/share/doc/ca",
		"usr/share/doc/onlydocs", "usr/share/doc/libfoo",
		"usr/share/locale/de", "usr/lib/locale/de_DE.utf8",
		"opt/app/logs/a.log", "opt/app/logs/b.log", "usr/lib/x86_64-linux-gnu/gconv",
	}
	for _, p := range gone {
		if exists(filepath.Join(root, p)) {
			t.Errorf("%s was not trimmed", p)
		}
	}
	kept := []string{
		"var/cache", "var/log", "var/lib/systemd/keep", "boot", "etc/ssh/sshd_config",
		"usr/share/doc/bash/copyright",
		"usr/share/locale/en/LC_MESSAGES/a.mo", "usr/share/locale/locale.alias", "usr/lib/locale/C.utf8/LC_CTYPE",
		"opt/app/logs/keep.txt", "usr/lib/x86_64-linux-gnu/libc.so.6",
		"usr/share/common-licenses/GPL-3", "usr/share/zoneinfo/Europe/Berlin",
	}
	for _, p := range kept {
		if !exists(filepath.Join(root, p)) {
			t.Errorf("%s was trimmed but must stay", p)
		}
	}
}

func TestTrimBadPattern(t *testing.T) {
	if _, err := Trim(t.TempDir(), []string{"usr/[", "x"}, nil); err == nil || !strings.Contains(err.Error(), "usr/[") {
		t.Errorf("bad glob: error %v does not name the pattern", err)
	}
}

func TestTrimMissingDirsAreFine(t *testing.T) {
	freed, err := Trim(t.TempDir(), nil, nil)
	if err != nil || freed != 0 {
		t.Errorf("empty root: freed %d, err %v", freed, err)
	}
}

// An image may hold absolute symlinks (var/log -> /var/log): trimming
// through them would delete the build machine's files.
func TestTrimStaysInRoot(t *testing.T) {
	base := t.TempDir()
	host := filepath.Join(base, "host")
	writeTree(t, host, map[string]string{
		"log/syslog":                  "host log",
		"locale/de/LC_MESSAGES/a.mo":  "host locale",
		"doc/pkg/README":              "host doc",
		"data/file":                   "host data",
		"share/doc/pkg/README":        "host doc",
		"share/locale/fr/x.mo":        "host locale",
		"share/locale/fr/LC_MESSAGES": "",
	})
	root := filepath.Join(base, "root")
	writeTree(t, root, map[string]string{
		"var/log":                    "->" + filepath.Join(host, "log"),
		"usr/share/locale":           "->" + filepath.Join(host, "locale"),
		"usr/share/doc":              "->" + filepath.Join(host, "doc"),
		"data":                       "->" + filepath.Join(host, "data"),
		"usr/lib/locale":             "->" + filepath.Join(host, "share/locale"),
		"usr/share/doc-base/ignored": "x",
	})
	before := treeOf(t, host)
	if _, err := Trim(root, []string{"/data/*", "/../host/data/*"}, nil); err != nil {
		t.Logf("Trim: %v", err)
	}
	if after := treeOf(t, host); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("Trim changed files outside root:\nbefore %q\nafter  %q", before, after)
	}
}
