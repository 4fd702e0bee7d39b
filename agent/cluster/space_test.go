package cluster

import (
	"strings"
	"testing"
	"time"
)

func TestNextSpaceAction(t *testing.T) {
	const mib = 1 << 20
	now := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	pol := SpacePolicy{Quota: 64 * mib, DefragInterval: time.Hour, TakeoverWait: 30 * time.Second}
	longAgo := now.Add(-time.Hour)
	m := func(name string, size, inUse int64) MemberSpace {
		return MemberSpace{Name: name, Known: true, DBSize: size * mib, InUse: inUse * mib}
	}
	leader := func(x MemberSpace) MemberSpace { x.Leader = true; return x }
	defragged := func(x MemberSpace, ago time.Duration) MemberSpace { x.LastDefrag = now.Add(-ago); return x }
	cases := []struct {
		name    string
		view    SpaceView
		kind    SpaceActionKind
		member  string // for SpaceDefrag
		because string // in Reason
	}{
		{name: "small and tidy: nothing",
			view: SpaceView{Members: []MemberSpace{m("a", 3, 2), m("b", 2, 2)}}},
		{name: "half free and over quota/64: defrag the one with most back",
			view: SpaceView{Members: []MemberSpace{m("a", 8, 3), m("b", 10, 4), m("c", 2, 2)}},
			kind: SpaceDefrag, member: "b", because: "6.0 MiB of 10 MiB free"},
		{name: "less than half free: nothing",
			view: SpaceView{Members: []MemberSpace{m("a", 20, 11)}}},
		{name: "half free but under quota/64 (1 MiB): nothing",
			view: SpaceView{Members: []MemberSpace{{Name: "a", Known: true, DBSize: mib, InUse: mib / 4}}}},
		{name: "defragmented within the interval: not again",
			view: SpaceView{Members: []MemberSpace{defragged(m("a", 8, 3), 30*time.Minute)}}},
		{name: "defragmented an interval ago: again",
			view: SpaceView{Members: []MemberSpace{defragged(m("a", 8, 3), time.Hour)}},
			kind: SpaceDefrag, member: "a"},
		{name: "followers before the leader",
			view: SpaceView{Members: []MemberSpace{leader(m("a", 30, 2)), m("b", 8, 3)}},
			kind: SpaceDefrag, member: "b"},
		{name: "the leader when it is the only one",
			view: SpaceView{Members: []MemberSpace{leader(m("a", 30, 2)), m("b", 8, 7)}},
			kind: SpaceDefrag, member: "a"},
		{name: "never a learner, an unknown member or a reboot-slot holder",
			view: SpaceView{Members: []MemberSpace{
				{Name: "l", Known: true, Learner: true, DBSize: 30 * mib, InUse: mib},
				{Name: "u", DBSize: 30 * mib, InUse: mib},
				{Name: "r", Known: true, HoldsRebootSlot: true, DBSize: 30 * mib, InUse: mib},
			}}},
		{name: "reboot-slot holder skipped, the next one taken",
			view: SpaceView{Members: []MemberSpace{{Name: "r", Known: true, HoldsRebootSlot: true, DBSize: 30 * mib, InUse: mib}, m("b", 8, 3)}},
			kind: SpaceDefrag, member: "b"},
		{name: "over 3/4 of the quota: at once despite the interval and a small reclaim",
			view: SpaceView{Members: []MemberSpace{m("a", 20, 11), defragged(m("b", 50, 40), 2*time.Minute)}},
			kind: SpaceDefrag, member: "b", because: "over 3/4 of the quota"},
		{name: "over 3/4 but defragmented seconds ago: wait",
			view: SpaceView{Members: []MemberSpace{defragged(m("b", 50, 40), 10*time.Second)}}},
		{name: "over 3/4 with almost nothing free: nothing to gain",
			view: SpaceView{Members: []MemberSpace{m("b", 50, 48)}}},
		{name: "pressure before a bigger ordinary reclaim",
			view: SpaceView{Members: []MemberSpace{m("a", 40, 2), m("b", 50, 40)}},
			kind: SpaceDefrag, member: "b"},
		{name: "new leader waits before any defrag",
			view: SpaceView{LeaderSince: now.Add(-10 * time.Second), Members: []MemberSpace{m("b", 50, 4)}}},
		{name: "NOSPACE: compact first",
			view: SpaceView{Alarm: true, Revision: 900, CompactedTo: 0, Members: []MemberSpace{m("a", 64, 60)}},
			kind: SpaceCompact, because: "up to revision 900"},
		{name: "NOSPACE, compacted: defrag one member",
			view: SpaceView{Alarm: true, Revision: 900, CompactedTo: 900, Members: []MemberSpace{m("a", 64, 1), defragged(m("b", 64, 1), 5*time.Second), m("c", 2, 1)}},
			kind: SpaceDefrag, member: "a", because: "NOSPACE alarm"},
		{name: "NOSPACE, all defragmented and small: disarm",
			view: SpaceView{Alarm: true, Revision: 900, CompactedTo: 900, Members: []MemberSpace{defragged(m("a", 2, 1), 5*time.Second), m("b", 2, 2), {Name: "down"}}},
			kind: SpaceDisarm},
		{name: "NOSPACE with live data over 90%: stay and say what to do",
			view:    SpaceView{Alarm: true, Revision: 900, CompactedTo: 900, Members: []MemberSpace{m("a", 60, 60), m("b", 2, 2)}},
			because: "delete data or raise etcd_quota"},
		{name: "NOSPACE, a member still over 90% but not defragmented yet: defrag, not disarm",
			view: SpaceView{Alarm: true, Revision: 900, CompactedTo: 900, Members: []MemberSpace{m("a", 2, 2), m("b", 62, 20)}},
			kind: SpaceDefrag, member: "b"},
		{name: "NOSPACE, new leader: neither defrag nor disarm yet",
			view:    SpaceView{Alarm: true, Revision: 900, CompactedTo: 900, LeaderSince: now.Add(-time.Second), Members: []MemberSpace{m("a", 2, 1)}},
			because: "just became leader"},
	}
	for _, tc := range cases {
		v := tc.view
		v.Now = now
		if v.LeaderSince.IsZero() {
			v.LeaderSince = longAgo
		}
		got := NextSpaceAction(v, pol)
		if got.Kind != tc.kind {
			t.Errorf("%s: %s (%s), want %s", tc.name, got.Kind, got.Reason, tc.kind)
			continue
		}
		if tc.kind == SpaceDefrag && tc.member != "" && got.Member.Name != tc.member {
			t.Errorf("%s: defrag %s (%s), want %s", tc.name, got.Member.Name, got.Reason, tc.member)
		}
		if !strings.Contains(got.Reason, tc.because) {
			t.Errorf("%s: reason %q lacks %q", tc.name, got.Reason, tc.because)
		}
	}
}
