package nodeconfig

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/builder/seed"
)

// skipWithoutVFAT skips when this kernel cannot mount FAT (a container
// host without the module); what came before the mount was still checked.
func skipWithoutVFAT(t *testing.T, stderr string) {
	t.Helper()
	if strings.Contains(stderr, "mount read-only: no such device") {
		t.Skip("this kernel has no vfat: the mount itself is covered by the qemu e2e tests")
	}
}

// loopDevice attaches img read-only to a loop device for the test.
func loopDevice(t *testing.T, img string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mount")
	}
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", img).Output()
	if err != nil {
		t.Skipf("losetup: %v (no loop devices here)", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func uniqueLabel(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "BT" + strings.ToUpper(hex.EncodeToString(b))
}

// The seed disk, written by builder/seed and found by its label, wins over
// the ESP, and is mounted only while it is read.
func TestSeedDiskByLabel(t *testing.T) {
	root, esp := testRoot(t)
	mustWrite(t, filepath.Join(esp, ESPFile), "hostname: from-esp\n")
	label := uniqueLabel(t)
	img := filepath.Join(t.TempDir(), "seed.img")
	if err := seed.WriteWithLabel(img, label, []byte("hostname: from-seed\n")); err != nil {
		t.Fatal(err)
	}
	dev := loopDevice(t, img)

	r := runMain(t, root, esp, "--seed-dev", "auto", "--seed-label", label, "--seed-wait", "200ms")
	// Found by its label, whether or not it can be mounted here.
	if !strings.Contains(r.stderr+r.stdout, dev) {
		t.Fatalf("seed %s not found by label %s:\n%s%s", dev, label, r.stdout, r.stderr)
	}
	skipWithoutVFAT(t, r.stderr)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "from-seed\n" {
		t.Errorf("hostname %q: the seed disk did not win", got)
	}
	if s := summary(t, root); s.Source != "seed "+dev+" "+SeedFile {
		t.Errorf("source %q", s.Source)
	}
	// Nothing stays mounted, no mount point is left.
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), root) {
		t.Error("the seed is still mounted")
	}
	if ents, _ := filepath.Glob(filepath.Join(root, "run", "berth-seed-*")); len(ents) != 0 {
		t.Errorf("mount points left: %v", ents)
	}
}

// A seed filesystem without node.yaml is reported and the ESP is used.
func TestSeedDiskWithoutFile(t *testing.T) {
	if _, err := exec.LookPath("mkfs.vfat"); err != nil {
		t.Skip("mkfs.vfat not installed")
	}
	root, esp := testRoot(t)
	mustWrite(t, filepath.Join(esp, ESPFile), "hostname: from-esp\n")
	img := filepath.Join(t.TempDir(), "empty.img")
	if out, err := exec.Command("mkfs.vfat", "-C", "-n", "EMPTY", img, "1024").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v: %s", err, out)
	}
	dev := loopDevice(t, img)
	r := runMain(t, root, esp, "--seed-dev", dev, "--seed-label", "EMPTY")
	skipWithoutVFAT(t, r.stderr)
	if r.code != 0 || !strings.Contains(r.stderr, "ERROR EMPTY:/node.yaml: seed disk "+dev+" has no /node.yaml") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "from-esp\n" {
		t.Errorf("hostname %q", got)
	}
}
