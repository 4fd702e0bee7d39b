package e2e

import (
	"context"
	"crypto/ed25519"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/builder/qemu"
	"github.com/berth-os/berth/updater/payload"
)

// stepScript is sourced by the probe on every probed boot; $boot counts
// probed boots. It drives the update scenario from inside the guest.
const stepScript = `
E=/run/e2e
entries() { ls /efi/loader/entries | tr '\n' ','; }
case "$boot" in
1)
	say v1-entries=$(entries)
	# A payload with one flipped byte in the slot blob is refused, and
	# nothing on the ESP or in the passive slot changes.
	cp -a $E/v2.oci /tmp/tampered.oci
	blob=$(ls -S /tmp/tampered.oci/blobs/sha256/* | head -1)
	printf '\377' | dd of="$blob" bs=1 seek=4096 conv=notrunc status=none
	berth-update apply /tmp/tampered.oci > /tmp/out 2>&1; say tampered-exit=$?
	say tampered-error=$(tail -1 /tmp/out)
	rm -rf /tmp/tampered.oci
	berth-update apply $E/wrongkey.oci > /tmp/out 2>&1; say wrongkey-exit=$?
	say wrongkey-error=$(tail -1 /tmp/out)
	say after-refusals-entries=$(entries)
	say after-refusals-other=$(berth-update status --json | sed -n 's/.*"other".*"state": *"\([a-z-]*\)".*/\1/p' | head -1)
	berth-update apply --dry-run $E/v2.oci > /tmp/out 2>&1; say dryrun-exit=$?
	say dryrun-entries=$(entries)
	# Power loss during apply: SIGKILL at several points. The booted,
	# blessed entry must stay, and no half-written entry may appear.
	for d in 0.2 0.6 1.5 3; do
		berth-update apply $E/v2.oci > /dev/null 2>&1 & pid=$!
		sleep $d; kill -9 $pid 2>/dev/null; wait $pid; rc=$?
		say kill-$d=rc:$rc,entries:$(entries)
	done
	berth-update apply $E/v2.oci > /tmp/out 2>&1; say apply-v2-exit=$?
	say apply-v2-output=$(tail -1 /tmp/out)
	say after-v2-entries=$(entries)
	;;
2)
	berth-update apply $E/v2.oci > /tmp/out 2>&1; say same-exit=$?
	say same-error=$(tail -1 /tmp/out)
	berth-update apply $E/v3.oci > /tmp/out 2>&1; say apply-v3-exit=$?
	say after-v3-entries=$(entries)
	;;
3)
	berth-update apply $E/v2.oci > /tmp/out 2>&1; say downgrade-exit=$?
	say downgrade-error=$(tail -1 /tmp/out)
	berth-update apply $E/v5.oci > /tmp/out 2>&1; say apply-v5-exit=$?
	;;
6)
	berth-update apply $E/v5.oci > /tmp/out 2>&1; say reapply-v5-exit=$?
	say reapply-entries=$(entries)
	;;
esac
`

