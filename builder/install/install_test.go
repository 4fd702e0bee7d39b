package install

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests write to real loop devices: they need root and a working
// losetup, and skip otherwise.

func needLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	for _, tool := range []string{"losetup", "sgdisk", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	f := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", f).CombinedOutput()
	if err != nil {
		t.Skipf("losetup not permitted here: %s", strings.TrimSpace(string(out)))
	}
	exec.Command("losetup", "-d", strings.TrimSpace(string(out))).Run()
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// loop attaches file to a loop device, detached when the test ends.
func loop(t *testing.T, file string, extra ...string) string {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", append(append([]string{"-f", "--show"}, extra...), file)...))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func sparseFile(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// testImage makes a GPT image of random bytes with three partitions, so a
// byte written to the wrong place changes its hash.
func testImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run(t, "sgdisk", "-Z", p) // zap leaves the random bytes between the tables alone
	run(t, "sgdisk", "-o", "-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:ESP",
		"-n", "2:0:+4M", "-c", "2:BERTH-A", "-n", "3:0:0", "-c", "3:BERTH-STATE", p)
	return p
}

func fileSHA(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// partitions lists sgdisk -p's partition lines (number, start, end, type, name).
func partitions(t *testing.T, dev string) []string {
	t.Helper()
	var rows []string
	for _, line := range strings.Split(run(t, "sgdisk", "-p", dev), "\n") {
		if regexp.MustCompile(`^\s+\d+\s+\d+\s+\d+`).MatchString(line) {
			rows = append(rows, strings.Join(strings.Fields(line), " "))
		}
	}
	return rows
}

func TestInstallWritesVerifiesAndMovesBackupGPT(t *testing.T) {
	needLoop(t)
	const imgSize, diskSize = 24 << 20, 64 << 20
	img := testImage(t, imgSize)
	backing := sparseFile(t, "disk", diskSize)
	dev := loop(t, backing)

	res, err := Install(context.Background(), Options{Target: dev, Image: img})
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if !res.BackupGPTMoved || res.Overwrote != "" || res.ImageBytes != imgSize || res.DiskBytes != diskSize {
		t.Errorf("result %+v: want backup moved, nothing overwritten, sizes %d/%d", res, imgSize, diskSize)
	}
	if v := run(t, "sgdisk", "-v", dev); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v on the installed disk:\n%s", v)
	}
	got, want := partitions(t, dev), partitions(t, img)
	if len(want) != 3 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("partitions on disk:\n%s\nin image:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// sgdisk -e rewrote only the primary header and the new backup; every
	// partition's bytes are the image's.
	first := int64(2048 * 512)
	last := int64(imgSize - 1<<20)
	if g, w := rangeSHA(t, dev, first, last), rangeSHA(t, img, first, last); g != w {
		t.Errorf("partition data differs: disk %s, image %s", g[:12], w[:12])
	}
	imgSum := fileSHA(t, img, imgSize)
	if res.SHA256 != imgSum {
		t.Errorf("reported sha256 %s, image is %s", res.SHA256, imgSum)
	}
}

// TestPlainCopyLeavesBackupMisplaced shows what the sgdisk -e step fixes:
// without it, the same image on a larger disk fails sgdisk -v.
func TestPlainCopyLeavesBackupMisplaced(t *testing.T) {
	needLoop(t)
	img := testImage(t, 24<<20)
	backing := sparseFile(t, "disk", 64<<20)
	copyInto(t, img, backing)
	dev := loop(t, backing)
	if v, _ := exec.Command("sgdisk", "-v", dev).CombinedOutput(); strings.Contains(string(v), "No problems found") {
		t.Fatalf("expected sgdisk -v to complain about a plain copy, got:\n%s", v)
	}
}

// partitionNode returns a device node for partition n of the loop device
// dev, made with mknod when /dev is not managed by udev or devtmpfs (as in
// some containers).
func partitionNode(t *testing.T, dev string, n int) string {
	t.Helper()
	name := fmt.Sprintf("%sp%d", filepath.Base(dev), n)
	var mm string
	for i := range 50 {
		if i == 10 {
			// Some kernels (VMs, containers) skip the scan losetup -P asks for.
			exec.Command("partx", "-a", dev).Run()
		}
		if _, err := os.Stat("/dev/" + name); err == nil {
			return "/dev/" + name
		}
		if b, err := os.ReadFile("/sys/class/block/" + name + "/dev"); err == nil {
			mm = strings.TrimSpace(string(b))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(mm, "%d:%d", &major, &minor); err != nil {
		t.Skipf("the kernel shows no partition %s", name)
	}
	node := filepath.Join(t.TempDir(), name)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))); err != nil {
		t.Skipf("mknod %s: %v", node, err)
	}
	return node
}

func rangeSHA(t *testing.T, path string, from, to int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, from, to-from)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func copyInto(t *testing.T, src, dst string) {
	t.Helper()
	run(t, "dd", "if="+src, "of="+dst, "bs=1M", "conv=notrunc", "status=none")
}

func TestInstallRefuses(t *testing.T) {
	needLoop(t)
	img := testImage(t, 24<<20)
	qcow := filepath.Join(t.TempDir(), "img.qcow2")
	if _, err := exec.LookPath("qemu-img"); err == nil {
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", img, qcow)
	}

	type target struct{ dev, backing string }
	blank := func(t *testing.T) target {
		b := sparseFile(t, "disk", 64<<20)
		return target{loop(t, b), b}
	}
	cases := []struct {
		name  string
		setup func(t *testing.T) target
		image string
		force bool
		want  string
	}{
		{name: "regular file", image: img, want: "is not a block device",
			setup: func(t *testing.T) target { b := sparseFile(t, "f", 64<<20); return target{b, b} }},
		{name: "too small", image: img, want: "is too small: 16 MiB, the image needs 24 MiB",
			setup: func(t *testing.T) target { b := sparseFile(t, "d", 16<<20); return target{loop(t, b), b} }},
		{name: "partition", image: img, want: "is a partition (of /dev/loop",
			setup: func(t *testing.T) target {
				b := sparseFile(t, "d", 64<<20)
				copyInto(t, img, b)
				dev := loop(t, b, "-P")
				return target{partitionNode(t, dev, 2), b}
			}},
		{name: "filesystem", image: img, want: "holds data (a ext4 signature (LABEL=old)); pass --force",
			setup: func(t *testing.T) target {
				tg := blank(t)
				run(t, "mkfs.ext4", "-q", "-L", "old", tg.dev)
				return tg
			}},
		{name: "partition table", image: img, want: "holds data (a GPT partition table); pass --force",
			setup: func(t *testing.T) target {
				tg := blank(t)
				copyInto(t, img, tg.backing)
				return tg
			}},
		{name: "mounted", image: img, force: true, want: "is mounted on ",
			setup: func(t *testing.T) target {
				tg := blank(t)
				run(t, "mkfs.ext4", "-q", tg.dev)
				mnt := t.TempDir()
				run(t, "mount", tg.dev, mnt)
				t.Cleanup(func() { exec.Command("umount", mnt).Run() })
				return tg
			}},
		{name: "qcow2 image", image: qcow, want: "is a qcow2 file; install the .raw image", setup: blank},
		{name: "not a disk image", image: "install.go", want: "is not a raw disk image", setup: blank},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.image == qcow {
				if _, err := os.Stat(qcow); err != nil {
					t.Skip("qemu-img not installed")
				}
			}
			tg := c.setup(t)
			before := fileSHA(t, tg.backing, 16<<20)
			_, err := Install(context.Background(), Options{Target: tg.dev, Image: c.image, Force: c.force})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Install: got error %v, want one containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if after := fileSHA(t, tg.backing, 16<<20); after != before {
				t.Errorf("the refused target was modified")
			}
		})
	}
}

