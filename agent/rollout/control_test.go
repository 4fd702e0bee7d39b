package rollout

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = at("2026-11-21 02:30") // Saturday, inside "Sat 02:00-04:00"

func target(mut ...func(*Target)) *Target {
	t := &Target{Schema: TargetSchema, Version: "v2", Payload: "registry.berth/os:v2", MaxUnavailable: 2, Canary: 2}
	for _, m := range mut {
		m(t)
	}
	return t
}

// statuses builds n nodes named n00.. all staged for v2 (from v1), then
// applies the per-node overrides.
func statuses(n int, over map[string]func(*NodeStatus)) map[string]NodeStatus {
	out := map[string]NodeStatus{}
	for i := range n {
		name := fmt.Sprintf("n%02d", i)
		s := NodeStatus{Schema: StatusSchema, Node: name, Target: "v2", Phase: PhaseStaged, Current: "v1", Staged: "v2", Since: t0.Add(-time.Minute)}
		if f := over[name]; f != nil {
			f(&s)
		}
		out[name] = s
	}
	return out
}

func phase(p Phase) func(*NodeStatus) { return func(s *NodeStatus) { s.Phase = p } }

func TestMayReboot(t *testing.T) {
	done := phase(PhaseDone)
	cases := []struct {
		name   string
		target *Target
		st     map[string]NodeStatus
		node   string
		now    time.Time
		ok     bool
		reason string
	}{
		{"canary goes first", target(), statuses(5, nil), "n01", t0, true, "canary"},
		{"non-canary waits for canaries", target(), statuses(5, nil), "n02", t0, false, "waiting for canaries: n00 staged, n01 staged"},
		{"one canary done is not enough", target(), statuses(5, map[string]func(*NodeStatus){"n00": done}), "n04", t0, false, "waiting for canaries: n01 staged"},
		{"all canaries done", target(), statuses(5, map[string]func(*NodeStatus){"n00": done, "n01": done}), "n04", t0, true, ""},
		{"no canaries", target(func(t *Target) { t.Canary = 0 }), statuses(5, nil), "n04", t0, true, ""},
		{"canary count beyond the cluster", target(func(t *Target) { t.Canary = 9 }), statuses(3, nil), "n02", t0, true, "canary"},
		{"a canary already on the version joined", target(), statuses(5, map[string]func(*NodeStatus){
			"n00": done, "n01": func(s *NodeStatus) { s.Target, s.Phase, s.Current = "v0", PhaseDone, "v2" }}), "n03", t0, true, ""},
		{"stale status for an old target is idle", target(), statuses(5, map[string]func(*NodeStatus){
			"n00": func(s *NodeStatus) { s.Target = "v1" }}), "n00", t0, false, "is idle, not staged"},
		{"downloading is not staged", target(), statuses(5, map[string]func(*NodeStatus){"n00": phase(PhaseDownloading)}), "n00", t0, false, "not staged"},
		{"waiting-for-lock may go on", target(), statuses(5, map[string]func(*NodeStatus){"n00": phase(PhaseWaitingForLock)}), "n00", t0, true, "canary"},
		{"paused", target(func(t *Target) { t.Paused, t.Reason = true, "operator" }), statuses(5, nil), "n00", t0, false, "rollout paused: operator"},
		{"aborted", target(func(t *Target) { t.Aborted = true }), statuses(5, nil), "n00", t0, false, "rollout aborted"},
		{"unknown node", target(), statuses(5, nil), "zz", t0, false, "not part of the rollout"},
		{"other group", target(func(t *Target) { t.Group = "edge" }), statuses(5, nil), "n00", t0, false, "not part of the rollout"},
		{"inside the window", target(func(t *Target) { t.Window = "Sat 02:00-04:00" }), statuses(5, nil), "n00", t0, true, "canary"},
		{"outside the window", target(func(t *Target) { t.Window = "Sat 02:00-04:00" }), statuses(5, nil), "n00", t0.Add(2 * time.Hour), false, "outside the maintenance window"},
		{"a rolled-back canary spends the budget", target(), statuses(5, map[string]func(*NodeStatus){
			"n00": func(s *NodeStatus) { s.Phase, s.Reason = PhaseRolledBack, "health check failed" }}), "n01", t0, false,
			"error budget exceeded (1 failed, 0 allowed): node n00 rolled-back on v2: health check failed"},
		{"budget of 1 tolerates one failure", target(func(t *Target) { t.MaxFailures = 1 }), statuses(5, map[string]func(*NodeStatus){
			"n00": phase(PhaseFailed)}), "n01", t0, true, "canary"},
		{"a node down past the deadline spends the budget", target(), statuses(5, map[string]func(*NodeStatus){
			"n00": func(s *NodeStatus) { s.Phase, s.Since = PhaseRebooting, t0.Add(-16*time.Minute) }}), "n01", t0, false,
			"node n00 rebooting for 16m0s, past the deadline of 15m0s"},
		{"a node down within the deadline does not", target(), statuses(5, map[string]func(*NodeStatus){
			"n00": func(s *NodeStatus) { s.Phase, s.Since = PhaseVerifying, t0.Add(-14*time.Minute) }}), "n01", t0, true, "canary"},
	}
	for _, c := range cases {
		ok, reason := MayReboot(Snapshot{Target: c.target, Statuses: c.st}, c.node, c.now)
		if ok != c.ok || !strings.Contains(reason, c.reason) || (c.reason == "" && reason != "") {
			t.Errorf("%s: MayReboot = %v %q, want %v %q", c.name, ok, reason, c.ok, c.reason)
		}
	}
}

