package qemu

import (
	"errors"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestChooseAccel(t *testing.T) {
	noDevice := errors.New("open /dev/kvm: no such file or directory")
	dies := errors.New("KVM internal error. Suberror: 1")
	tests := []struct {
		name      string
		explicit  Accel
		device    error
		probe     error
		want      Accel
		probed    bool
		reasonHas string
	}{
		{"device missing", AccelAuto, noDevice, nil, AccelTCG, false, "no usable /dev/kvm"},
		{"device opens, guest dies", AccelAuto, nil, dies, AccelTCG, true, "KVM internal error"},
		{"device opens, guest runs", AccelAuto, nil, nil, AccelKVM, true, "runs guests"},
		{"override tcg on a working KVM", AccelTCG, nil, nil, AccelTCG, false, "chosen by"},
		{"override kvm without a device", AccelKVM, noDevice, dies, AccelKVM, false, "chosen by"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			probed := false
			got, reason := chooseAccel(tc.explicit,
				func() error { return tc.device },
				func() error { probed = true; return tc.probe })
			if got != tc.want {
				t.Errorf("accelerator %q, want %q (reason %q)", got, tc.want, reason)
			}
			if probed != tc.probed {
				t.Errorf("probe ran: %v, want %v", probed, tc.probed)
			}
			if !strings.Contains(reason, tc.reasonHas) {
				t.Errorf("reason %q lacks %q", reason, tc.reasonHas)
			}
		})
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "KVM": AccelKVM, " tcg ": AccelTCG} {
		if got, err := ParseAccel(in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseAccel("hvf"); err == nil || !strings.Contains(err.Error(), "want kvm, tcg or auto") {
		t.Errorf("ParseAccel(hvf): %v, want a clear refusal", err)
	}
}

// The override reaches qemu's command line, and a bad one is refused
// before anything starts.
func TestAccelOverrideInArgs(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	if firstExisting(firmwareCode) == "" {
		t.Skip("no OVMF")
	}
	disk := t.TempDir() + "/disk.raw"
	if err := copyFile("/dev/null", disk); err != nil {
		t.Fatal(err)
	}
	t.Setenv(AccelEnv, "tcg")
	args, err := Args(Config{Disk: disk, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(args, "-accel"); i < 0 || args[i+1] != "tcg" || slices.Contains(args, "host") {
		t.Errorf("BERTH_ACCEL=tcg: qemu arguments %q", args)
	}
	args, err = Args(Config{Disk: disk, StateDir: t.TempDir(), Accel: AccelKVM})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(args, "-accel"); i < 0 || args[i+1] != "kvm" {
		t.Errorf("Accel kvm: qemu arguments %q", args)
	}
	t.Setenv(AccelEnv, "fast")
	if _, err := Args(Config{Disk: disk, StateDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), AccelEnv) {
		t.Errorf("BERTH_ACCEL=fast: %v, want an error naming %s", err, AccelEnv)
	}
}

// A guest that died under KVM fails the wait at once, with the console.
func TestWaitForFailsFastOnKVMError(t *testing.T) {
	vm := &VM{done: make(chan struct{})}
	vm.cond = sync.NewCond(&vm.mu)
	vm.out.WriteString("BdsDxe: starting\r\nKVM internal error. Suberror: 1\r\nRAX=0000\r\n")
	start := time.Now()
	_, err := vm.WaitFor(regexp.MustCompile(`Linux version`), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "died under KVM") || !strings.Contains(err.Error(), "RAX=0000") {
		t.Fatalf("WaitFor: %v, want the KVM failure with the console's last lines", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("WaitFor took %s: it must not wait for the timeout", d)
	}
	// A qemu that exited: at once too, with what it printed.
	vm = &VM{done: make(chan struct{}), err: errors.New("exit status 1")}
	vm.cond = sync.NewCond(&vm.mu)
	vm.out.WriteString("qemu-system-x86_64: -drive: could not open disk\n")
	close(vm.done)
	if _, err := vm.WaitFor(regexp.MustCompile(`Linux version`), time.Minute); err == nil || !strings.Contains(err.Error(), "could not open disk") {
		t.Errorf("WaitFor on an exited qemu: %v", err)
	}
}
