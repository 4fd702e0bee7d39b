package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/builder/initrd/init/internal/bootcfg"
	"github.com/berth-os/berth/builder/initrd/init/internal/kmod"
	"github.com/berth-os/berth/updater/layout"
)

// readInitrdConf reads the build-time defaults. A missing file is fine:
// the built-in defaults apply.
func (b *boot) readInitrdConf() *failure {
	data, err := os.ReadFile(initrdConfPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fail("read "+initrdConfPath, err)
	}
	if err := bootcfg.ParseInitrdConf(data, &b.cfg); err != nil {
		return fail("read "+initrdConfPath, err)
	}
	return nil
}

func (b *boot) readCmdline() *failure {
	data, err := os.ReadFile(procCmdlinePath)
	if err != nil {
		return fail("read kernel command line", err)
	}
	cmdline := strings.TrimSpace(string(data))
	// Honour berth.onfail even when another key is broken.
	if err := bootcfg.ApplyOnFail(cmdline, &b.cfg); err != nil {
		return fail("parse kernel command line", err)
	}
	if err := bootcfg.ParseCmdline(cmdline, &b.cfg); err != nil {
		return fail("parse kernel command line", err)
	}
	slot := string(b.cfg.Slot)
	if slot == "" {
		slot = "unset"
	}
	b.log.Infof("root %s, slot %s, fstype %s, rootwait %s, onfail %s, init %s",
		b.cfg.Root, slot, b.cfg.FSType, b.cfg.RootWait, b.cfg.OnFail, b.cfg.Init)
	// The updater trusts berth.slot to know which slot is passive: a
	// mismatch with the booted label is a broken boot entry worth a line.
	if b.cfg.Slot != "" && b.cfg.Root.Kind == bootcfg.RootByPartLabel &&
		(b.cfg.Root.Value == layout.LabelSlotA || b.cfg.Root.Value == layout.LabelSlotB) &&
		b.cfg.Root.Value != b.cfg.Slot.Label() {
		b.log.Infof("warning: %s=%s but the root is %s", layout.CmdlineSlot, b.cfg.Slot, b.cfg.Root)
	}
	return nil
}

func (b *boot) loadModules() *failure {
	data, err := os.ReadFile(moduleListPath)
	if errors.Is(err, os.ErrNotExist) {
		b.log.Infof("no %s: loading no modules", moduleListPath)
		return nil
	}
	if err != nil {
		return fail("read "+moduleListPath, err)
	}
	mods, err := kmod.ParseList(data)
	if err != nil {
		return fail("read "+moduleListPath, err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fail("uname", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	var loaded []string
	for _, m := range mods {
		already, err := kmod.Load(filepath.Join(moduleRoot, release, m))
		if err != nil {
			return fail(fmt.Sprintf("load module %s (%s)", kmod.Name(m), m), err)
		}
		if !already {
			loaded = append(loaded, kmod.Name(m))
		}
	}
	b.log.Infof("loaded %d modules: %s", len(loaded), strings.Join(loaded, " "))
	return nil
}