func TestInstallForceOverwritesFilesystem(t *testing.T) {
	needLoop(t)
	img := testImage(t, 24<<20)
	backing := sparseFile(t, "disk", 24<<20) // exactly the image's size: no backup move needed
	dev := loop(t, backing)
	run(t, "mkfs.ext4", "-q", "-L", "old", dev)
	declined := Options{Target: dev, Image: img, Force: true, Confirm: func(string) bool { return false }}
	if _, err := Install(context.Background(), declined); err != ErrDeclined {
		t.Fatalf("declined install: %v, want ErrDeclined", err)
	}
	var summary string
	o := Options{Target: dev, Image: img, Force: true, Confirm: func(s string) bool { summary = s; return true }}
	res, err := Install(context.Background(), o)
	if err != nil {
		t.Fatalf("Install --force: %v", err)
	}
	if !strings.Contains(summary, "destroying a ext4 signature") || !strings.Contains(res.Overwrote, "ext4") {
		t.Errorf("confirmation %q / overwrote %q should name the ext4 filesystem", summary, res.Overwrote)
	}
	if res.BackupGPTMoved {
		t.Errorf("backup GPT moved on a disk of the image's size")
	}
	if got, want := fileSHA(t, backing, 24<<20), fileSHA(t, img, 24<<20); got != want {
		t.Errorf("disk content %s differs from image %s", got[:12], want[:12])
	}
	if out := run(t, "blkid", "-p", "-o", "export", dev); !strings.Contains(out, "PTTYPE=gpt") {
		t.Errorf("blkid after install: %s", out)
	}
}
