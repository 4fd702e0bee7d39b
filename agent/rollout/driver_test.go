package rollout

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/updater/payload"
	"github.com/berth-os/berth/updater/slot"
)

// fakeOS is a node's disk as the driver sees it: the booted version and
// whether it is blessed, and what the passive slot holds. It is a fake
// only of the updater (whose own tests run on real block devices and
// qemu); the drivers, the semaphore and etcd here are the real ones.
type fakeOS struct {
	mu       sync.Mutex
	booted   string
	blessed  bool
	other    string // version in the passive slot
	otherSt  string // slot.SlotStaged, SlotGood, SlotBad or SlotEmpty
	last     *slot.Result
	applies  int
	tries    []int // ApplyOptions.Tries of each apply
	unstaged []string
}

func (f *fakeOS) Status() (slot.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := slot.Status{Booted: slot.SlotStatus{Version: f.booted, State: slot.SlotTrying}, Other: slot.SlotStatus{Version: f.other, State: f.otherSt}}
	if f.blessed {
		st.Booted.State = slot.SlotGood
	}
	if f.last != nil {
		r := *f.last
		st.LastUpdate = &r
	}
	return st, nil
}

func (f *fakeOS) Apply(_ context.Context, src slot.Source, o slot.ApplyOptions) (slot.Plan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries = append(f.tries, o.Tries)
	v := src.Manifest().Version
	if !f.blessed {
		return slot.Plan{}, fmt.Errorf("booted OS not blessed")
	}
	f.other, f.otherSt, f.applies = v, slot.SlotStaged, f.applies+1
	f.last = &slot.Result{State: slot.UpdateStaged, Version: v, FromVersion: f.booted}
	return slot.Plan{Version: v}, nil
}

func (f *fakeOS) Unstage(reason string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.otherSt != slot.SlotStaged {
		return "", nil
	}
	v := f.other
	f.other, f.otherSt = "", slot.SlotEmpty
	f.unstaged = append(f.unstaged, v)
	return v, nil
}

func (f *fakeOS) Rollback() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.otherSt != slot.SlotGood {
		return fmt.Errorf("no good OS in the other slot")
	}
	f.booted, f.other, f.otherSt = f.other, f.booted, slot.SlotBad
	f.last = &slot.Result{State: slot.UpdateRolledBack, Version: f.other, Reason: "manual rollback"}
	return nil
}

// boot is the boot loader: the staged version boots unless it is bad, in
// which case the node comes back on the old one with a rollback record.
func (f *fakeOS) boot(bad map[string]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.otherSt != slot.SlotStaged {
		return
	}
	if bad[f.other] {
		f.last = &slot.Result{State: slot.UpdateRolledBack, Version: f.other,
			Reason: fmt.Sprintf("rolled back from %s to %s: health check failed", f.other, f.booted)}
		f.otherSt = slot.SlotBad
		return
	}
	f.booted, f.other, f.otherSt = f.other, f.booted, slot.SlotGood
	f.blessed = true // the health gate passes at once here
	f.last = &slot.Result{State: slot.UpdateSuccess, Version: f.booted}
}

type fakeSource struct{ m payload.Manifest }

func (s fakeSource) Manifest() payload.Manifest     { return s.m }
func (s fakeSource) Slot() (io.ReadCloser, error)   { return nil, io.EOF }
func (s fakeSource) Kernel() (io.ReadCloser, error) { return nil, io.EOF }
func (s fakeSource) Initrd() (io.ReadCloser, error) { return nil, io.EOF }

// fleet runs real drivers (and a real leader) for simulated nodes. A
// reboot stops the node's driver, lets the fake boot loader pick the OS,
// and starts a new driver with a new boot ID after a short "boot".
type fleet struct {
	t       *testing.T
	cli     *clientv3.Client
	bad     map[string]bool // versions that fail their health gate
	badOn   map[string]bool // nodes on which every new version fails
	dead    map[string]bool // nodes whose reboot never returns
	mu      sync.Mutex
	nodes   map[string]*fleetNode
	reboots map[string]int
	down    map[string]bool
	peak    int // most nodes down at once
	wg      sync.WaitGroup
	ctx     context.Context // ends every driver; no driver starts after
}

type fleetNode struct {
	os     *fakeOS
	boot   int
	cancel context.CancelFunc
	done   chan struct{}
}

