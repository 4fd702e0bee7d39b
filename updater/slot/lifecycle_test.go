package slot

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/internal/osrelease"
	"github.com/berth-os/berth/updater/layout"
)

func mustStatus(t *testing.T, n *node) Status {
	t.Helper()
	st, err := n.sys.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func mustApply(t *testing.T, n *node, version string) {
	t.Helper()
	if _, err := n.sys.Apply(context.Background(), newSource(version, 3000, 11), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// An update goes through every state: empty, staged, trying, success,
// then the next update fails and the node rolls back.
func TestStatusAndCheckBootThroughAnUpdate(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	st := mustStatus(t, n)
	if st.Booted != (SlotStatus{Slot: "a", Version: "1.0.0", State: SlotGood, Entry: "berth-a.conf"}) ||
		st.Other != (SlotStatus{Slot: "b", State: SlotEmpty}) || st.LastUpdate != nil || len(st.Entries) != 1 {
		t.Errorf("fresh node: %s", mustJSON(t, st))
	}
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot without an update = %+v, %v", r, err)
	}

	mustApply(t, n, "1.1.0")
	st = mustStatus(t, n)
	if st.Other != (SlotStatus{Slot: "b", Version: "1.1.0", State: SlotStaged, Entry: "berth-b+3.conf"}) || st.LastUpdate.State != UpdateStaged {
		t.Errorf("staged: %s", mustJSON(t, st))
	}
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot before rebooting = %+v, %v", r, err)
	}

	// The boot loader tries B: it renames the entry and sets the variable.
	n.rename("berth-b+3.conf", "berth-b+2-1.conf")
	n.reboot(layout.SlotB, "1.1.0", "berth-b+2-1.conf")
	st = mustStatus(t, n)
	if st.Booted != (SlotStatus{Slot: "b", Version: "1.1.0", State: SlotTrying, Entry: "berth-b+2-1.conf"}) ||
		st.Other != (SlotStatus{Slot: "a", Version: "1.0.0", State: SlotGood, Entry: "berth-a.conf"}) {
		t.Errorf("trying: %s", mustJSON(t, st))
	}
	var booted bool
	for _, e := range st.Entries {
		if e.File == "berth-b+2-1.conf" {
			booted = e.Booted && e.TriesLeft == 2 && e.TriesDone == 1 && e.HasCounter && !e.Blessed && e.Version == "1.1.0"
		}
	}
	if !booted {
		t.Errorf("entries: %s", mustJSON(t, st.Entries))
	}
	r, err := n.sys.CheckBoot()
	if err != nil || r == nil || r.State != UpdateBooted {
		t.Fatalf("CheckBoot on the new slot = %+v, %v", r, err)
	}
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot again = %+v, %v (nothing new)", r, err)
	}
	// An update is refused until this boot is blessed.
	if _, err := n.sys.Apply(context.Background(), newSource("1.2.0", 100, 1), ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "not blessed") {
		t.Errorf("Apply before blessing = %v", err)
	}
	// A failure recorded on an earlier try of this slot is cleared on success.
	if err := n.sys.RecordHealthFailure("containerd did not start"); err != nil {
		t.Fatal(err)
	}
	n.rename("berth-b+2-1.conf", "berth-b.conf") // systemd-bless-boot
	r, err = n.sys.CheckBoot()
	if err != nil || r == nil || r.State != UpdateSuccess || r.Version != "1.1.0" || r.Slot != "b" {
		t.Fatalf("CheckBoot after blessing = %+v, %v", r, err)
	}
	if _, err := os.Stat(n.sys.withDefaults().healthFailurePath()); !os.IsNotExist(err) {
		t.Errorf("health failure of a slot that passed kept: %v", err)
	}
	if st = mustStatus(t, n); st.Booted.State != SlotGood || st.LastUpdate.State != UpdateSuccess {
		t.Errorf("success: %s", mustJSON(t, st))
	}

	// The next update, 1.2.0 into A, fails its health gate every time.
	mustApply(t, n, "1.2.0")
	n.rename("berth-a+3.conf", "berth-a+2-1.conf")
	n.reboot(layout.SlotA, "1.2.0", "berth-a+2-1.conf")
	if r, err := n.sys.CheckBoot(); err != nil || r.State != UpdateBooted {
		t.Fatalf("CheckBoot = %+v, %v", r, err)
	}
	if err := n.sys.RecordHealthFailure("etcd did not become healthy in 120s"); err != nil {
		t.Fatal(err)
	}
	n.rename("berth-a+2-1.conf", "berth-a+0-3.conf") // two more failed tries
	if got := nextBoot(t, n.sys.ESP); got != "berth-b.conf" {
		t.Fatalf("next boot = %s, want the fallback", got)
	}
	n.reboot(layout.SlotB, "1.1.0", "")
	st = mustStatus(t, n)
	if st.Other.State != SlotRolledBack || st.Other.Version != "1.2.0" {
		t.Errorf("before CheckBoot the other slot should already read rolled-back: %s", mustJSON(t, st))
	}
	r, err = n.sys.CheckBoot()
	if err != nil || r == nil {
		t.Fatalf("CheckBoot after the fallback = %+v, %v", r, err)
	}
	want := "rolled back from 1.2.0 to 1.1.0: etcd did not become healthy in 120s"
	if r.State != UpdateRolledBack || r.Reason != want || r.Slot != "a" || r.FromSlot != "b" {
		t.Errorf("rollback result = %+v, want reason %q", r, want)
	}
	st = mustStatus(t, n)
	if st.Other != (SlotStatus{Slot: "a", Version: "1.2.0", State: SlotRolledBack, Entry: "berth-a+0-3.conf"}) || st.LastUpdate.Reason != want {
		t.Errorf("rolled back: %s", mustJSON(t, st))
	}
	// The status is JSON with snake_case names.
	data, _ := json.Marshal(st)
	for _, key := range []string{`"last_update":`, `"tries_left":`, `"tries_done":`, `"from_version":`, `"state":"rolled-back"`} {
		if !strings.Contains(string(data), key) {
			t.Errorf("status JSON lacks %s: %s", key, data)
		}
	}
	// A new update replaces the bad slot.
	mustApply(t, n, "1.2.1")
	if st = mustStatus(t, n); st.Other.State != SlotStaged || st.Other.Version != "1.2.1" {
		t.Errorf("after a new update: %s", mustJSON(t, st))
	}
}