func TestMayRebootGroup(t *testing.T) {
	st := statuses(6, map[string]func(*NodeStatus){
		"n02": func(s *NodeStatus) { s.Group = "edge" },
		"n04": func(s *NodeStatus) { s.Group = "edge" },
	})
	tg := target(func(t *Target) { t.Group, t.Canary = "edge", 1 })
	if got := Canaries(*tg, st); fmt.Sprint(got) != "[n02]" {
		t.Fatalf("canaries of group edge = %v, want [n02]", got)
	}
	if ok, why := MayReboot(Snapshot{Target: tg, Statuses: st}, "n04", t0); ok || !strings.Contains(why, "n02 staged") {
		t.Errorf("n04 = %v %q, want to wait for canary n02", ok, why)
	}
}

func TestEvaluate(t *testing.T) {
	snap := Snapshot{Target: target(), Statuses: statuses(4, map[string]func(*NodeStatus){
		"n00": phase(PhaseDone),
		"n01": func(s *NodeStatus) { s.Phase, s.Since = PhaseRebooting, t0.Add(-20*time.Minute) },
	})}
	ev := Evaluate(snap, t0)
	if ev.Pause == nil || !ev.Pause.Paused || !strings.Contains(ev.Pause.Reason, "node n01 rebooting for 20m0s") {
		t.Fatalf("Evaluate pause = %+v, want paused for n01", ev.Pause)
	}
	if snap.Target.Paused {
		t.Fatal("Evaluate changed its input")
	}
	if len(ev.MarkFailed) != 1 || ev.MarkFailed[0].Node != "n01" || ev.MarkFailed[0].Phase != PhaseFailed ||
		!strings.Contains(ev.MarkFailed[0].Reason, "did not return within 15m0s") {
		t.Fatalf("MarkFailed = %+v", ev.MarkFailed)
	}
	// Already paused: nothing more to write about the target; a healthy
	// snapshot: nothing at all.
	snap.Target = ev.Pause
	if ev2 := Evaluate(snap, t0); ev2.Pause != nil {
		t.Errorf("re-paused an already paused target: %+v", ev2.Pause)
	}
	if ev3 := Evaluate(Snapshot{Target: target(), Statuses: statuses(4, nil)}, t0); ev3.Pause != nil || len(ev3.MarkFailed) != 0 {
		t.Errorf("healthy rollout evaluated to %+v", ev3)
	}
	// Same input, same output: decisions depend only on stored state.
	a, b := Evaluate(Snapshot{Target: target(), Statuses: snap.Statuses}, t0), Evaluate(Snapshot{Target: target(), Statuses: snap.Statuses}, t0)
	if fmt.Sprint(a.Pause, a.MarkFailed) != fmt.Sprint(b.Pause, b.MarkFailed) {
		t.Error("Evaluate is not deterministic")
	}
}

