// Package qemu boots berth disk images in qemu with UEFI firmware (OVMF)
// and captures the serial console. It is the one harness shared by the
// end-to-end tests and the developer targets (make boot): tests never glue
// qemu command lines together themselves.
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Firmware locations of Debian's ovmf package.
var (
	firmwareCode = []string{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"}
	firmwareVars = []string{"/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"}
)

// Config describes one VM.
type Config struct {
	Disk      string // the disk image (raw or qcow2, detected by extension)
	MemoryMiB int    // default 1024
	CPUs      int    // default 2
	// StateDir holds the VM's private firmware variables; the same dir
	// across boots keeps the EFI variables, as a real machine would.
	StateDir string
	// Console, when set, also receives the serial output as it arrives.
	Console io.Writer
	// Interactive connects the serial console to this process' terminal.
	Interactive bool
	// NoReboot makes a guest reboot end qemu instead (tests decide reboots).
	NoReboot bool
	// UserNet adds a virtio NIC on qemu's user-mode network.
	UserNet bool
	// Tap attaches a virtio NIC to this existing tap device (looked up in
	// qemu's network namespace), with MAC when given. It replaces UserNet.
	Tap string
	MAC string
	// SerialLog appends the serial console to this file instead of this
	// process' stdio, and ConsoleSocket (optional) also serves it on a unix
	// socket: for VMs that outlive the process that started them.
	SerialLog     string
	ConsoleSocket string
	ExtraArgs     []string
	// Accel is the accelerator; AccelAuto (empty) takes DetectAccel's.
	Accel Accel
}

func firstExisting(paths []string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Args builds qemu's command line; it prepares the firmware variable store
// in StateDir when missing.
func Args(c Config) ([]string, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, errors.New("qemu-system-x86_64 not found: install the qemu-system-x86 package (make deps)")
	}
	code, vars := firstExisting(firmwareCode), firstExisting(firmwareVars)
	if code == "" || vars == "" {
		return nil, errors.New("OVMF firmware not found in /usr/share/OVMF: install the ovmf package (make deps)")
	}
	if _, err := os.Stat(c.Disk); err != nil {
		return nil, fmt.Errorf("disk image: %w", err)
	}
	if c.StateDir == "" {
		return nil, errors.New("qemu: StateDir is required")
	}
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return nil, err
	}
	varsCopy := filepath.Join(c.StateDir, "OVMF_VARS.fd")
	if _, err := os.Stat(varsCopy); err != nil {
		if err := copyFile(vars, varsCopy); err != nil {
			return nil, err
		}
	}
	accel, err := resolveAccel(c.Accel)
	if err != nil {
		return nil, err
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 1024
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	format := "raw"
	if filepath.Ext(c.Disk) == ".qcow2" {
		format = "qcow2"
	}
	args := []string{
		"-machine", "q35", "-m", strconv.Itoa(c.MemoryMiB), "-smp", strconv.Itoa(c.CPUs),
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + varsCopy,
		"-drive", "if=virtio,format=" + format + ",file=" + c.Disk,
		"-display", "none", "-vga", "none",
	}
	if accel == AccelKVM {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg")
	}
	switch {
	case c.SerialLog != "" && c.ConsoleSocket != "":
		// The log keeps everything, whether or not anyone is attached.
		args = append(args, "-chardev", "socket,id=console,server=on,wait=off,path="+c.ConsoleSocket+",logfile="+c.SerialLog+",logappend=on",
			"-serial", "chardev:console", "-monitor", "none")
	case c.SerialLog != "":
		args = append(args, "-chardev", "file,id=console,append=on,path="+c.SerialLog, "-serial", "chardev:console", "-monitor", "none")
	case c.Interactive:
		args = append(args, "-serial", "mon:stdio")
	default:
		args = append(args, "-serial", "stdio", "-monitor", "none")
	}
	switch {
	case c.Tap != "":
		nic := "tap,ifname=" + c.Tap + ",script=no,downscript=no,model=virtio-net-pci"
		if c.MAC != "" {
			nic += ",mac=" + c.MAC
		}
		args = append(args, "-nic", nic)
	case c.UserNet:
		args = append(args, "-nic", "user,model=virtio-net-pci")
	default:
		args = append(args, "-nic", "none")
	}
	if c.NoReboot {
		args = append(args, "-no-reboot")
	}
	return append(args, c.ExtraArgs...), nil
}

// VM is a running qemu.
type VM struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	cond *sync.Cond
	done chan struct{}
	err  error
}