func TestCheckBootRollbackWithoutHealthReport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		after  func(n *node)
		expect string
	}{
		{"entry spent", func(n *node) { n.rename("berth-b+3.conf", "berth-b+0-3.conf") }, "slot b never passed the health gate in 3 tries (kernel, initrd or systemd failed to start)"},
		{"entry gone", func(n *node) { os.Remove(n.entryPath("berth-b+3.conf")) }, "slot b never passed the health gate in 3 tries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
			mustApply(t, n, "1.1.0")
			// A health failure of another version must not be reported.
			n.write(n.sys.withDefaults().healthFailurePath(), []byte(`{"slot":"b","version":"0.1.0","reason":"old news"}`))
			tc.after(n)
			n.reboot(layout.SlotA, "1.0.0", "")
			r, err := n.sys.CheckBoot()
			if err != nil || r == nil || r.State != UpdateRolledBack || !strings.HasPrefix(r.Reason, "rolled back from 1.1.0 to 1.0.0: "+tc.expect) {
				t.Fatalf("CheckBoot = %+v, %v", r, err)
			}
			if r, err := n.sys.CheckBoot(); err != nil || r != nil {
				t.Errorf("second CheckBoot = %+v, %v", r, err)
			}
		})
	}
}

func TestCheckBootOtherSlotChosenByHand(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	mustApply(t, n, "1.1.0")
	n.rename("berth-b+3.conf", "berth-b+2-1.conf")
	n.reboot(layout.SlotA, "1.0.0", "")
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot = %+v, %v: the update still has tries", r, err)
	}
	if st := mustStatus(t, n); st.Other.State != SlotStaged {
		t.Errorf("other = %+v", st.Other)
	}
}

// Power lost right after the entry was written: the record still says
// installing, but booting the new version proves the install complete.
func TestCheckBootAfterInterruptedRecord(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	mustApply(t, n, "1.1.0")
	rec := n.lastUpdate()
	rec.State = UpdateInstalling
	if err := writeJSON(n.sys.withDefaults().lastUpdatePath(), rec); err != nil {
		t.Fatal(err)
	}
	if st := mustStatus(t, n); !st.Interrupted {
		t.Errorf("status does not say interrupted: %s", mustJSON(t, st))
	}
	n.reboot(layout.SlotB, "1.1.0", "berth-b+3.conf")
	if r, err := n.sys.CheckBoot(); err != nil || r == nil || r.State != UpdateBooted {
		t.Errorf("CheckBoot = %+v, %v", r, err)
	}
}

func TestRollback(t *testing.T) {
	n := newNode(t, layout.SlotB, "1.1.0", "berth-b.conf")
	n.installEntry(layout.SlotA, "1.0.0", "berth-a.conf")
	if got := nextBoot(t, n.sys.ESP); got != "berth-b.conf" {
		t.Fatalf("next boot = %s", got)
	}
	if err := n.sys.Rollback(); err != nil {
		t.Fatal(err)
	}
	if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf berth-b+0.conf" {
		t.Errorf("entries = %v", files)
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-a.conf" {
		t.Errorf("next boot = %s, want the older good OS", got)
	}
	r := n.lastUpdate()
	if r.State != UpdateRolledBack || r.Reason != "manual rollback from 1.1.0 to 1.0.0" || r.Slot != "b" {
		t.Errorf("record = %+v", r)
	}
	if st := mustStatus(t, n); st.Booted.State != SlotBad {
		t.Errorf("booted after rollback: %+v", st.Booted)
	}
	// Rolling back twice is harmless.
	if err := n.sys.Rollback(); err != nil {
		t.Errorf("second rollback: %v", err)
	}
	// After the reboot the node reports where it came from.
	n.reboot(layout.SlotA, "1.0.0", "")
	if st := mustStatus(t, n); st.Other.State != SlotRolledBack || st.Other.Version != "1.1.0" {
		t.Errorf("after reboot: %s", mustJSON(t, st))
	}
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot after a manual rollback = %+v, %v", r, err)
	}
}

