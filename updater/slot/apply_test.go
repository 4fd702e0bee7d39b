package slot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

const slotSize = 9<<20 + 123 // several chunks and a ragged end

func TestApplyInstallsIntoPassiveSlot(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf") // an older good OS gets replaced
	bootedEntry := n.read(n.entryPath("berth-a.conf"))
	bootedKernel := n.read(n.sys.espFile(layout.KernelPath(layout.SlotA)))
	bootedDev := n.read(n.dev[layout.SlotA])
	src := newSource("1.1.0", slotSize, 1)

	var lastDone, lastTotal int64
	calls := 0
	p, err := n.sys.Apply(context.Background(), src, ApplyOptions{Progress: func(done, total int64) {
		if done < lastDone {
			t.Errorf("progress went back from %d to %d", lastDone, done)
		}
		lastDone, lastTotal = done, total
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Slot != "b" || p.FromSlot != "a" || p.Device != n.dev[layout.SlotB] || p.Entry != "berth-b+3.conf" ||
		p.PartUUID != testUUID[layout.SlotB] || p.SlotSize != slotSize || p.DeviceSize != testDevSize || p.DemoteEntry != "" ||
		len(p.RemoveEntries) != 1 || p.RemoveEntries[0] != "berth-b.conf" {
		t.Errorf("plan = %+v", p)
	}
	if calls < 3 || lastDone != slotSize || lastTotal != slotSize {
		t.Errorf("progress: %d calls, last %d/%d", calls, lastDone, lastTotal)
	}
	dev := n.read(n.dev[layout.SlotB])
	if !bytes.Equal(dev[:slotSize], src.slot) {
		t.Error("passive device does not hold the slot image")
	}
	if len(dev) != testDevSize || dev[testDevSize-1] != 'b' {
		t.Error("the device was truncated or written past the image")
	}
	if !bytes.Equal(n.read(n.dev[layout.SlotA]), bootedDev) {
		t.Error("the booted slot's device changed")
	}
	if got := n.read(n.sys.espFile(layout.KernelPath(layout.SlotB))); !bytes.Equal(got, src.kernel) {
		t.Errorf("passive kernel = %q", got)
	}
	if got := n.read(n.sys.espFile(layout.InitrdPath(layout.SlotB))); !bytes.Equal(got, src.initrd) {
		t.Errorf("passive initrd = %q", got)
	}
	if !bytes.Equal(n.read(n.entryPath("berth-a.conf")), bootedEntry) ||
		!bytes.Equal(n.read(n.sys.espFile(layout.KernelPath(layout.SlotA))), bootedKernel) {
		t.Error("the booted slot's entry or kernel changed")
	}
	want := layout.SlotEntry(layout.SlotB, "1.1.0", testUUID[layout.SlotB], src.m.Cmdline).Render()
	if got := n.read(n.entryPath("berth-b+3.conf")); !bytes.Equal(got, want) {
		t.Errorf("new entry:\n%s\nwant:\n%s", got, want)
	}
	if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf berth-b+3.conf" {
		t.Errorf("entries = %v (old entry of slot b or temp files left)", files)
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-b+3.conf" {
		t.Errorf("next boot = %s, want the new entry", got)
	}
	r := n.lastUpdate()
	if r.State != UpdateStaged || r.Version != "1.1.0" || r.Slot != "b" || r.FromVersion != "1.0.0" || r.Tries != 3 {
		t.Errorf("last update = %+v", r)
	}
}

func TestApplyTriesOption(t *testing.T) {
	n := newNode(t, layout.SlotB, "2.0.0", "berth-b.conf")
	p, err := n.sys.Apply(context.Background(), newSource("2.1.0", 1000, 2), ApplyOptions{Tries: 5})
	if err != nil {
		t.Fatal(err)
	}
	if p.Slot != "a" || p.Entry != "berth-a+5.conf" {
		t.Errorf("plan = %+v", p)
	}
	if _, err := os.Stat(n.entryPath("berth-a+5.conf")); err != nil {
		t.Error(err)
	}
}

func TestApplyRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(n *node, s *source, o *ApplyOptions)
		expect string
	}{
		{"arch", func(n *node, s *source, o *ApplyOptions) { s.m.Arch = "arm64" }, `payload is for "arm64"`},
		{"os name", func(n *node, s *source, o *ApplyOptions) { s.m.OS = "other-os" }, `payload is for OS "other-os", this node runs "berth-minimal"`},
		{"no IMAGE_ID", func(n *node, s *source, o *ApplyOptions) { n.write(n.sys.OSRelease, []byte("BERTH_VERSION=1.0.0\n")) }, "has no IMAGE_ID"},
		{"older", func(n *node, s *source, o *ApplyOptions) { s.m.Version = "0.9.9" }, "version 0.9.9 is older than the booted 1.0.0"},
		{"older numerically", func(n *node, s *source, o *ApplyOptions) { n.reboot(layout.SlotA, "0.10.0", ""); s.m.Version = "0.9.0" }, "is older than"},
		{"same", func(n *node, s *source, o *ApplyOptions) { s.m.Version = "1.0.0" }, "is the same as the booted"},
		{"same even when allowed", func(n *node, s *source, o *ApplyOptions) { s.m.Version = "1.0.0"; o.AllowDowngrade = true }, "orders version 1.0.0 equal"},
		{"not blessed", func(n *node, s *source, o *ApplyOptions) {
			n.rename("berth-a.conf", "berth-a+2-1.conf")
			n.setBootCount("berth-a+2-1.conf")
		}, "berth-a+2-1.conf is not blessed yet"},
		{"booted entry bad", func(n *node, s *source, o *ApplyOptions) { n.rename("berth-a.conf", "berth-a+0-1.conf") }, "is not blessed yet"},
		{"no booted entry", func(n *node, s *source, o *ApplyOptions) { os.Remove(n.entryPath("berth-a.conf")) }, "no boot entry of the booted slot a"},
		{"too large", func(n *node, s *source, o *ApplyOptions) { s.m.Slot.Size = testDevSize + 1 }, "holds only 10485760"},
		{"same device", func(n *node, s *source, o *ApplyOptions) {
			n.sys.Device = func(layout.Slot) (string, error) { return n.dev[layout.SlotA], nil }
		}, "is the booted slot's device"},
		{"same device by link", func(n *node, s *source, o *ApplyOptions) {
			link := filepath.Join(n.root, "link-a")
			os.Symlink(n.dev[layout.SlotA], link)
			n.sys.Device = func(sl layout.Slot) (string, error) {
				if sl == layout.SlotB {
					return link, nil
				}
				return n.dev[layout.SlotA], nil
			}
		}, "is the booted slot's device"},
		{"device lookup", func(n *node, s *source, o *ApplyOptions) {
			n.sys.Device = func(layout.Slot) (string, error) { return "", errors.New("no such partition") }
		}, "no such partition"},
		{"schema", func(n *node, s *source, o *ApplyOptions) { s.m.Schema = 99 }, "manifest schema 99"},
		{"bad version", func(n *node, s *source, o *ApplyOptions) { s.m.Version = "2.0\ntitle evil" }, "is not a number"},
		{"digest", func(n *node, s *source, o *ApplyOptions) { s.m.Kernel.SHA256 = "abc" }, "kernel sha256"},
		{"empty initrd", func(n *node, s *source, o *ApplyOptions) { s.m.Initrd.Size = 0 }, "initrd size 0"},
		{"cmdline root", func(n *node, s *source, o *ApplyOptions) { s.m.Cmdline = []string{"berth.root=PARTLABEL=X"} }, "sets berth.root"},
		{"cmdline newline", func(n *node, s *source, o *ApplyOptions) { s.m.Cmdline = []string{"a\ninitrd /x"} }, "control characters"},
		{"tries", func(n *node, s *source, o *ApplyOptions) { o.Tries = 100 }, "between 1 and 99"},
		{"negative tries", func(n *node, s *source, o *ApplyOptions) { o.Tries = -1 }, "between 1 and 99"},
		{"not a berth boot", func(n *node, s *source, o *ApplyOptions) { n.write(n.sys.Cmdline, []byte("root=/dev/sda1\n")) }, "no berth.slot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, dry := range []bool{false, true} {
				n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
				n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf")
				src := newSource("1.1.0", 4096, 3)
				o := ApplyOptions{DryRun: dry}
				tc.setup(n, src, &o)
				before := snapshot(t, n.root)
				_, err := n.sys.Apply(context.Background(), src, o)
				if err == nil || !strings.Contains(err.Error(), tc.expect) {
					t.Fatalf("dry run %v: Apply error = %v, want one containing %q", dry, err, tc.expect)
				}
				if d := diffSnapshots(before, snapshot(t, n.root)); len(d) != 0 {
					t.Errorf("dry run %v: a refused update changed %v", dry, d)
				}
				if src.slotOpened != 0 {
					t.Errorf("dry run %v: the slot image was read", dry)
				}
			}
		})
	}
}

