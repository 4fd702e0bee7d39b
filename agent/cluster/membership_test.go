package cluster

import (
	"reflect"
	"testing"
	"time"
)

func TestDecideMembers(t *testing.T) {
	now := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	const dead = 30 * time.Second
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	voter := func(id uint64, name string) MemberInfo { return MemberInfo{ID: id, Name: name} }
	learner := func(id uint64, name string) MemberInfo { return MemberInfo{ID: id, Name: name, Learner: true} }
	// a (self, 1) and b (2) alive, c (3) missing unless a case says otherwise.
	three := []MemberInfo{voter(1, "a"), voter(2, "b"), voter(3, "c")}
	ab := map[string]bool{"a": true, "b": true}
	missing := func(name string, since time.Time) MemberClocks {
		return MemberClocks{MissingSince: map[string]time.Time{name: since}}
	}
	cases := []struct {
		name      string
		in        MembershipInput
		probe     []uint64
		actions   []MemberAction
		missing   map[string]time.Time // the clocks after, when checked
		unstarted map[uint64]time.Time
	}{
		{name: "all alive: nothing",
			in:      MembershipInput{Members: three, Alive: map[string]bool{"a": true, "b": true, "c": true}},
			missing: map[string]time.Time{}},
		{name: "voter's document gone: its clock starts",
			in:      MembershipInput{Members: three, Alive: ab},
			missing: map[string]time.Time{"c": now}},
		{name: "missing for dead-after exactly: not yet",
			in:      MembershipInput{Members: three, Alive: ab, Clocks: missing("c", ago(dead))},
			missing: map[string]time.Time{"c": ago(dead)}},
		{name: "missing for longer than dead-after: probe first",
			in:    MembershipInput{Members: three, Alive: ab, Clocks: missing("c", ago(dead+time.Second))},
			probe: []uint64{3}, missing: map[string]time.Time{"c": ago(dead + time.Second)}},
		{name: "probed and silent: removed",
			in: MembershipInput{Members: three, Alive: ab, Clocks: missing("c", ago(dead+time.Second)),
				Probed: true, Answering: map[uint64]bool{}},
			actions: []MemberAction{{Kind: MemberRemoveDead, ID: 3, Name: "c", Reason: "node document missing for 31s"}},
			// kept until the removal succeeds (VoterRemoved)
			missing: map[string]time.Time{"c": ago(dead + time.Second)}},
		{name: "probed and answering: not removed, its clock restarts",
			in: MembershipInput{Members: three, Alive: ab, Clocks: missing("c", ago(dead+time.Second)),
				Probed: true, Answering: map[uint64]bool{3: true}},
			actions: []MemberAction{{Kind: MemberSpare, ID: 3, Name: "c", For: 31 * time.Second}},
			missing: map[string]time.Time{"c": now}},
		{name: "reboot-slot holder without a document: never removed, clock cleared",
			in: MembershipInput{Members: three, Alive: ab, RebootHolders: map[string]bool{"c": true},
				Clocks: missing("c", ago(time.Hour)), Probed: true, Answering: map[uint64]bool{}},
			missing: map[string]time.Time{}},
		{name: "document back: clock cleared",
			in:      MembershipInput{Members: three, Alive: map[string]bool{"a": true, "b": true, "c": true}, Clocks: missing("c", ago(time.Hour))},
			missing: map[string]time.Time{}},
		{name: "self never removed",
			in: MembershipInput{Self: 1, Members: three, Alive: map[string]bool{"b": true, "c": true},
				Clocks: missing("a", ago(time.Hour)), Probed: true, Answering: map[uint64]bool{}},
			missing: map[string]time.Time{"a": ago(time.Hour)}},
		{name: "unstarted voter (no name) left alone",
			in:      MembershipInput{Members: []MemberInfo{voter(1, "a"), voter(4, "")}, Alive: map[string]bool{"a": true}},
			missing: map[string]time.Time{}},
		{name: "started learner: promoted",
			in:      MembershipInput{Members: append(three, learner(4, "d")), Alive: map[string]bool{"a": true, "b": true, "c": true, "d": true}},
			actions: []MemberAction{{Kind: MemberPromote, ID: 4, Name: "d"}}},
		{name: "learner never started: its clock starts",
			in:        MembershipInput{Members: append(three, learner(4, "")), Alive: map[string]bool{"a": true, "b": true, "c": true}},
			unstarted: map[uint64]time.Time{4: now}},
		{name: "learner never started, not yet dead-after",
			in: MembershipInput{Members: append(three, learner(4, "")), Alive: map[string]bool{"a": true, "b": true, "c": true},
				Clocks: MemberClocks{UnstartedSince: map[uint64]time.Time{4: ago(dead)}}},
			unstarted: map[uint64]time.Time{4: ago(dead)}},
		{name: "learner never started for longer than dead-after: removed, clock stopped",
			in: MembershipInput{Members: append(three, learner(4, "")), Alive: map[string]bool{"a": true, "b": true, "c": true},
				Clocks: MemberClocks{UnstartedSince: map[uint64]time.Time{4: ago(dead + time.Second)}}},
			actions:   []MemberAction{{Kind: MemberRemoveUnstarted, ID: 4, Reason: "learner never started"}},
			unstarted: map[uint64]time.Time{}},
		{name: "learners first, then voters, in member order",
			in: MembershipInput{Members: []MemberInfo{voter(1, "a"), voter(3, "c"), learner(4, "d"), voter(5, "e"), learner(6, "f")},
				Alive: map[string]bool{"a": true, "d": true, "f": true}, Probed: true, Answering: map[uint64]bool{},
				Clocks: MemberClocks{MissingSince: map[string]time.Time{"c": ago(time.Minute), "e": ago(time.Hour)}}},
			actions: []MemberAction{
				{Kind: MemberPromote, ID: 4, Name: "d"}, {Kind: MemberPromote, ID: 6, Name: "f"},
				{Kind: MemberRemoveDead, ID: 3, Name: "c", Reason: "node document missing for 1m0s"},
				{Kind: MemberRemoveDead, ID: 5, Name: "e", Reason: "node document missing for 1h0m0s"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Now, tc.in.DeadAfter = now, dead
			before := tc.in.Clocks.clone()
			p := DecideMembers(tc.in)
			if !reflect.DeepEqual(p.Probe, tc.probe) {
				t.Errorf("probe = %v, want %v", p.Probe, tc.probe)
			}
			if !reflect.DeepEqual(p.Actions, tc.actions) {
				t.Errorf("actions = %+v, want %+v", p.Actions, tc.actions)
			}
			if tc.missing != nil && !reflect.DeepEqual(p.Clocks.MissingSince, tc.missing) {
				t.Errorf("missing clocks = %v, want %v", p.Clocks.MissingSince, tc.missing)
			}
			if tc.unstarted != nil && !reflect.DeepEqual(p.Clocks.UnstartedSince, tc.unstarted) {
				t.Errorf("unstarted clocks = %v, want %v", p.Clocks.UnstartedSince, tc.unstarted)
			}
			if tc.in.Clocks.MissingSince != nil && !reflect.DeepEqual(tc.in.Clocks.MissingSince, before.MissingSince) ||
				tc.in.Clocks.UnstartedSince != nil && !reflect.DeepEqual(tc.in.Clocks.UnstartedSince, before.UnstartedSince) {
				t.Error("the decision changed its input's clocks")
			}
		})
	}
}

// A successful removal stops the voter's clock and makes the next gap
// decision fill the seat at once.
func TestVoterRemovedFillsAtOnce(t *testing.T) {
	now := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	const dead = 30 * time.Second
	c := MemberClocks{MissingSince: map[string]time.Time{"c": now.Add(-time.Minute), "x": now}}
	c.VoterRemoved("c")
	if _, ok := c.MissingSince["c"]; ok || !c.HealNow || len(c.MissingSince) != 1 {
		t.Fatalf("clocks after VoterRemoved: %+v", c)
	}
	p := DecideVoterGap(VoterGapInput{Now: now, DeadAfter: dead, Target: 3,
		Members: []MemberInfo{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}},
		Alive:   map[string]bool{"a": true, "b": true, "d": true}, Clients: []string{"d"}, Clocks: c})
	if want := []MemberAction{{Kind: MemberAsk, Name: "d"}}; !reflect.DeepEqual(p.Actions, want) {
		t.Fatalf("actions = %+v, want %+v", p.Actions, want)
	}
	if p.Clocks.HealNow || !p.Clocks.ShortSince.Equal(now.Add(-dead)) {
		t.Fatalf("clocks = %+v", p.Clocks)
	}
}