func TestRollbackKeepsTriesDone(t *testing.T) {
	n := newNode(t, layout.SlotB, "1.1.0", "berth-b+1-2.conf")
	n.installEntry(layout.SlotA, "1.0.0", "berth-a.conf")
	if err := n.sys.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.entryPath("berth-b+0-2.conf")); err != nil {
		t.Error(err)
	}
}

func TestRollbackRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(n *node)
		expect string
	}{
		{"empty", func(n *node) {}, "slot a has no boot entry"},
		{"staged", func(n *node) { n.installEntry(layout.SlotA, "1.2.0", "berth-a+3.conf") }, "never passed its health gate"},
		{"bad", func(n *node) { n.installEntry(layout.SlotA, "1.0.0", "berth-a+0-3.conf") }, "spent its boot tries"},
		{"kernel missing", func(n *node) {
			n.installEntry(layout.SlotA, "1.0.0", "berth-a.conf")
			os.Remove(n.sys.espFile(layout.KernelPath(layout.SlotA)))
		}, "missing on the ESP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, layout.SlotB, "1.1.0", "berth-b.conf")
			tc.setup(n)
			before := snapshot(t, n.root)
			err := n.sys.Rollback()
			if err == nil || !strings.Contains(err.Error(), tc.expect) {
				t.Fatalf("Rollback = %v, want %q", err, tc.expect)
			}
			if d := diffSnapshots(before, snapshot(t, n.root)); len(d) != 0 {
				t.Errorf("refused rollback changed %v", d)
			}
		})
	}
}

func TestBootedReadsEFIVariable(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a+2-1.conf")
	// A stale second entry must not be taken for the booted one.
	n.installEntry(layout.SlotA, "1.0.0", "berth-a+3.conf")
	b, err := n.sys.Booted()
	if err != nil {
		t.Fatal(err)
	}
	if b.Slot != layout.SlotA || b.Version != "1.0.0" || b.OS != testOS || b.Entry != "berth-a+2-1.conf" || !b.Counted || b.Blessed {
		t.Errorf("Booted = %+v", b)
	}
	n.rename("berth-a+2-1.conf", "berth-a.conf") // blessed; the variable stays
	if b, err = n.sys.Booted(); err != nil || b.Entry != "berth-a.conf" || !b.Blessed {
		t.Errorf("after blessing Booted = %+v, %v", b, err)
	}
}

func TestBootedErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(n *node)
		expect string
	}{
		{"bad slot", func(n *node) { n.write(n.sys.Cmdline, []byte("berth.slot=c")) }, `unknown slot "c"`},
		{"no version", func(n *node) { n.write(n.sys.OSRelease, []byte("IMAGE_ID=x\n")) }, "neither BERTH_VERSION nor VERSION_ID"},
		{"efivar garbage", func(n *node) { n.write(filepath.Join(n.sys.EFIVars, loaderBootCountVar), []byte{1, 2, 3}) }, "LoaderBootCountPath"},
		{"no cmdline", func(n *node) { os.Remove(n.sys.Cmdline) }, "read kernel command line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
			tc.setup(n)
			if _, err := n.sys.Booted(); err == nil || !strings.Contains(err.Error(), tc.expect) {
				t.Errorf("Booted error = %v, want %q", err, tc.expect)
			}
		})
	}
}

func TestOSReleaseQuoting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "os-release")
	os.WriteFile(p, []byte("# c\nA=\"x y\"\nB='z'\nC=plain\nD=\"esc\\\"aped\"\nbroken\n"), 0o644)
	f, err := osrelease.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if f["A"] != "x y" || f["B"] != "z" || f["C"] != "plain" || f["D"] != `esc"aped` || len(f) != 4 {
		t.Errorf("fields = %q", f)
	}
}

func TestRecordHealthFailure(t *testing.T) {
	n := newNode(t, layout.SlotB, "2.0.0", "berth-b+2-1.conf")
	if err := n.sys.RecordHealthFailure(""); err == nil {
		t.Error("empty reason accepted")
	}
	if err := n.sys.RecordHealthFailure("kubelet crashed"); err != nil {
		t.Fatal(err)
	}
	h, err := n.sys.withDefaults().healthFailure()
	if err != nil || h == nil || h.Slot != "b" || h.Version != "2.0.0" || h.Reason != "kubelet crashed" || h.Time.IsZero() {
		t.Errorf("health failure = %+v, %v", h, err)
	}
}
