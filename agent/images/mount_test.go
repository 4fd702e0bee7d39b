package images_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/images/imagetest"
)

// pullImage pushes img to a fresh loopback registry and pulls it into s.
func pullImage(t *testing.T, s *images.Store, repo string, img v1.Image) images.Image {
	t.Helper()
	host := imagetest.Registry(t)
	imagetest.Push(t, host, repo, img)
	rec, err := s.Pull(testContext(t), host+"/"+repo)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// inRoot runs busybox inside rootfs (chroot) and returns its output.
func inRoot(t *testing.T, rootfs string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("/bin/busybox", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestWhiteoutsHideLowerFiles(t *testing.T) {
	s := openStore(t)
	lower := imagetest.FilesLayer(t, map[string]string{
		"etc/gone": "gone", "etc/kept": "kept", "data/old1": "1", "data/old2": "2",
	})
	top := imagetest.Layer(t,
		imagetest.Entry{Name: "etc/"},
		imagetest.Entry{Name: "etc/.wh.gone"},
		imagetest.Entry{Name: "data/"},
		imagetest.Entry{Name: "data/.wh..wh..opq"},
		imagetest.Entry{Name: "data/new", Body: "new"},
	)
	rec := pullImage(t, s, "wh:v1", imagetest.Image(t, imagetest.BusyboxLayer(t), lower, top))

	// In the layer: a 0:0 character device and an opaque directory.
	topDir := filepath.Join(s.Dir(), "layers", strings.TrimPrefix(rec.Layers[2], "sha256:"))
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(topDir, "etc/gone"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("whiteout is mode %o rdev %d, want a 0:0 char device", st.Mode, st.Rdev)
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(topDir, "data"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque xattr = %q, %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(topDir, ".wh.gone")); !os.IsNotExist(err) {
		t.Fatalf("the .wh. file itself was unpacked: %v", err)
	}

	root, err := s.Mount(testContext(t), rec.Digest, "wh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unmount("wh") })
	if _, err := os.Lstat(filepath.Join(root, "etc/gone")); !os.IsNotExist(err) {
		t.Fatalf("deleted file visible in the rootfs: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/kept")); err != nil || string(b) != "kept" {
		t.Fatalf("etc/kept = %q, %v", b, err)
	}
	if names := dirNames(t, filepath.Join(root, "data")); strings.Join(names, ",") != "new" {
		t.Fatalf("opaque data/ shows %v, want only new", names)
	}
	out, err := inRoot(t, root, "sh", "-c", "cat /etc/kept; ls /data")
	if err != nil || out != "keptnew\n" {
		t.Fatalf("busybox in the rootfs: %q, %v", out, err)
	}
}

func TestMountIsIdempotentAndSurvivesRestart(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	rec := pullImage(t, s, "single:v1", imagetest.BusyboxImage(t, nil)) // one layer
	other := pullImage(t, s, "other:v1", imagetest.BusyboxImage(t, map[string]string{"o": "o"}))

	root, err := s.Mount(ctx, rec.Digest, "c1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unmount("c1") })
	again, err := s.Mount(ctx, rec.Digest, "c1")
	if err != nil || again != root {
		t.Fatalf("second Mount = %q, %v; want %q", again, err, root)
	}
	if n := mountCount(t, root); n != 1 {
		t.Fatalf("%s mounted %d times, want 1", root, n)
	}
	if out, err := inRoot(t, root, "sh", "-c", "echo hi > /tmp/f; cat /tmp/f"); err != nil || out != "hi\n" {
		t.Fatalf("write in the rootfs: %q, %v", out, err)
	}
	if b, err := os.ReadFile(filepath.Join(s.Dir(), "containers/c1/upper/tmp/f")); err != nil || string(b) != "hi\n" {
		t.Fatalf("write did not land in the upper dir: %q, %v", b, err)
	}

	// An agent restart: a new Store on the same directory finds the mount.
	restarted, err := images.Open(s.Dir(), images.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	after, err := restarted.Mount(ctx, rec.Digest, "c1")
	if err != nil || after != root || mountCount(t, root) != 1 {
		t.Fatalf("Mount after restart = %q, %v (mounted %d times)", after, err, mountCount(t, root))
	}
	if _, err := restarted.Mount(ctx, other.Digest, "c1"); err == nil || !strings.Contains(err.Error(), "already has a root filesystem") {
		t.Fatalf("Mount of another image on the same id: %v", err)
	}
	if _, err := s.Mount(ctx, rec.Digest, "../escape"); err == nil {
		t.Fatal("Mount accepted id ../escape")
	}
	if _, err := s.Mount(ctx, "sha256:"+strings.Repeat("0", 64), "c2"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("Mount of an unknown image: %v", err)
	}

	// A busy rootfs is reported, not detached.
	f, err := os.Open(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Unmount("c1")
	f.Close()
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("Unmount of a busy rootfs: %v", err)
	}
	if err := s.Unmount("c1"); err != nil {
		t.Fatal(err)
	}
	if mountCount(t, root) != 0 {
		t.Fatal("still mounted after Unmount")
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "containers/c1")); !os.IsNotExist(err) {
		t.Fatalf("container dir left: %v", err)
	}
	if err := s.Unmount("c1"); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
}

func TestUnpackKeepsOwnersModesLinksAndDevices(t *testing.T) {
	s := openStore(t)
	l := imagetest.Layer(t,
		imagetest.Entry{Name: "usr/", Mode: 0o755},
		imagetest.Entry{Name: "usr/suid", Body: "x", Mode: 0o4755, Uid: 1000, Gid: 1001},
		imagetest.Entry{Name: "usr/hard", Type: tar.TypeLink, Linkname: "usr/suid"},
		imagetest.Entry{Name: "usr/soft", Type: tar.TypeSymlink, Linkname: "/usr/suid", Uid: 7, Gid: 8},
		imagetest.Entry{Name: "null", Type: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666},
		imagetest.Entry{Name: "fifo", Type: tar.TypeFifo, Mode: 0o600},
		imagetest.Entry{Name: "attr", Body: "a", Xattrs: map[string]string{"user.berth": "yes"}},
	)
	rec := pullImage(t, s, "meta:v1", imagetest.Image(t, l))
	dir := filepath.Join(s.Dir(), "layers", strings.TrimPrefix(rec.Layers[0], "sha256:"))

	var suid, hard, soft, null, fifo unix.Stat_t
	for p, st := range map[string]*unix.Stat_t{"usr/suid": &suid, "usr/hard": &hard, "usr/soft": &soft, "null": &null, "fifo": &fifo} {
		if err := unix.Lstat(filepath.Join(dir, p), st); err != nil {
			t.Fatal(err)
		}
	}
	if suid.Mode&0o7777 != 0o4755 || suid.Uid != 1000 || suid.Gid != 1001 {
		t.Errorf("suid file: mode %o uid %d gid %d", suid.Mode&0o7777, suid.Uid, suid.Gid)
	}
	if hard.Ino != suid.Ino {
		t.Errorf("hard link is another inode")
	}
	if soft.Mode&unix.S_IFMT != unix.S_IFLNK || soft.Uid != 7 || soft.Gid != 8 {
		t.Errorf("symlink: mode %o uid %d", soft.Mode, soft.Uid)
	}
	if null.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(null.Rdev) != 1 || unix.Minor(null.Rdev) != 3 || null.Mode&0o777 != 0o666 {
		t.Errorf("device: mode %o rdev %d:%d", null.Mode, unix.Major(null.Rdev), unix.Minor(null.Rdev))
	}
	if fifo.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: mode %o", fifo.Mode)
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "attr"), "user.berth", buf); err != nil || !bytes.Equal(buf[:n], []byte("yes")) {
		t.Errorf("xattr = %q, %v", buf[:n], err)
	}
}

func TestPathEscapesAreRefused(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]imagetest.Entry{
		"dotdot":   {{Name: "../evil", Body: "x"}},
		"absolute": {{Name: "/evil", Body: "x"}},
		"deep":     {{Name: "a/", Mode: 0o755}, {Name: "a/../../evil", Body: "x"}},
		"symlink parent": {
			{Name: "link", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "link/evil", Body: "x"},
		},
		"symlink parent dir": {
			{Name: "link", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "link/sub/", Mode: 0o755},
		},
		"hardlink out": {{Name: "evil", Type: tar.TypeLink, Linkname: "../../../etc/passwd"}},
		"hardlink through symlink": {
			{Name: "link", Type: tar.TypeSymlink, Linkname: "/etc"},
			{Name: "evil", Type: tar.TypeLink, Linkname: "link/passwd"},
		},
		"whiteout through symlink": {
			{Name: "link", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "link/.wh.victim"},
		},
	}
	if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("v"), 0o644); err != nil {
		t.Fatal(err)
	}
	host := imagetest.Registry(t)
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			s := openStore(t)
			img := imagetest.Image(t, imagetest.Layer(t, entries...))
			repo := "esc" + strings.ReplaceAll(name, " ", "")
			imagetest.Push(t, host, repo+":v1", img)
			_, err := s.Pull(testContext(t), host+"/"+repo+":v1")
			if err == nil || !strings.Contains(err.Error(), "escapes the layer root") {
				t.Fatalf("pull: %v, want a path escape error", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			for _, sub := range []string{"layers", "images", "tmp"} {
				if names := dirNames(t, filepath.Join(s.Dir(), sub)); len(names) != 0 {
					t.Errorf("%s/ not empty: %v", sub, names)
				}
			}
			if names := dirNames(t, outside); strings.Join(names, ",") != "victim" {
				t.Errorf("outside dir changed: %v", names)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(s.Dir()), "evil")); !os.IsNotExist(err) {
				t.Errorf("evil written next to the store")
			}
		})
	}
}
