package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Accel is qemu's accelerator: hardware virtualisation or software
// emulation.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
	// AccelAuto decides by what works here (DetectAccel).
	AccelAuto Accel = ""
)

// AccelEnv overrides the decision for every qemu this process starts
// (tests, berth-build run, berth-build cluster): kvm, tcg or auto.
const AccelEnv = "BERTH_ACCEL"

// ParseAccel reads a --accel flag or BERTH_ACCEL value.
func ParseAccel(s string) (Accel, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return AccelAuto, nil
	case "kvm":
		return AccelKVM, nil
	case "tcg":
		return AccelTCG, nil
	}
	return "", fmt.Errorf("accelerator %q: want kvm, tcg or auto", s)
}

// chooseAccel is the decision. An explicit choice wins. Otherwise KVM is
// used only when the device opens AND a guest really runs under it: some
// machines have a /dev/kvm that opens while the CPU exposes no
// virtualisation to it, and a guest then dies in the firmware with "KVM
// internal error". The probe runs only when the device opens. The reason
// says why, for the one log line.
func chooseAccel(explicit Accel, openDevice, probe func() error) (Accel, string) {
	if explicit != AccelAuto {
		return explicit, "chosen by " + AccelEnv + " or --accel"
	}
	if err := openDevice(); err != nil {
		return AccelTCG, fmt.Sprintf("no usable /dev/kvm (%v): software emulation", err)
	}
	if err := probe(); err != nil {
		return AccelTCG, fmt.Sprintf("/dev/kvm opens but a guest cannot run under it (%v): software emulation", err)
	}
	return AccelKVM, "/dev/kvm runs guests"
}

var (
	detectOnce   sync.Once
	detected     Accel
	detectReason string
)

// DetectAccel is the accelerator for qemu started without an explicit
// one: BERTH_ACCEL when set, otherwise what the probe finds, decided once
// per process and logged once with its reason.
func DetectAccel() (Accel, error) {
	explicit, err := ParseAccel(os.Getenv(AccelEnv))
	if err != nil {
		return "", fmt.Errorf("%s: %w", AccelEnv, err)
	}
	if explicit != AccelAuto {
		return explicit, nil
	}
	detectOnce.Do(func() {
		detected, detectReason = chooseAccel(AccelAuto, openKVM, probeKVM)
		if detected == AccelTCG {
			slog.Info("qemu accelerator: tcg", "why", detectReason, "override", AccelEnv+"=kvm|tcg")
		}
	})
	return detected, nil
}

// resolveAccel turns a configured accelerator into the one to use.
func resolveAccel(a Accel) (Accel, error) {
	if a != AccelAuto {
		return ParseAccel(string(a))
	}
	return DetectAccel()
}

func openKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// probeTimeout bounds the probe: OVMF reaches its boot manager in about a
// second under working KVM (20 s or more under emulation); a KVM slower
// than that is no use either.
const probeTimeout = 15 * time.Second

// kvmFailure is what qemu prints when the guest dies under KVM.
const kvmFailure = "KVM internal error"

// probeKVM boots the same firmware the VMs use, on no disk, under KVM and
// waits for its boot manager on the serial console: the guest must leave
// real mode, page and run 64-bit code, which is where broken KVM fails (a
// real-mode boot sector alone runs there).
func probeKVM() error {
	code, vars := firstExisting(firmwareCode), firstExisting(firmwareVars)
	if code == "" || vars == "" {
		return errors.New("OVMF firmware not found in /usr/share/OVMF: install the ovmf package (make deps)")
	}
	dir, err := os.MkdirTemp("", "berth-accel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	varsCopy := filepath.Join(dir, "vars.fd")
	if err := copyFile(vars, varsCopy); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "128", "-nodefaults",
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code,
		"-drive", "if=pflash,format=raw,unit=1,file="+varsCopy)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	result := errors.New("qemu exited before the firmware ran")
	var last string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) != "" {
			last = strings.TrimSpace(line)
		}
		if strings.Contains(line, "BdsDxe") {
			return nil
		}
		if strings.Contains(line, kvmFailure) {
			return errors.New(strings.TrimSpace(line))
		}
	}
	if ctx.Err() != nil {
		result = fmt.Errorf("the firmware did not reach its boot manager within %s", probeTimeout)
	} else if last != "" {
		result = fmt.Errorf("qemu exited: %s", last)
	}
	return result
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o644)
}