// Start boots the VM in the background, capturing its serial console.
func Start(ctx context.Context, c Config) (*VM, error) {
	args, err := Args(c)
	if err != nil {
		return nil, err
	}
	vm := &VM{done: make(chan struct{})}
	vm.cond = sync.NewCond(&vm.mu)
	vm.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	w := io.Writer(&lockedWriter{vm: vm})
	if c.Console != nil {
		w = io.MultiWriter(w, c.Console)
	}
	vm.cmd.Stdout = w
	vm.cmd.Stderr = w
	if c.Interactive {
		// qemu puts the terminal in raw mode itself; Ctrl-A X quits.
		vm.cmd.Stdin, vm.cmd.Stdout, vm.cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() {
		vm.err = vm.cmd.Wait()
		close(vm.done)
		vm.mu.Lock()
		vm.cond.Broadcast()
		vm.mu.Unlock()
	}()
	return vm, nil
}

type lockedWriter struct{ vm *VM }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.vm.mu.Lock()
	defer w.vm.mu.Unlock()
	w.vm.out.Write(p)
	w.vm.cond.Broadcast()
	return len(p), nil
}

// Output is everything the serial console printed so far.
func (vm *VM) Output() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.out.String()
}

// WaitFor waits until the console output matches re, the VM exits, or the
// timeout passes. It returns the first match.
func (vm *VM) WaitFor(re *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		vm.mu.Lock()
		vm.cond.Broadcast()
		vm.mu.Unlock()
	})
	defer timer.Stop()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for {
		out := vm.out.String()
		if m := re.FindString(out); m != "" {
			return m, nil
		}
		// A guest that died under KVM stays paused in qemu: fail now
		// rather than at the timeout.
		if strings.Contains(out, kvmFailure) {
			return "", fmt.Errorf("the guest died under KVM (set %s=tcg to use software emulation); console's last lines:\n%s", AccelEnv, lastLines(out, 15))
		}
		select {
		case <-vm.done:
			return "", fmt.Errorf("qemu exited (%v) before the console showed %q; console's last lines:\n%s", vm.err, re, lastLines(out, 15))
		default:
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("timed out after %s waiting for %q on the console", timeout, re)
		}
		vm.cond.Wait()
	}
}

// lastLines is the end of a console's output.
func lastLines(text string, n int) string {
	all := strings.Split(strings.TrimRight(text, "\r\n"), "\n")
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return strings.Join(all, "\n")
}

// Wait waits for qemu to exit, killing it after timeout.
func (vm *VM) Wait(timeout time.Duration) error {
	select {
	case <-vm.done:
		return vm.err
	case <-time.After(timeout):
		vm.Kill()
		<-vm.done
		return fmt.Errorf("qemu did not exit within %s; killed", timeout)
	}
}

// Kill stops the VM abruptly, like pulling the power cord.
func (vm *VM) Kill() {
	if vm.cmd.Process != nil {
		vm.cmd.Process.Kill()
	}
}

// Overlay creates a qcow2 overlay over base, optionally larger than base
// (sizeBytes 0 keeps the size), so a test can boot without changing the
// built image and can simulate a bigger disk.
func Overlay(base, path string, sizeBytes int64) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	format := "raw"
	if filepath.Ext(base) == ".qcow2" {
		format = "qcow2"
	}
	args := []string{"create", "-q", "-f", "qcow2", "-b", abs, "-F", format, path}
	if sizeBytes > 0 {
		args = append(args, strconv.FormatInt(sizeBytes, 10))
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create overlay: %s", bytes.TrimSpace(out))
	}
	return nil
}