func TestRevertTo(t *testing.T) {
	st := statuses(3, map[string]func(*NodeStatus){
		"n00": func(s *NodeStatus) { s.Phase, s.Current, s.Previous = PhaseDone, "v2", "v1" },
		"n01": func(s *NodeStatus) { s.Phase, s.Reason = PhaseRolledBack, "health" },
	})
	paused := target(func(t *Target) { t.AutoRevert, t.Paused, t.Reason = true, true, "budget" })
	if v, ok := RevertTo(Snapshot{Target: paused, Statuses: st}, "n00", t0); !ok || v != "v1" {
		t.Errorf("RevertTo n00 = %q %v, want v1", v, ok)
	}
	for _, n := range []string{"n01", "n02"} {
		if _, ok := RevertTo(Snapshot{Target: paused, Statuses: st}, n, t0); ok {
			t.Errorf("RevertTo %s: only nodes that moved go back", n)
		}
	}
	noAuto := target(func(t *Target) { t.Paused = true })
	if _, ok := RevertTo(Snapshot{Target: noAuto, Statuses: st}, "n00", t0); ok {
		t.Error("RevertTo without auto_revert")
	}
	opPause := target(func(t *Target) { t.AutoRevert, t.Paused = true, true })
	delete(st, "n01")
	if _, ok := RevertTo(Snapshot{Target: opPause, Statuses: st}, "n00", t0); ok {
		t.Error("RevertTo when paused by the operator, not by the budget")
	}
}

func TestDocuments(t *testing.T) {
	tg := target(func(t *Target) { t.Window = "Sat 02:00-04:00"; t.Created = t0 })
	data, err := tg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseTarget(data)
	if err != nil || back != *tg {
		t.Fatalf("target round trip: %+v %v", back, err)
	}
	for name, bad := range map[string]*Target{
		"schema":   target(func(t *Target) { t.Schema = "x" }),
		"version":  target(func(t *Target) { t.Version = "" }),
		"max":      target(func(t *Target) { t.MaxUnavailable = 0 }),
		"canary":   target(func(t *Target) { t.Canary = -1 }),
		"group":    target(func(t *Target) { t.Group = "Bad_Group" }),
		"reserved": target(func(t *Target) { t.Group = VotersGroup }),
		"window":   target(func(t *Target) { t.Window = "Caturday 02:00-04:00" }),
	} {
		if _, err := bad.Marshal(); err == nil {
			t.Errorf("target with bad %s accepted", name)
		}
	}
	s := statuses(1, nil)["n00"]
	s.BootID, s.Seconds = "b1", map[string]float64{"download": 1.5}
	data, err = s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseStatus(data); err != nil || !reflect.DeepEqual(back, s) {
		t.Fatalf("status round trip: %+v %v", back, err)
	}
	s.Phase = "sleeping"
	if _, err := s.Marshal(); err == nil {
		t.Error("unknown phase accepted")
	}
	if _, err := ParseStatus([]byte(`{"schema":"berth.rollout-status.v2","node":"a"}`)); err == nil {
		t.Error("future schema accepted")
	}
	if g, h, err := ParseLockKey(LockKey("all", "node-1")); err != nil || g != "all" || h != "node-1" {
		t.Errorf("ParseLockKey = %q %q %v", g, h, err)
	}
	if _, _, err := ParseLockKey(LockGroupPrefix("all") + "a/b"); err == nil {
		t.Error("ParseLockKey accepted a nested key")
	}
	if StatusKey("node-1") != "/berth/v1/rollout/status/node-1" || TargetKey != "/berth/v1/rollout/target" {
		t.Error("key layout changed")
	}
}
