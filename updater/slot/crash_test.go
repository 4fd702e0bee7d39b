package slot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

// The crash child: when these are set, the test binary runs one Apply on
// the node at crashNodeEnv and SIGKILLs itself at crashAtEnv.
const (
	crashAtEnv   = "BERTH_SLOT_CRASH_AT"
	crashNodeEnv = "BERTH_SLOT_CRASH_NODE"
	crashSeed    = 42
	crashVersion = "1.1.0"
)

func TestMain(m *testing.M) {
	if point := os.Getenv(crashAtEnv); point != "" {
		os.Exit(crashChild(point, os.Getenv(crashNodeEnv)))
	}
	os.Exit(m.Run())
}

func crashChild(point, root string) int {
	crashAt = func(p string) {
		if p == point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
	_, err := nodeAt(root).Apply(context.Background(), newSource(crashVersion, slotSize, crashSeed), ApplyOptions{})
	fmt.Fprintf(os.Stderr, "crash point %q never reached; Apply returned %v\n", point, err)
	return 3
}

// Kill the updater at every step: the next boot must be the booted OS
// (or, once the new entry is complete, the fully written new one), never
// a half-written slot, and a new Apply must then succeed.
func TestApplySurvivesCrashAtEveryStep(t *testing.T) {
	newEntry := "berth-b+3.conf"
	for _, point := range []string{
		"recorded", "entries-removed", "slot-half-written", "slot-written",
		"before-rename:vmlinuz", "kernel-written", "before-rename:initrd.img", "boot-files-written",
		"before-rename:" + newEntry, "entry-written",
	} {
		t.Run(point, func(t *testing.T) {
			n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
			n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf")
			booted := n.read(n.entryPath("berth-a.conf"))
			bootedKernel := n.read(n.sys.espFile(layout.KernelPath(layout.SlotA)))

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashAtEnv+"="+point, crashNodeEnv+"="+n.root)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL: %v\n%s", err, stderr.String())
			}

			if !bytes.Equal(n.read(n.entryPath("berth-a.conf")), booted) ||
				!bytes.Equal(n.read(n.sys.espFile(layout.KernelPath(layout.SlotA))), bootedKernel) {
				t.Fatal("the booted slot's entry or kernel changed")
			}
			var passive []string
			for _, f := range n.entryFiles() {
				if strings.HasSuffix(strings.ToLower(f), ".conf") && f != "berth-a.conf" {
					passive = append(passive, f)
				}
			}
			want, wantPassive := "berth-a.conf", ""
			switch point {
			case "recorded": // nothing deleted yet: the old B is intact and older
				wantPassive = "berth-b.conf"
			case "entry-written": // complete and verified: the new OS may boot
				want, wantPassive = newEntry, newEntry
			}
			if name, ok := strings.CutPrefix(point, "before-rename:"); ok && !hasTempFor(t, n, name) {
				t.Errorf("no temp file of %s left: the crash point did not hit mid-write", name)
			}
			if strings.Join(passive, " ") != wantPassive {
				t.Errorf("passive entries after the crash = %v, want %q", passive, wantPassive)
			}
			if got := nextBoot(t, n.sys.ESP); got != want {
				t.Errorf("next boot = %s, want %s", got, want)
			}
			if r := n.lastUpdate(); r == nil || r.State != UpdateInstalling {
				t.Errorf("last update = %+v, want installing", r)
			}
			if st := mustStatusTB(t, n); !st.Interrupted {
				t.Error("status does not report the interrupted install")
			}

			// Run again: the install completes and cleans up temp files.
			src := newSource(crashVersion, slotSize, crashSeed)
			if _, err := n.sys.Apply(context.Background(), src, ApplyOptions{}); err != nil {
				t.Fatalf("Apply after the crash: %v", err)
			}
			if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf "+newEntry {
				t.Errorf("entries after the new Apply = %v", files)
			}
			if got := nextBoot(t, n.sys.ESP); got != newEntry {
				t.Errorf("next boot = %s", got)
			}
			if dev := n.read(n.dev[layout.SlotB]); !bytes.Equal(dev[:slotSize], src.slot) {
				t.Error("slot b does not hold the image")
			}
			ents, _ := os.ReadDir(n.sys.espFile("berth/b"))
			if len(ents) != 2 {
				t.Errorf("berth/b holds %d files, want kernel and initrd only", len(ents))
			}
		})
	}
}

func mustStatusTB(t *testing.T, n *node) Status {
	t.Helper()
	st, err := n.sys.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// hasTempFor finds a leftover temp file of name anywhere on the ESP.
func hasTempFor(t *testing.T, n *node, name string) bool {
	found := false
	filepath.WalkDir(n.sys.ESP, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), "."+name+".") && strings.HasSuffix(d.Name(), tempSuffix) {
			found = true
		}
		return nil
	})
	return found
}