func newFleet(t *testing.T, names []string, version string) *fleet {
	e := etcdtest.Start(t, etcdtest.Options{})
	f := &fleet{t: t, cli: e.Client(t), bad: map[string]bool{}, badOn: map[string]bool{}, dead: map[string]bool{},
		nodes: map[string]*fleetNode{}, reboots: map[string]int{}, down: map[string]bool{}}
	for _, n := range names {
		f.nodes[n] = &fleetNode{os: &fakeOS{booted: version, blessed: true, otherSt: slot.SlotEmpty}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.ctx = ctx
	t.Cleanup(func() {
		f.mu.Lock()
		cancel()
		f.mu.Unlock()
		f.wg.Wait()
	})
	l := &Leader{Node: "leader", Interval: 200 * time.Millisecond}
	f.wg.Add(1)
	go func() { defer f.wg.Done(); l.Run(ctx, f.cli) }()
	for _, n := range names {
		f.start(n)
	}
	return f
}

// members: every node a voter, healthy unless down.
func (f *fleet) members(context.Context) ([]Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Member
	for n := range f.nodes {
		out = append(out, Member{Name: n, Voter: true, Healthy: !f.down[n]})
	}
	return out, nil
}

func (f *fleet) start(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return
	}
	n := f.nodes[name]
	n.boot++
	boot := fmt.Sprintf("%s-boot-%d", name, n.boot)
	ctx, cancel := context.WithCancel(f.ctx)
	n.cancel, n.done = cancel, make(chan struct{})
	d, err := NewDriver(DriverOptions{
		Node: name, Updater: n.os, Interval: 300 * time.Millisecond,
		Download: func(context.Context, string) (int64, error) { return 100, nil },
		Open: func(_ context.Context, ref string) (slot.Source, error) {
			return fakeSource{payload.Manifest{Version: ref[strings.LastIndexByte(ref, ':')+1:]}}, nil
		},
		Reboot:   func(context.Context) error { go f.reboot(name); return nil },
		BootID:   func() (string, error) { return boot, nil },
		Members:  f.members,
		CaughtUp: func(context.Context) error { return nil },
	})
	if err != nil {
		f.t.Error(err)
		return
	}
	done := n.done
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(done)
		d.Run(ctx, f.cli)
	}()
}

// restart is an agent restart without a reboot.
func (f *fleet) restart(name string) {
	f.mu.Lock()
	n := f.nodes[name]
	cancel, done := n.cancel, n.done
	f.mu.Unlock()
	cancel()
	<-done
	f.start(name)
}

func (f *fleet) reboot(name string) {
	f.mu.Lock()
	n := f.nodes[name]
	f.reboots[name]++
	f.down[name] = true
	downNow := 0
	for _, d := range f.down {
		if d {
			downNow++
		}
	}
	f.peak = max(f.peak, downNow)
	dead := f.dead[name]
	cancel, done := n.cancel, n.done
	f.mu.Unlock()
	cancel()
	<-done
	if dead {
		return
	}
	time.Sleep(500 * time.Millisecond)
	bad := map[string]bool{}
	f.mu.Lock()
	for v := range f.bad {
		bad[v] = true
	}
	if f.badOn[name] {
		n.os.mu.Lock()
		bad[n.os.other] = true
		n.os.mu.Unlock()
	}
	f.mu.Unlock()
	n.os.boot(bad)
	f.mu.Lock()
	f.down[name] = false
	f.mu.Unlock()
	f.start(name)
}

