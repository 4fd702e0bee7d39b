package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRemoveSameFSStopsAtMounts(t *testing.T) {
	top := t.TempDir()
	for _, d := range []string{"etc/berth", "lib/modules/6.1/kernel", "sysroot"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]int{"init": 1000, "etc/berth/modules": 20, "lib/modules/6.1/kernel/a.ko": 300}
	for f, n := range files {
		if err := os.WriteFile(filepath.Join(top, f), make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("init", filepath.Join(top, "linuxrc")); err != nil {
		t.Fatal(err)
	}
	sysroot := filepath.Join(top, "sysroot")
	if err := unix.Mount("tmpfs", sysroot, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(sysroot, unix.MNT_DETACH) })
	keep := filepath.Join(sysroot, "sbin-init")
	if err := os.WriteFile(keep, []byte("the new root"), 0o644); err != nil {
		t.Fatal(err)
	}

	freed, err := removeSameFS(top)
	if err != nil {
		t.Fatal(err)
	}
	if freed != 1320 {
		t.Errorf("freed %d bytes, want 1320", freed)
	}
	ents, _ := os.ReadDir(top)
	if len(ents) != 1 || ents[0].Name() != "sysroot" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left %q, want only the mount point sysroot", names)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file below the mount point was removed: %v", err)
	}
}