func TestApplyDryRunWritesNothing(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf")
	before := snapshot(t, n.root)
	src := newSource("1.1.0", slotSize, 4)
	p, err := n.sys.Apply(context.Background(), src, ApplyOptions{DryRun: true, Tries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d := diffSnapshots(before, snapshot(t, n.root)); len(d) != 0 {
		t.Errorf("dry run changed %v", d)
	}
	if src.slotOpened != 0 {
		t.Error("dry run read the slot image")
	}
	if !p.DryRun || p.Slot != "b" || p.Device != n.dev[layout.SlotB] || p.Entry != "berth-b+2.conf" || p.SlotSize != slotSize ||
		p.DeviceSize != testDevSize || p.KernelSize != int64(len(src.kernel)) || len(p.RemoveEntries) != 1 {
		t.Errorf("plan = %+v", p)
	}
}

func TestApplyDowngradeDemotesBootedEntry(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	p, err := n.sys.Apply(context.Background(), newSource("0.9.0", 5000, 5), ApplyOptions{AllowDowngrade: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.DemoteEntry != "berth-a+0.conf" {
		t.Errorf("demote = %q", p.DemoteEntry)
	}
	if files := n.entryFiles(); strings.Join(files, " ") != "berth-a+0.conf berth-b+3.conf" {
		t.Errorf("entries = %v", files)
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-b+3.conf" {
		t.Errorf("next boot = %s, want the downgrade", got)
	}
	// The downgrade spends its tries: the old OS must still come back.
	n.rename("berth-b+3.conf", "berth-b+0-3.conf")
	if got := nextBoot(t, n.sys.ESP); got != "berth-a+0.conf" {
		t.Errorf("after the downgrade failed, next boot = %s, want the old OS", got)
	}
}

func TestApplySuffixTheBootLoaderOrdersFirst(t *testing.T) {
	// 1.0.0 is newer than 1.0.0-rc1 for the updater, older for systemd-boot:
	// the booted entry must be demoted or the update would never boot.
	n := newNode(t, layout.SlotA, "1.0.0-rc1", "berth-a.conf")
	p, err := n.sys.Apply(context.Background(), newSource("1.0.0", 5000, 6), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.DemoteEntry == "" {
		t.Fatal("booted entry not demoted")
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-b+3.conf" {
		t.Errorf("next boot = %s, want the update", got)
	}
}

// Failures while writing must leave no entry for the passive slot, the
// booted entry untouched and the reason recorded.
func TestApplyFailuresLeaveBootedOSNext(t *testing.T) {
	boom := errors.New("network went away")
	for _, tc := range []struct {
		name   string
		setup  func(n *node, s *source)
		expect string
	}{
		{"reader fails mid-stream", func(n *node, s *source) {
			s.slotOverride = func() (io.ReadCloser, error) {
				return io.NopCloser(&failingReader{r: bytes.NewReader(s.slot), limit: 5 << 20, err: boom}), nil
			}
		}, "network went away"},
		{"wrong bytes", func(n *node, s *source) {
			bad := bytes.Clone(s.slot)
			bad[len(bad)/2] ^= 1
			s.slotOverride = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(bad)), nil }
		}, "does not match the manifest"},
		{"digest error at EOF", func(n *node, s *source) {
			s.slotOverride = func() (io.ReadCloser, error) {
				return io.NopCloser(&failingReader{r: bytes.NewReader(s.slot), limit: int64(len(s.slot)), err: errors.New("payload: slot digest mismatch")}), nil
			}
		}, "payload: slot digest mismatch"},
		{"short", func(n *node, s *source) {
			s.slotOverride = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(s.slot[:1000])), nil }
		}, "source ended after 1000 bytes"},
		{"long", func(n *node, s *source) {
			s.slotOverride = func() (io.ReadCloser, error) {
				return io.NopCloser(io.MultiReader(bytes.NewReader(s.slot), strings.NewReader("x"))), nil
			}
		}, "longer than the manifest"},
		{"open fails", func(n *node, s *source) {
			s.slotOverride = func() (io.ReadCloser, error) { return nil, boom }
		}, "open the payload's slot image: network went away"},
		{"kernel digest", func(n *node, s *source) {
			s.kernelOverride = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("kernel 9.9.9")), nil }
		}, "write kernel"},
		{"device not writable", func(n *node, s *source) {
			os.Remove(n.dev[layout.SlotB])
			os.Mkdir(n.dev[layout.SlotB], 0o755)
		}, "dev-b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
			n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf")
			booted := n.read(n.entryPath("berth-a.conf"))
			src := newSource("1.1.0", slotSize, 7)
			tc.setup(n, src)
			if tc.name == "device not writable" {
				// A directory cannot be sized: the plan refuses before writing.
				if _, err := n.sys.Apply(context.Background(), src, ApplyOptions{}); err == nil {
					t.Fatal("Apply succeeded")
				}
				return
			}
			_, err := n.sys.Apply(context.Background(), src, ApplyOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.expect) {
				t.Fatalf("Apply error = %v, want %q", err, tc.expect)
			}
			if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf" {
				t.Errorf("entries after a failed install = %v, want only the booted one", files)
			}
			if !bytes.Equal(n.read(n.entryPath("berth-a.conf")), booted) {
				t.Error("booted entry changed")
			}
			if got := nextBoot(t, n.sys.ESP); got != "berth-a.conf" {
				t.Errorf("next boot = %s", got)
			}
			r := n.lastUpdate()
			if r == nil || r.State != UpdateFailed || !strings.Contains(r.Reason, tc.expect) {
				t.Errorf("last update = %+v, want failed with %q", r, tc.expect)
			}
			// The next attempt with a good source succeeds.
			if _, err := n.sys.Apply(context.Background(), newSource("1.1.0", slotSize, 7), ApplyOptions{}); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if got := nextBoot(t, n.sys.ESP); got != "berth-b+3.conf" {
				t.Errorf("after retry next boot = %s", got)
			}
		})
	}
}

func TestApplyCancelled(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.sys.Apply(ctx, newSource("1.1.0", slotSize, 8), ApplyOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-a.conf" {
		t.Errorf("next boot = %s", got)
	}
}

func TestApplyRefusesWhileLocked(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	unlock, err := n.sys.withDefaults().lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := n.sys.Apply(context.Background(), newSource("1.1.0", 100, 9), ApplyOptions{}); !errors.Is(err, errBusy) {
		t.Fatalf("Apply = %v, want busy", err)
	}
	st, err := n.sys.Status()
	if err != nil || !st.Updating {
		t.Errorf("Status = %+v, %v; want updating", st, err)
	}
}
