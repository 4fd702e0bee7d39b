package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/berth-os/berth/builder/qemu"
)

// Software emulation boots OVMF, the kernel and systemd in well under two
// minutes on two cores; the limit is generous for a loaded CI machine.
const bootTimeout = 8 * time.Minute

var probeLine = regexp.MustCompile(`(?m)BERTH-E2E ([a-z0-9.-]+)[=:] ?(.*?)\r?$`)

// probeBoot boots the disk until the probe powers the VM off and returns
// what the probe reported.
func probeBoot(t *testing.T, diskPath, stateDir string) (map[string]string, string) {
	t.Helper()
	vm, err := qemu.Start(context.Background(), qemu.Config{Disk: diskPath, StateDir: stateDir, NoReboot: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- serial console of a boot ---\n%s", vm.Output())
		}
	})
	start := time.Now()
	if _, err := vm.WaitFor(regexp.MustCompile(`Linux version`), bootTimeout); err != nil {
		t.Fatalf("%v\n--- serial console ---\n%s", err, vm.Output())
	}
	toKernel := time.Since(start)
	if _, err := vm.WaitFor(regexp.MustCompile(`BERTH-E2E done`), bootTimeout); err != nil {
		t.Fatalf("%v\n--- serial console ---\n%s", err, vm.Output())
	}
	if err := vm.Wait(2 * time.Minute); err != nil {
		t.Errorf("VM did not power off cleanly: %v", err)
	}
	out := vm.Output()
	got := map[string]string{}
	for _, m := range probeLine.FindAllStringSubmatch(out, -1) {
		got[m[1]] = m[2]
	}
	t.Logf("boot %s: %.1f s of wall time to the kernel (firmware and loader), %.1f s in all; guest clock: %s",
		got["boot"], toKernel.Seconds(), time.Since(start).Seconds(), bootTimes(got))
	return got, out
}

func expectProbe(t *testing.T, got map[string]string, want map[string]string, _ string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("boot %s: %s = %q, want %q", got["boot"], k, got[k], v)
		}
	}
}

func TestE2EBoot(t *testing.T) {
	res := probeImage(t)
	dir := t.TempDir()
	// Boot an overlay bigger than the image, as on a larger real disk: the
	// initrd must grow the state partition and its filesystem.
	overlay := filepath.Join(dir, "disk.qcow2")
	const diskSize = 3 << 30
	if err := qemu.Overlay(res.Raw, overlay, diskSize); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "vm")

	first, console := probeBoot(t, overlay, stateDir)
	expectProbe(t, first, map[string]string{
		"boot":         "1",
		"root-ro":      "yes",
		"root-fstype":  "squashfs",
		"var-fstype":   "ext4",
		"etc-fstype":   "overlay",
		"tmp-fstype":   "tmpfs",
		"home-dir":     "/var/home",
		"var-marker":   "none",
		"etc-marker":   "none",
		"root-marker":  "none",
		"bless-state":  "active",
		"slot":         "a",
		"os-version":   res.Manifest.Version,
		"failed-units": "",
		"entries":      "berth-a.conf,",
	}, console)
	if len(first["machine-id"]) != 32 {
		t.Errorf("machine-id %q: want 32 hex digits", first["machine-id"])
	}
	// The loader consumed one try (berth-a+3 -> berth-a+2-1) and
	// systemd-bless-boot removed the counter after the good boot.
	if got, want := first["counted-entry"], `\loader\entries\berth-a+2-1.conf`; got != want {
		t.Errorf("LoaderBootCountPath = %q, want %q (the loader must consume one of 3 tries)", got, want)
	}
	// The state partition grew from the image's 256 MiB towards the 3 GiB disk.
	if kb, _ := strconv.Atoi(first["var-size-kb"]); kb < 1000*1024 {
		t.Errorf("/var is %d KiB: the state partition did not grow to the bigger disk", kb)
	}

	second, console := probeBoot(t, overlay, stateDir)
	expectProbe(t, second, map[string]string{
		"boot":        "2",
		"root-ro":     "yes",
		"var-marker":  "boot-1",
		"etc-marker":  "boot-1",
		"root-marker": "boot-1",
		"home-marker": "boot-1",
		"machine-id":  first["machine-id"],
		"entries":     "berth-a.conf,",
		"bless-state": "not-counted",
		"var-size-kb": first["var-size-kb"],
	}, console)

	if os.Getenv("BERTH_E2E_KEEP") != "" {
		t.Logf("kept %s", overlay)
	}
}

// bootTimes renders systemd's boot timestamps (microseconds): firmware and
// loader are counted back from the kernel's start, the rest forward.
func bootTimes(got map[string]string) string {
	us := func(k string) float64 {
		v, _ := strconv.ParseFloat(got["time-"+k+"-us"], 64)
		return v / 1e6
	}
	return fmt.Sprintf("kernel+initrd %.1fs, userspace %.1fs, multi-user reached %.1fs after the kernel started",
		us("userspace"), us("multi-user")-us("userspace"), us("multi-user"))
}
