package ext4fs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func mkfs(t *testing.T, path string, sizeMiB int64, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skipf("mke2fs not installed: %v", err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, sizeMiB<<20); err != nil {
		t.Fatal(err)
	}
	args = append([]string{"-q", "-F", "-t", "ext4"}, append(args, path)...)
	if out, err := exec.Command("mke2fs", args...).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		blockSize uint64
		sizeMiB   int64
		flags     string
	}{
		{4096, 64, "64bit"},
		{1024, 32, "^64bit"},
	} {
		img := filepath.Join(dir, "fs.img")
		mkfs(t, img, c.sizeMiB, "-b", strconv.FormatUint(c.blockSize, 10), "-O", c.flags, "-L", "BERTH-STATE")
		sb, err := ProbeFile(img)
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(c.sizeMiB<<20) / c.blockSize
		if sb.BlockSize != c.blockSize || sb.BlocksCount != want || sb.Label != "BERTH-STATE" || sb.Bytes() != uint64(c.sizeMiB<<20) {
			t.Errorf("%s %d: superblock %+v, want %d blocks of %d labelled BERTH-STATE", c.flags, c.blockSize, sb, want, c.blockSize)
		}
	}

	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ProbeFile(blank); !errors.Is(err, ErrNotExt) {
		t.Errorf("blank: error = %v, want ErrNotExt", err)
	}
	short := filepath.Join(dir, "short.img")
	if err := os.WriteFile(short, make([]byte, 1500), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ProbeFile(short); err == nil || errors.Is(err, ErrNotExt) {
		t.Errorf("short file: error = %v, want a read error", err)
	}
}

// TestResizeOnline grows a loop-mounted filesystem the way /init grows the
// state partition after enlarging it. It needs root and loop devices.
func TestResizeOnline(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mkfs(t, img, 32, "-b", "4096")
	if err := os.Truncate(img, 48<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(loop, mnt, "ext4", 0, ""); err != nil {
		t.Skipf("mount ext4 loop: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	})
	if err := Resize(mnt, (48<<20)/4096); err != nil {
		if errors.Is(err, unix.EPERM) {
			// Containers often drop CAP_SYS_RESOURCE, which the ioctl needs.
			t.Skipf("no CAP_SYS_RESOURCE here: %v", err)
		}
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	sb, err := ProbeFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Bytes() != 48<<20 {
		t.Fatalf("after resize the filesystem has %d bytes, want %d", sb.Bytes(), 48<<20)
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn after resize: %v\n%s", err, out)
	}
	if err := Resize(dir, 1); err == nil {
		t.Error("resizing a non-ext4 directory succeeded")
	}
}
