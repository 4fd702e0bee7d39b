package main

import (
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/initrd/init/internal/bootcfg"
)

const rebootDelay = 10 * time.Second

// onFail does what berth.onfail asks. It never returns: PID 1 exiting
// would panic the kernel.
func (b *boot) onFail() {
	switch b.cfg.OnFail {
	case bootcfg.OnFailShell:
		b.runShell()
		b.log.Infof("shell exited: rebooting")
		b.reboot(0)
	case bootcfg.OnFailHalt:
		b.log.Infof("powering off")
		b.powerOff()
	default:
		b.log.Infof("rebooting in %s", rebootDelay)
		b.reboot(rebootDelay)
	}
}

func (b *boot) runShell() {
	if _, err := os.Stat(shellPath); err != nil {
		b.log.Infof("onfail=shell but the initrd has no %s: rebooting in %s instead", shellPath, rebootDelay)
		time.Sleep(rebootDelay)
		return
	}
	b.log.Infof("starting %s on the console; exit it to reboot", shellPath)
	cmd := exec.Command(shellPath)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "PS1=berth-initrd# ", "PATH=/bin:/sbin:/usr/bin:/usr/sbin")
	// Its own session with the console as controlling tty, so job
	// control and Ctrl-C work.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Run(); err != nil {
		b.log.Infof("shell: %v", err)
	}
}

func (b *boot) reboot(delay time.Duration) {
	time.Sleep(delay)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	b.hang("reboot", err)
}

func (b *boot) powerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	b.hang("power off", err)
}

// hang is reached only if the reboot system call failed.
func (b *boot) hang(what string, err error) {
	b.log.Infof("%s failed: %v; halting here", what, err)
	for {
		time.Sleep(time.Hour)
	}
}