func (f *fleet) target(tg Target, prev int64) {
	f.t.Helper()
	tg.Schema, tg.Created = TargetSchema, time.Now().UTC()
	if tg.Payload == "" {
		tg.Payload = DefaultPayload(tg.Version)
	}
	if err := PutTarget(context.Background(), f.cli, tg, prev); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleet) wait(what string, timeout time.Duration, cond func(Snapshot) bool) Snapshot {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	var snap Snapshot
	for time.Now().Before(deadline) {
		s, err := Load(context.Background(), f.cli)
		if err == nil {
			snap = s
			if cond(s) {
				return s
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.t.Fatalf("%s: not within %s; statuses %+v target %+v holders %+v", what, timeout, snap.Statuses, snap.Target, snap.Holders)
	return snap
}

func everyPhase(snap Snapshot, n int, p Phase) bool {
	if snap.Target == nil || len(snap.Statuses) != n {
		return false
	}
	for _, s := range snap.Statuses {
		if Effective(*snap.Target, s) != p {
			return false
		}
	}
	return true
}

func TestDriverRolloutOneAtATime(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4", "n5"}
	f := newFleet(t, names, "1.0.0")
	f.wait("idle statuses", 10*time.Second, func(s Snapshot) bool { return len(s.Statuses) == 5 })
	f.target(Target{Version: "1.1.0", MaxUnavailable: 2, Canary: 1, DeadlineSeconds: 30}, 0)
	// Agent restarts in the middle must not cause double reboots.
	go func() {
		for i := range 6 {
			time.Sleep(700 * time.Millisecond)
			f.restart(names[(i*2)%5])
		}
	}()
	snap := f.wait("every node done on 1.1.0", 60*time.Second, func(s Snapshot) bool { return everyPhase(s, 5, PhaseDone) })
	// A node writes done, then frees its slots (two writes; a driver
	// restarted in between frees them on its first step): the slots must
	// be free soon after, not in the same snapshot.
	freed := f.wait("reboot slots freed after the rollout", 30*time.Second, func(s Snapshot) bool {
		return len(s.Holders[DefaultGroup]) == 0 && len(s.Holders[VotersGroup]) == 0
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range names {
		if f.reboots[n] != 1 {
			t.Errorf("%s rebooted %d times, want 1", n, f.reboots[n])
		}
		s := snap.Statuses[n]
		if s.Current != "1.1.0" || s.Previous != "1.0.0" || s.Seconds["reboot"] <= 0 {
			t.Errorf("%s: %+v", n, s)
		}
	}
	// Five voters: quorum 3, so at most two may be down, and the group
	// allows two: the voters' semaphore must have kept it at two.
	if f.peak > 2 || f.peak < 1 {
		t.Errorf("%d nodes down at once, want 1 or 2", f.peak)
	}
	if !everyPhase(freed, 5, PhaseDone) {
		t.Errorf("after the slots were freed, not every node is done: %+v", freed.Statuses)
	}
}

func TestDriverFailingCanaryPausesAndAbortUnstages(t *testing.T) {
	names := []string{"n1", "n2", "n3"}
	f := newFleet(t, names, "1.0.0")
	f.bad["2.0.0"] = true
	f.wait("idle statuses", 10*time.Second, func(s Snapshot) bool { return len(s.Statuses) == 3 })
	f.target(Target{Version: "2.0.0", MaxUnavailable: 1, Canary: 1, DeadlineSeconds: 30, Tries: 1}, 0)
	snap := f.wait("canary rolled back, rollout paused", 30*time.Second, func(s Snapshot) bool {
		return s.Target.Paused && Effective(*s.Target, s.Statuses["n1"]) == PhaseRolledBack
	})
	if r := snap.Statuses["n1"].Reason; !strings.Contains(r, "health check failed") {
		t.Errorf("rollback reason %q", r)
	}
	if !strings.Contains(snap.Target.Reason, "error budget exceeded") || !strings.Contains(snap.Target.Reason, "n1") {
		t.Errorf("pause reason %q", snap.Target.Reason)
	}
	// The others staged but wait, saying why.
	snap = f.wait("others staged and waiting", 10*time.Second, func(s Snapshot) bool {
		return s.Statuses["n2"].Staged == "2.0.0" && strings.Contains(s.Statuses["n3"].Reason, "paused")
	})
	f.mu.Lock()
	if f.reboots["n2"]+f.reboots["n3"] != 0 || f.reboots["n1"] != 1 {
		t.Errorf("reboots %v: only the canary may reboot", f.reboots)
	}
	f.mu.Unlock()
	// Abort: the staged updates are withdrawn.
	tg := *snap.Target
	tg.Aborted, tg.Reason = true, "broken"
	f.target(tg, snap.TargetRevision)
	f.wait("staged updates withdrawn", 10*time.Second, func(s Snapshot) bool {
		return s.Statuses["n2"].Staged == "" && s.Statuses["n3"].Staged == ""
	})
	for _, n := range []string{"n2", "n3"} {
		if u := f.nodes[n].os.unstaged; len(u) != 1 || u[0] != "2.0.0" {
			t.Errorf("%s unstaged %v", n, u)
		}
	}
	// The target's tries reached every install.
	for _, n := range names {
		os := f.nodes[n].os
		os.mu.Lock()
		if len(os.tries) == 0 || slices.ContainsFunc(os.tries, func(v int) bool { return v != 1 }) {
			t.Errorf("%s installed with tries %v, want 1 each time", n, os.tries)
		}
		os.mu.Unlock()
	}
}

func TestDriverDeadHolderFreesSlotAndFails(t *testing.T) {
	names := []string{"n1", "n2", "n3"}
	f := newFleet(t, names, "1.0.0")
	f.dead["n1"] = true
	f.wait("idle statuses", 10*time.Second, func(s Snapshot) bool { return len(s.Statuses) == 3 })
	f.target(Target{Version: "1.1.0", MaxUnavailable: 1, Canary: 1, DeadlineSeconds: 3, MaxFailures: 1}, 0)
	snap := f.wait("n1 failed", 30*time.Second, func(s Snapshot) bool {
		return Effective(*s.Target, s.Statuses["n1"]) == PhaseFailed
	})
	if r := snap.Statuses["n1"].Reason; !strings.Contains(r, "did not return") {
		t.Errorf("failure reason %q", r)
	}
	// One failure is within the budget (max 1), but the canary failed:
	// the rest wait for it; the dead holder's slot is free again.
	snap = f.wait("slot freed", 15*time.Second, func(s Snapshot) bool { return len(s.Holders[DefaultGroup]) == 0 })
	if snap.Target.Paused {
		t.Errorf("paused with one failure and max_failures 1: %q", snap.Target.Reason)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reboots["n2"]+f.reboots["n3"] != 0 {
		t.Errorf("non-canaries rebooted while the canary failed: %v", f.reboots)
	}
}

func TestDriverAutoRevert(t *testing.T) {
	names := []string{"n1", "n2", "n3"}
	f := newFleet(t, names, "1.0.0")
	f.badOn["n2"], f.badOn["n3"] = true, true
	f.wait("idle statuses", 10*time.Second, func(s Snapshot) bool { return len(s.Statuses) == 3 })
	f.target(Target{Version: "1.1.0", MaxUnavailable: 1, Canary: 1, DeadlineSeconds: 30, AutoRevert: true}, 0)
	// The canary n1 takes 1.1.0; the next node fails it; the rollout
	// pauses and n1, which had moved, goes back to 1.0.0.
	snap := f.wait("n1 reverted", 30*time.Second, func(s Snapshot) bool {
		st := s.Statuses["n1"]
		return s.Target.Paused && st.Current == "1.0.0" && Effective(*s.Target, st) == PhaseRolledBack
	})
	if r := snap.Statuses["n1"].Reason; !strings.Contains(r, "rollback") {
		t.Errorf("n1's reason after the revert: %q", r)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reboots["n1"] != 2 {
		t.Errorf("n1 rebooted %d times, want 2 (update, revert)", f.reboots["n1"])
	}
	if f.reboots["n2"]+f.reboots["n3"] != 1 {
		t.Errorf("reboots %v: exactly one of n2, n3 should have tried 1.1.0", f.reboots)
	}
}

// A node back on its old OS after failed boots of the new one, whose
// health gate has not recorded the rollback yet, waits for that record
// (and its reason) even when its status is minutes old.
func TestDriverWaitsForRollbackReason(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	tg := Target{Schema: TargetSchema, Version: "2.0.0", Payload: DefaultPayload("2.0.0"), MaxUnavailable: 1, Created: time.Now().UTC()}
	if err := PutTarget(ctx, cli, tg, 0); err != nil {
		t.Fatal(err)
	}
	old := NodeStatus{Schema: StatusSchema, Node: "n1", Group: DefaultGroup, Target: "2.0.0", Phase: PhaseVerifying,
		Current: "2.0.0", BootID: "boot-of-2.0.0", Since: time.Now().Add(-10 * time.Minute).UTC()}
	if err := PutStatus(ctx, cli, old); err != nil {
		t.Fatal(err)
	}
	disk := &fakeOS{booted: "1.0.0", blessed: true, other: "2.0.0", otherSt: slot.SlotBad,
		last: &slot.Result{State: slot.UpdateBooted, Version: "2.0.0"}}
	d, err := NewDriver(DriverOptions{Node: "n1", Updater: disk,
		Download: func(context.Context, string) (int64, error) { return 0, nil },
		Open:     func(context.Context, string) (slot.Source, error) { return nil, fmt.Errorf("unused") },
		Reboot:   func(context.Context) error { return nil },
		BootID:   func() (string, error) { return "boot-of-1.0.0", nil }})
	if err != nil {
		t.Fatal(err)
	}
	d.cli, d.bootID, d.started = cli, "boot-of-1.0.0", time.Now()
	if err := d.step(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := Load(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if p := snap.Statuses["n1"].Phase; p != PhaseVerifying {
		t.Fatalf("phase %s before the gate recorded the rollback, want verifying (waiting for its reason)", p)
	}
	disk.mu.Lock()
	disk.last = &slot.Result{State: slot.UpdateRolledBack, Version: "2.0.0", Reason: "rolled back from 2.0.0 to 1.0.0: disk on fire"}
	disk.mu.Unlock()
	if err := d.step(ctx); err != nil {
		t.Fatal(err)
	}
	if snap, err = Load(ctx, cli); err != nil {
		t.Fatal(err)
	}
	if s := snap.Statuses["n1"]; s.Phase != PhaseRolledBack || !strings.Contains(s.Reason, "disk on fire") {
		t.Errorf("after the record: %+v", s)
	}
}
