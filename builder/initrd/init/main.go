// Command init is the berth initrd's /init: the kernel runs it as PID 1 from
// the initramfs. It loads the initrd's kernel modules, finds the booted
// slot partition, mounts it read-only as the new root, mounts (formatting
// and growing it when needed) the state partition on /var, lays a
// persistent overlay over /etc and hands PID 1 over to the OS's init.
//
// Every failure prints one line "berth-init: FATAL: <what>: <why>" and
// then reboots, halts or starts a shell, as berth.onfail says.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/berth-os/berth/builder/initrd/init/internal/bootcfg"
	"github.com/berth-os/berth/builder/initrd/init/internal/console"
)

// Paths inside the initramfs.
const (
	initrdConfPath  = "/etc/berth/initrd.conf"
	moduleListPath  = "/etc/berth/modules"
	moduleRoot      = "/lib/modules"
	newRoot         = "/sysroot"
	shellPath       = "/bin/sh"
	procCmdlinePath = "/proc/cmdline"
)

// failure is a step that went wrong: what it was and why.
type failure struct {
	what string
	why  error
}

func (f *failure) Error() string { return f.what + ": " + f.why.Error() }

func fail(what string, why error) *failure { return &failure{what: what, why: why} }

type boot struct {
	log   *console.Logger
	cfg   bootcfg.Config
	start time.Time
}

func main() {
	b := &boot{log: console.New(console.Stdout(), nil), cfg: bootcfg.Defaults(), start: time.Now()}
	if os.Getpid() != 1 {
		b.log.Fatal("refusing to run", fmt.Errorf("pid is %d, not 1: this program is the initrd's /init", os.Getpid()))
		os.Exit(2)
	}
	defer func() {
		// Last line of defence: PID 1 must not die, or the kernel panics
		// with a message nobody can act on.
		if r := recover(); r != nil {
			b.log.Fatal("internal error", fmt.Errorf("%v", r))
			b.onFail()
		}
	}()
	f := b.run()
	if f == nil {
		f = fail("boot", fmt.Errorf("the boot sequence ended without starting init"))
	}
	b.log.Fatal(f.what, f.why)
	b.onFail()
}

// run returns only on failure: on success it execs the OS's init.
func (b *boot) run() *failure {
	b.log.Infof("starting")
	if f := b.readInitrdConf(); f != nil {
		return f
	}
	if f := b.mountAPI(); f != nil {
		return f
	}
	if f := b.readCmdline(); f != nil {
		return f
	}
	if f := b.loadModules(); f != nil {
		return f
	}
	slot, f := b.waitForSlot()
	if f != nil {
		return f
	}
	if f := b.mountSlot(slot); f != nil {
		return f
	}
	if f := b.setUpState(slot.Disk); f != nil {
		return f
	}
	if f := b.setUpEtc(); f != nil {
		return f
	}
	return b.switchRoot()
}
