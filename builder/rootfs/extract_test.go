package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// tarEntry is one member of a test layer; body is the content of regular files.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func dirE(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func fileE(name, body string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}

func symlinkE(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlinkE(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

// whiteoutE is an OCI whiteout file, as image builders write them.
func whiteoutE(name string) tarEntry { return fileE(name, "", 0o644) }

func layerBytes(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if e.body != "" {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func apply(t *testing.T, root string, entries ...tarEntry) {
	t.Helper()
	if err := ApplyLayer(root, bytes.NewReader(layerBytes(t, entries...))); err != nil {
		t.Fatalf("ApplyLayer: %v", err)
	}
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func readString(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// treeOf lists every path under root (relative, sorted), for exact
// comparisons of what a layer left behind.
func treeOf(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func xattrsSupported(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(dir, ".xattr-probe")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	err := unix.Setxattr(p, "user.berth.probe", []byte("1"), 0)
	return !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EOPNOTSUPP)
}

func TestApplyLayerKeepsMetadata(t *testing.T) {
	root := t.TempDir()
	withXattrs := xattrsSupported(t, root)
	ping := fileE("./usr/bin/ping", "ping", 0o755)
	if withXattrs {
		ping.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.berth.test": "v\x00binary"}
	}
	userDir := dirE("home/u/", 0o700)
	userDir.hdr.Uid, userDir.hdr.Gid = 1000, 1000
	userFile := fileE("home/u/notes", "mine", 0o640)
	userFile.hdr.Uid, userFile.hdr.Gid = 1000, 1001
	sg := fileE("usr/bin/sg", "sg", 0o2755)
	sg.hdr.Gid = 42
	owned := symlinkE("home/u/link", "notes")
	owned.hdr.Uid, owned.hdr.Gid = 1000, 1000
	null := tarEntry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
	loop := tarEntry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop0", Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 0}}
	fifo := tarEntry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/initctl", Mode: 0o600}}

	apply(t, root,
		dirE("./", 0o755),
		dirE("./usr/", 0o755),
		dirE("./usr/bin/", 0o755),
		fileE("./usr/bin/su", "su binary", 0o4755),
		sg,
		fileE("usr/bin/sticky", "x", 0o1755),
		ping,
		hardlinkE("usr/bin/su-again", "./usr/bin/su"),
		symlinkE("bin", "usr/bin"),
		dirE("tmp/", 0o1777),
		userDir, userFile, owned,
		null, loop, fifo,
	)

	for _, tc := range []struct {
		path     string
		kind     uint32
		perm     uint32
		uid, gid uint32
	}{
		{"usr", unix.S_IFDIR, 0o755, 0, 0},
		{"usr/bin/su", unix.S_IFREG, 0o4755, 0, 0},
		{"usr/bin/sg", unix.S_IFREG, 0o2755, 0, 42},
		{"usr/bin/sticky", unix.S_IFREG, 0o1755, 0, 0},
		{"usr/bin/ping", unix.S_IFREG, 0o755, 0, 0},
		{"tmp", unix.S_IFDIR, 0o1777, 0, 0},
		{"home/u", unix.S_IFDIR, 0o700, 1000, 1000},
		{"home/u/notes", unix.S_IFREG, 0o640, 1000, 1001},
		{"home/u/link", unix.S_IFLNK, 0o777, 1000, 1000},
		{"bin", unix.S_IFLNK, 0o777, 0, 0},
		{"dev/null", unix.S_IFCHR, 0o666, 0, 0},
		{"dev/loop0", unix.S_IFBLK, 0o660, 0, 6},
		{"run/initctl", unix.S_IFIFO, 0o600, 0, 0},
	} {
		st := lstat(t, filepath.Join(root, tc.path))
		if st.Mode&unix.S_IFMT != tc.kind || st.Mode&0o7777 != tc.perm || st.Uid != tc.uid || st.Gid != tc.gid {
			t.Errorf("%s: type %o perm %04o owner %d:%d, want type %o perm %04o owner %d:%d",
				tc.path, st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid, tc.kind, tc.perm, tc.uid, tc.gid)
		}
	}
	if got := readString(t, filepath.Join(root, "usr/bin/su")); got != "su binary" {
		t.Errorf("su content %q", got)
	}
	if got, _ := os.Readlink(filepath.Join(root, "bin")); got != "usr/bin" {
		t.Errorf("bin -> %q, want usr/bin", got)
	}
	if st := lstat(t, filepath.Join(root, "dev/null")); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null is %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if st := lstat(t, filepath.Join(root, "dev/loop0")); unix.Major(st.Rdev) != 7 || unix.Minor(st.Rdev) != 0 {
		t.Errorf("dev/loop0 is %d:%d, want 7:0", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	su, su2 := lstat(t, filepath.Join(root, "usr/bin/su")), lstat(t, filepath.Join(root, "usr/bin/su-again"))
	if su.Ino != su2.Ino || su.Nlink != 2 {
		t.Errorf("hard link: inodes %d and %d, nlink %d; want one inode with 2 links", su.Ino, su2.Ino, su.Nlink)
	}
	if withXattrs {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/ping"), "user.berth.test", buf)
		if err != nil || string(buf[:n]) != "v\x00binary" {
			t.Errorf("xattr user.berth.test = %q, %v; want %q", buf[:max(n, 0)], err, "v\x00binary")
		}
	} else {
		t.Log("user xattrs not supported here: xattr check skipped")
	}
}

func TestApplyLayerFileGzipAndPlain(t *testing.T) {
	dir := t.TempDir()
	plain := layerBytes(t, dirE("etc/", 0o755), fileE("etc/hostname", "plain\n", 0o644))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layerBytes(t, fileE("etc/motd", "zipped\n", 0o600)))
	zw.Close()
	if err := os.WriteFile(filepath.Join(dir, "plain.tar"), plain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "layer.tar.gz"), gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	for _, f := range []string{"plain.tar", "layer.tar.gz"} {
		if err := ApplyLayerFile(root, filepath.Join(dir, f)); err != nil {
			t.Fatalf("ApplyLayerFile(%s): %v", f, err)
		}
	}
	if got := readString(t, filepath.Join(root, "etc/hostname")); got != "plain\n" {
		t.Errorf("hostname %q", got)
	}
	if got := readString(t, filepath.Join(root, "etc/motd")); got != "zipped\n" {
		t.Errorf("motd %q", got)
	}
	if st := lstat(t, filepath.Join(root, "etc/motd")); st.Mode&0o7777 != 0o600 {
		t.Errorf("motd mode %o", st.Mode&0o7777)
	}

	// Errors name the file.
	if err := ApplyLayerFile(root, filepath.Join(dir, "missing.tar")); err == nil {
		t.Error("missing layer file: no error")
	}
	bad := filepath.Join(dir, "bad.tar.gz")
	os.WriteFile(bad, append([]byte{0x1f, 0x8b}, bytes.Repeat([]byte{0}, 30)...), 0o644)
	if err := ApplyLayerFile(root, bad); err == nil || !strings.Contains(err.Error(), "bad.tar.gz") {
		t.Errorf("corrupt gzip layer: error %v does not name the file", err)
	}
	trunc := filepath.Join(dir, "trunc.tar")
	os.WriteFile(trunc, plain[:700], 0o644)
	if err := ApplyLayerFile(root, trunc); err == nil {
		t.Error("truncated layer: no error")
	}
}

func TestApplyLayerOverrides(t *testing.T) {
	root := t.TempDir()
	apply(t, root,
		dirE("a/", 0o755), fileE("a/x", "x", 0o644),
		fileE("f", "file", 0o644),
		dirE("m/", 0o755), fileE("m/1", "one", 0o644),
		fileE("target", "target", 0o644), symlinkE("l", "target"),
		fileE("m/over", "old", 0o755),
	)
	apply(t, root,
		fileE("a", "now a file", 0o600), // file replaces directory
		dirE("f/", 0o750),               // directory replaces file
		fileE("f/inside", "in", 0o644),
		dirE("m/", 0o700), fileE("m/2", "two", 0o644), // directory merges
		fileE("l", "replaced link", 0o644), // file replaces symlink, target untouched
		fileE("m/over", "new", 0o644),
	)
	if got := readString(t, filepath.Join(root, "a")); got != "now a file" {
		t.Errorf("a = %q", got)
	}
	if st := lstat(t, filepath.Join(root, "f")); st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o777 != 0o750 {
		t.Errorf("f: mode %o, want a 0750 directory", st.Mode)
	}
	if got := readString(t, filepath.Join(root, "m/1")); got != "one" {
		t.Errorf("merged dir lost m/1: %q", got)
	}
	if got := readString(t, filepath.Join(root, "m/2")); got != "two" {
		t.Errorf("m/2 = %q", got)
	}
	if st := lstat(t, filepath.Join(root, "m")); st.Mode&0o777 != 0o700 {
		t.Errorf("merged dir m mode %o, want the upper layer's 0700", st.Mode&0o777)
	}
	if st := lstat(t, filepath.Join(root, "l")); st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("l is still not a regular file: %o", st.Mode)
	}
	if got := readString(t, filepath.Join(root, "target")); got != "target" {
		t.Errorf("writing over a symlink changed its target: %q", got)
	}
	if got := readString(t, filepath.Join(root, "m/over")); got != "new" {
		t.Errorf("m/over = %q", got)
	}
	if st := lstat(t, filepath.Join(root, "m/over")); st.Mode&0o777 != 0o644 {
		t.Errorf("m/over mode %o, want 0644", st.Mode&0o777)
	}
}

func TestApplyLayerOverwriteDoesNotWriteThroughHardLinks(t *testing.T) {
	root := t.TempDir()
	apply(t, root, fileE("bin/a", "shared", 0o755), hardlinkE("bin/b", "bin/a"))
	apply(t, root, fileE("bin/b", "upper", 0o755))
	if got := readString(t, filepath.Join(root, "bin/a")); got != "shared" {
		t.Errorf("overwriting bin/b changed its lower hard link bin/a: %q", got)
	}
}

func TestApplyLayerWhiteouts(t *testing.T) {
	root := t.TempDir()
	apply(t, root,
		fileE("etc/a", "a", 0o644), fileE("etc/b", "b", 0o644),
		fileE("etc/sub/c", "c", 0o644),
		fileE("usr/lib/real", "real", 0o644),
		symlinkE("lnk", "/usr/lib/real"),
	)
	apply(t, root,
		whiteoutE("etc/.wh.a"),
		whiteoutE("etc/.wh.sub"),
		whiteoutE("etc/.wh.never-existed"),
		whiteoutE("nodir/.wh.x"),
		whiteoutE(".wh.lnk"), // removes the link, not what it points at
	)
	want := []string{"etc", "etc/b", "usr", "usr/lib", "usr/lib/real"}
	if got := treeOf(t, root); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("tree after whiteouts:\n got %q\nwant %q", got, want)
	}
}

func TestApplyLayerOpaqueWhiteout(t *testing.T) {
	root := t.TempDir()
	apply(t, root,
		fileE("d/old", "old", 0o644),
		fileE("d/olddir/x", "x", 0o644),
		fileE("d/keep/lower", "lower", 0o644),
		fileE("d/same", "lower", 0o644),
		fileE("other/stays", "s", 0o644),
	)
	apply(t, root,
		dirE("d/", 0o755),
		fileE("d/new-before", "n", 0o644),
		dirE("d/keep/", 0o755), // merges into the lower d/keep...
		fileE("d/keep/upper", "u", 0o644),
		fileE("d/implicit/file", "i", 0o644), // parent dir has no entry of its own
		fileE("d/same", "upper", 0o644),
		whiteoutE("d/.wh..wh..opq"),
		fileE("d/new-after", "n", 0o644),
		whiteoutE("missing/.wh..wh..opq"),
	)
	want := []string{
		"d", "d/implicit", "d/implicit/file", "d/keep", "d/keep/upper", "d/new-after", "d/new-before", "d/same",
		"other", "other/stays", // whiteouts never create directories: no "missing"
	}
	got := treeOf(t, root)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("tree after opaque whiteout:\n got %q\nwant %q", got, want)
	}
	if got := readString(t, filepath.Join(root, "d/same")); got != "upper" {
		t.Errorf("d/same = %q, want this layer's", got)
	}
}

func TestApplyLayerSkipsGlobalHeader(t *testing.T) {
	root := t.TempDir()
	// git archive and some tar writers start with a PAX global header.
	global := tarEntry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "abc"}}}
	apply(t, root, global, fileE("f", "x", 0o644))
	if got := treeOf(t, root); strings.Join(got, " ") != "f" {
		t.Errorf("tree %q, want only f", got)
	}
}

func TestApplyLayerRejectsUnsupportedEntries(t *testing.T) {
	root := t.TempDir()
	weird := tarEntry{hdr: tar.Header{Typeflag: 'Z', Name: "weird", Mode: 0o644}}
	err := ApplyLayer(root, bytes.NewReader(layerBytes(t, weird)))
	if err == nil || !strings.Contains(err.Error(), "weird") {
		t.Errorf("unsupported entry: error %v does not name it", err)
	}
	if err := ApplyLayer(root, strings.NewReader("this is not a tar file, not even close to 512 bytes")); err == nil {
		t.Error("garbage layer: no error")
	}
}

func TestApplyLayerHardLinkToSymlink(t *testing.T) {
	root := t.TempDir()
	apply(t, root,
		symlinkE("dangling", "nowhere"),
		hardlinkE("dangling-too", "dangling"),
	)
	a, b := lstat(t, filepath.Join(root, "dangling")), lstat(t, filepath.Join(root, "dangling-too"))
	if a.Ino != b.Ino || b.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("hard link to a symlink: inodes %d/%d, type %o; want the symlink's own inode", a.Ino, b.Ino, b.Mode&unix.S_IFMT)
	}
}