// TestE2EUpdate boots v1, updates to v2 (slot B) and v3 (slot A) through
// signed payloads on an attached disk, then lets a v5 whose init dies
// roll back by itself (0.4.0, whose health check fails, is rolled back
// on a cluster node by TestE2ECluster's canary-rollback).
func TestE2EUpdate(t *testing.T) {
	requireE2E(t)
	rel := releases(t)
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	if err := payload.GenerateKey(other+".key", other+".pub"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	v1 := rel.versions["0.1.0"].res
	for _, v := range []string{"0.2.0", "0.3.0", "0.5.0"} {
		// Hard links: the cluster test boots the same payloads.
		name := "v" + strings.Split(v, ".")[1] + ".oci"
		if out, err := exec.Command("cp", "-al", rel.versions[v].payload, filepath.Join(data, name)).CombinedOutput(); err != nil {
			t.Fatalf("link payload %s: %v: %s", v, err, out)
		}
	}
	key := rel.key
	// v2 again, signed by a key the image does not trust.
	resign(t, filepath.Join(data, "v2.oci"), key+".pub", other+".key", filepath.Join(data, "wrongkey.oci"))
	if err := os.WriteFile(filepath.Join(data, "step.sh"), []byte(stepScript), 0o755); err != nil {
		t.Fatal(err)
	}
	dataImg := filepath.Join(dir, "data.img")
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-L", "E2E", "-d", data, dataImg, "1G").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}

	// A disk bigger than the image, as a real one: the initrd must grow
	// the state partition and its filesystem on the first boot.
	overlay := filepath.Join(dir, "disk.qcow2")
	const diskSize = 3 << 30
	if err := qemu.Overlay(v1.Raw, overlay, diskSize); err != nil {
		t.Fatal(err)
	}
	vmDir := filepath.Join(dir, "vm")
	extra := []string{"-drive", "if=virtio,format=raw,readonly=on,file=" + dataImg}
	boot := func(name string) map[string]string {
		t.Helper()
		got, _ := updateBoot(t, overlay, vmDir, extra, name)
		return got
	}

	// 1: the first boot of a new disk (what TestE2EBoot checked on a boot
	// of its own): read-only root, writable state grown to the disk, the
	// persistent places, the loader's try consumed and the entry blessed.
	b1 := boot("v1")
	expectFirstBoot(t, b1, "0.1.0")
	// Then, from slot A, v1 refuses bad payloads, survives kills, installs v2.
	expectProbe(t, b1, map[string]string{
		"slot": "a", "os-version": "0.1.0", "tampered-exit": "1", "wrongkey-exit": "1",
		"after-refusals-entries": "berth-a.conf,", "dryrun-exit": "0", "dryrun-entries": "berth-a.conf,",
		"apply-v2-exit": "0", "after-v2-entries": "berth-a.conf,berth-b+3.conf,",
	}, "")
	for _, d := range []string{"0.2", "0.6", "1.5", "3"} {
		// Killed: only the blessed A entry; or the apply had finished.
		t.Logf("SIGKILL %ss into apply: %s", d, b1["kill-"+d])
		if v := b1["kill-"+d]; !strings.HasSuffix(v, "entries:berth-a.conf,") && v != "rc:0,entries:berth-a.conf,berth-b+3.conf," {
			t.Errorf("after SIGKILL at %ss: %s", d, v)
		}
	}
	t.Logf("refusals: tampered: %s; wrong key: %s", b1["tampered-error"], b1["wrongkey-error"])

	// 2: v2 from slot B, blessed; what the first boot left in /var, /etc,
	// /root and /home and the machine-id survived the update; installs v3
	// into slot A.
	b2 := boot("v2")
	expectProbe(t, b2, map[string]string{
		"boot": "2", "root-ro": "yes", "var-marker": "boot-1", "etc-marker": "boot-1", "root-marker": "boot-1",
		"home-marker": "boot-1", "machine-id": b1["machine-id"], "var-size-kb": b1["var-size-kb"], "failed-units": "",
	}, "")
	expectProbe(t, b2, map[string]string{
		"slot": "b", "os-version": "0.2.0", "bless-state": "active", "same-exit": "1", "counted-entry": `\loader\entries\berth-b+2-1.conf`,
		"apply-v3-exit": "0", "after-v3-entries": "berth-a+3.conf,berth-b.conf,",
	}, "")

	// 3: v3 from slot A; a downgrade is refused; installs v5.
	b3 := boot("v3")
	expectProbe(t, b3, map[string]string{"slot": "a", "os-version": "0.3.0", "downgrade-exit": "1", "apply-v5-exit": "0"}, "")

	// 4: v5's init dies on each of its tries; v3 boots again and says so.
	// (An OS whose health check fails is rolled back the same way, with
	// the check's output as the reason: TestE2ECluster's canary-rollback
	// proves that on a cluster node, so this test does not boot 0.4.0's
	// three failing tries a second time.)
	b4 := boot("v5 rollback")
	expectProbe(t, b4, map[string]string{"slot": "a", "os-version": "0.3.0"}, "")
	// A boot of the blessed entry is not counted; the state written by the
	// probed boot before it is there.
	expectProbe(t, b4, map[string]string{"bless-state": "not-counted", "var-marker": "boot-3", "root-ro": "yes"}, "")
	if s := b4["update-status"]; !strings.Contains(s, "rolled back from 0.5.0 to 0.3.0") {
		t.Errorf("status after the v5 rollback: %s", s)
	}

	// 5: the power is cut while v5 is being written again; v3 still boots
	// and a new apply succeeds.
	cutPowerDuringApply(t, overlay, vmDir, extra, dataImg, data)
	b6 := boot("after power cut")
	expectProbe(t, b6, map[string]string{"slot": "a", "os-version": "0.3.0", "reapply-v5-exit": "0"}, "")
}

// updateBoot starts the VM and waits for the probe's "done"; reboots in
// between (health failures, kernel panics) happen inside one qemu run.
func updateBoot(t *testing.T, disk, vmDir string, extra []string, name string) (map[string]string, string) {
	t.Helper()
	vm, err := qemu.Start(context.Background(), qemu.Config{Disk: disk, StateDir: vmDir, ExtraArgs: extra})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	start := time.Now()
	if _, err := vm.WaitFor(regexp.MustCompile(`BERTH-E2E done`), 2*bootTimeout); err != nil {
		t.Fatalf("%s: %v\n--- serial console ---\n%s", name, err, vm.Output())
	}
	if err := vm.Wait(2 * time.Minute); err != nil {
		t.Errorf("%s: VM did not power off: %v", name, err)
	}
	out := vm.Output()
	got := map[string]string{}
	for _, m := range probeLine.FindAllStringSubmatch(out, -1) {
		got[m[1]] = m[2]
	}
	t.Logf("%s: probed boot %s after %.0fs (%d boots of the kernel); last boot's guest clock: %s", name, got["boot"], time.Since(start).Seconds(), strings.Count(out, "Linux version"), bootTimes(got))
	if t.Failed() {
		t.Logf("--- serial console (%s) ---\n%s", name, out)
	}
	return got, out
}

// cutPowerDuringApply boots, starts an apply of v5 by a one-off step and
// kills qemu once the slot write is under way.
func cutPowerDuringApply(t *testing.T, disk, vmDir string, extra []string, dataImg, data string) {
	t.Helper()
	// The probe sources step.sh by probed-boot number; boot 5 is this one.
	// berth-update's progress goes straight to the console.
	step := stepScript + "\ncase \"$boot\" in 5) berth-update apply $E/v5.oci; say not-cut=1;; esac\n"
	if err := os.WriteFile(filepath.Join(data, "step.sh"), []byte(step), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(dataImg)
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-L", "E2E", "-d", data, dataImg, "1G").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	vm, err := qemu.Start(context.Background(), qemu.Config{Disk: disk, StateDir: vmDir, ExtraArgs: extra})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitFor(regexp.MustCompile(`writing slot: [1-9]0%`), 2*bootTimeout); err != nil {
		vm.Kill()
		t.Fatalf("power cut: %v\n%s", err, vm.Output())
	}
	vm.Kill()
	vm.Wait(time.Minute)
	t.Logf("power cut during the slot write")
}

// resign writes src's payload again, signed with another key.
func resign(t *testing.T, src, trustedPub, keyPath, dst string) {
	t.Helper()
	pub, err := payload.LoadPublicKey(trustedPub)
	if err != nil {
		t.Fatal(err)
	}
	p, err := payload.Open(context.Background(), src, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	parts := payload.Parts{Slot: filepath.Join(dir, "slot"), Kernel: filepath.Join(dir, "kernel"), Initrd: filepath.Join(dir, "initrd")}
	for path, open := range map[string]func() (io.ReadCloser, error){parts.Slot: p.Slot, parts.Kernel: p.Kernel, parts.Initrd: p.Initrd} {
		rc, err := open()
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		f.Close()
	}
	key, err := payload.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	img, _, err := payload.Create(p.Manifest, parts, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := payload.WriteLayout(dst, img, p.Manifest.Version); err != nil {
		t.Fatal(err)
	}
}