func TestDecideVoterGap(t *testing.T) {
	now := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	const dead = 30 * time.Second
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	two := []MemberInfo{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}}
	alive := map[string]bool{"a": true, "b": true, "d": true, "e": true}
	short := func(since time.Time) MemberClocks { return MemberClocks{ShortSince: since} }
	cases := []struct {
		name     string
		in       VoterGapInput
		actions  []MemberAction
		noClient bool
		short    time.Time // ShortSince after
		healNow  bool
	}{
		{name: "enough voters: clocks cleared",
			in: VoterGapInput{Members: two, Target: 2, Alive: alive, Clients: []string{"d"},
				Clocks: MemberClocks{ShortSince: ago(time.Hour), HealNow: true}}},
		{name: "no cluster config (target 0): clocks cleared",
			in: VoterGapInput{Members: two, Alive: alive, Clocks: short(ago(time.Hour))}},
		{name: "a learner: wait for its promotion, clocks kept",
			in: VoterGapInput{Members: append(two, MemberInfo{ID: 4, Name: "d", Learner: true}), Target: 5,
				Alive: alive, Clients: []string{"e"}, Clocks: MemberClocks{ShortSince: ago(time.Hour), HealNow: true}},
			short: ago(time.Hour), healNow: true},
		{name: "short: the clock starts, nobody asked yet",
			in:    VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"d"}},
			short: now},
		{name: "short for less than dead-after: nobody asked",
			in:    VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"d"}, Clocks: short(ago(dead - time.Second))},
			short: ago(dead - time.Second)},
		{name: "short for dead-after: the first live client asked",
			in: VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"c", "d", "e"},
				Clocks: short(ago(dead))},
			actions: []MemberAction{{Kind: MemberAsk, Name: "d"}}, short: ago(dead)},
		{name: "a client holding a reboot slot counts as alive",
			in: VoterGapInput{Members: two, Target: 3, Alive: map[string]bool{"a": true}, RebootHolders: map[string]bool{"c": true},
				Clients: []string{"c"}, Clocks: short(ago(dead))},
			actions: []MemberAction{{Kind: MemberAsk, Name: "c"}}, short: ago(dead)},
		{name: "no client alive: nothing",
			in:       VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"c"}, Clocks: short(ago(time.Hour))},
			noClient: true, short: ago(time.Hour)},
		{name: "a fresh request to a live client: wait",
			in: VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"d", "e"}, Clocks: short(ago(time.Hour)),
				Requests: []PromoteRequest{{Key: "k/d", Name: "d", AskedAt: ago(dead)}}},
			short: ago(time.Hour)},
		{name: "request older than dead-after: withdrawn, the first live client asked again",
			in: VoterGapInput{Members: two, Target: 3, Alive: alive, Clients: []string{"d", "e"}, Clocks: short(ago(time.Hour)),
				Requests: []PromoteRequest{{Key: "k/d", Name: "d", AskedAt: ago(dead + time.Second)}}},
			actions: []MemberAction{{Kind: MemberWithdraw, Name: "d", Key: "k/d"}, {Kind: MemberAsk, Name: "d"}},
			short:   ago(time.Hour)},
		{name: "request to a dead node or unreadable: withdrawn; a fresh one still waits",
			in: VoterGapInput{Members: two, Target: 4, Alive: alive, Clients: []string{"d", "e"}, Clocks: short(ago(time.Hour)),
				Requests: []PromoteRequest{{Key: "k/c", Name: "c", AskedAt: now}, {Key: "k/d", Name: "d"},
					{Key: "k/e", Name: "e", AskedAt: now}}},
			actions: []MemberAction{{Kind: MemberWithdraw, Name: "c", Key: "k/c"}, {Kind: MemberWithdraw, Name: "d", Key: "k/d"}},
			short:   ago(time.Hour)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Now, tc.in.DeadAfter = now, dead
			p := DecideVoterGap(tc.in)
			if !reflect.DeepEqual(p.Actions, tc.actions) {
				t.Errorf("actions = %+v, want %+v", p.Actions, tc.actions)
			}
			if p.NoClient != tc.noClient {
				t.Errorf("NoClient = %v, want %v", p.NoClient, tc.noClient)
			}
			if !p.Clocks.ShortSince.Equal(tc.short) || p.Clocks.HealNow != tc.healNow {
				t.Errorf("ShortSince, HealNow = %v, %v; want %v, %v", p.Clocks.ShortSince, p.Clocks.HealNow, tc.short, tc.healNow)
			}
		})
	}
}
