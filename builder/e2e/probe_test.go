package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Software emulation boots OVMF, the kernel and systemd in well under two
// minutes on two cores; the limit is generous for a loaded CI machine.
const bootTimeout = 8 * time.Minute

var probeLine = regexp.MustCompile(`(?m)BERTH-E2E ([a-z0-9.-]+)[=:] ?(.*?)\r?$`)

func expectProbe(t *testing.T, got map[string]string, want map[string]string, _ string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("boot %s: %s = %q, want %q", got["boot"], k, got[k], v)
		}
	}
}

// expectFirstBoot checks the first boot of a new disk (bigger than the
// image): read-only squashfs root, ext4 /var grown to the disk, the /etc
// overlay, tmpfs /tmp, /home under /var, no failed unit, the loader
// consumed one of three tries (berth-a+3 -> berth-a+2-1) and
// systemd-bless-boot removed the counter after the good boot.
func expectFirstBoot(t *testing.T, got map[string]string, version string) {
	t.Helper()
	expectProbe(t, got, map[string]string{
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
		"home-marker":  "none",
		"bless-state":  "active",
		"slot":         "a",
		"os-version":   version,
		"failed-units": "",
		"entries":      "berth-a.conf,",
	}, "")
	if len(got["machine-id"]) != 32 {
		t.Errorf("machine-id %q: want 32 hex digits", got["machine-id"])
	}
	if got, want := got["counted-entry"], `\loader\entries\berth-a+2-1.conf`; got != want {
		t.Errorf("LoaderBootCountPath = %q, want %q (the loader must consume one of 3 tries)", got, want)
	}
	// The state partition grew from the image's 256 MiB towards the 3 GiB disk.
	if kb, _ := strconv.Atoi(got["var-size-kb"]); kb < 1000*1024 {
		t.Errorf("/var is %d KiB: the state partition did not grow to the bigger disk", kb)
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