// TestApplyLayerStaysInRoot feeds hostile layers and checks nothing
// outside root is created, changed or removed.
func TestApplyLayerStaysInRoot(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "r1", "r2", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(base, "outside.txt")
	if err := os.WriteFile(outside, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	outsideDir := filepath.Join(base, "r1", "victim")
	if err := os.MkdirAll(filepath.Join(outsideDir, "keep"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := treeOf(t, base)

	apply(t, root,
		fileE("../../escape1", "x", 0o644),
		fileE("/../../../escape2", "x", 0o644),
		fileE("a/../../../escape3", "x", 0o644),
		symlinkE("toroot", "/"),
		fileE("toroot/escape4", "x", 0o644),
		symlinkE("up", "../../.."),
		fileE("up/escape5", "x", 0o644),
		fileE("up/r1/escape6", "x", 0o644),
		symlinkE("abs", base),
		fileE("abs/escape7", "x", 0o644),
		fileE("abs/r1/victim/keep/escape8", "x", 0o644),
		symlinkE("over", outside),
		fileE("over", "overwritten", 0o644), // replaces the link, never writes through it
		whiteoutE("up/.wh.outside.txt"),
		whiteoutE("abs/.wh.outside.txt"),
		whiteoutE("abs/r1/.wh.victim"),
		whiteoutE("up/r1/victim/.wh..wh..opq"),
		whiteoutE("abs/r1/victim/.wh..wh..opq"),
	)
	// A hard link may only point inside root: to missing targets it fails.
	err := ApplyLayer(root, bytes.NewReader(layerBytes(t, hardlinkE("hl", "abs/outside.txt"))))
	if err == nil {
		st := lstat(t, filepath.Join(root, "hl"))
		if o := lstat(t, outside); st.Ino == o.Ino {
			t.Error("hard link hl points at a file outside root")
		}
	}

	if after := withoutRoot(treeOf(t, base)); strings.Join(after, " ") != strings.Join(withoutRoot(before), " ") {
		t.Errorf("paths outside root changed:\nbefore %q\nafter  %q", withoutRoot(before), after)
	}
	if got := readString(t, outside); got != "precious" {
		t.Errorf("outside file changed: %q", got)
	}
	// The entries landed inside root instead.
	for _, p := range []string{"escape1", "escape2", "escape3", "escape4", "escape5", "r1/escape6"} {
		if !exists(filepath.Join(root, p)) {
			t.Errorf("%s was not written inside root", p)
		}
	}
}

func withoutRoot(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p != "r1/r2/root" && !strings.HasPrefix(p, "r1/r2/root/") {
			out = append(out, p)
		}
	}
	return out
}

func TestApplyLayerRejectsMalformedWhiteouts(t *testing.T) {
	for _, name := range []string{".wh...", "usr/.wh...", "usr/.wh.", "usr/.wh..wh.plnk.1"} {
		root := t.TempDir()
		apply(t, root, fileE("usr/bin/sh", "sh", 0o755))
		err := ApplyLayer(root, bytes.NewReader(layerBytes(t, whiteoutE(name))))
		if !exists(filepath.Join(root, "usr/bin/sh")) {
			t.Errorf("whiteout %q deleted usr/bin/sh (error %v)", name, err)
		}
		if !strings.Contains(name, "plnk") && err == nil {
			t.Errorf("whiteout %q: no error", name)
		}
	}
}
