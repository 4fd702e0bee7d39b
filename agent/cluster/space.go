package cluster

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// The pure decisions about etcd's space: which member to defragment now,
// when to compact at once and when to disarm a NOSPACE alarm. The leader's
// agent feeds them what it reads (spaceloop.go) and does what they say.

// MemberSpace is what the leader's agent knows of one member's backend.
type MemberSpace struct {
	ID       uint64
	Name     string
	Endpoint string // client URL the maintenance calls go to
	Leader   bool
	Learner  bool // etcd refuses Defragment on learners
	// Known: the member answered Status; the sizes below are valid.
	Known  bool
	DBSize int64 // the file, what the quota counts
	InUse  int64 // live pages; DBSize-InUse is what a defrag gives back
	// HoldsRebootSlot: the member's node is rebooting for a rollout.
	HoldsRebootSlot bool
	LastDefrag      time.Time // zero: not since this agent leads
}

func (m MemberSpace) reclaimable() int64 { return max(m.DBSize-m.InUse, 0) }

// SpacePolicy are the settings the decisions depend on.
type SpacePolicy struct {
	Quota          int64
	DefragInterval time.Duration
	// TakeoverWait: a new leader's agent defragments nothing this long
	// after taking over, so a defrag its predecessor started (which the
	// server finishes even when the caller went away) is over first.
	TakeoverWait time.Duration
}

// High and low water marks as fractions of the quota: at or above
// pressureAt a defrag is due whatever the interval; a NOSPACE alarm is
// disarmed only once every member is below disarmBelow, so that the next
// put does not raise it again at once.
const (
	pressureNum, pressureDen = 3, 4
	disarmNum, disarmDen     = 9, 10
	// pressureCooldown bounds how often one member is defragmented under
	// pressure, when writes keep freeing pages as fast as a defrag returns
	// them.
	pressureCooldown = time.Minute
)

// SpaceView is one look at the cluster's space.
type SpaceView struct {
	Now         time.Time
	LeaderSince time.Time // when this agent's member became the etcd leader
	Alarm       bool      // a NOSPACE alarm is active
	Revision    int64     // the store's current revision
	CompactedTo int64     // the revision this agent last compacted to
	Members     []MemberSpace
}

// SpaceActionKind is what the leader's agent does next.
type SpaceActionKind int

// The actions, at most one per look.
const (
	SpaceNone    SpaceActionKind = iota
	SpaceCompact                 // compact to SpaceView.Revision now
	SpaceDefrag                  // defragment Member
	SpaceDisarm                  // disarm the NOSPACE alarm
)

func (k SpaceActionKind) String() string {
	return [...]string{"none", "compact", "defrag", "disarm"}[k]
}

// SpaceAction is the decision; Reason says why (for the log), also for
// SpaceNone when something is wrong that the agent cannot fix.
type SpaceAction struct {
	Kind   SpaceActionKind
	Member MemberSpace
	Reason string
}

// NextSpaceAction decides the next step. Under a NOSPACE alarm: compact
// all history (watchers list again), defragment each member one at a
// time, then disarm once every member is below the low water mark.
// Otherwise: defragment one member whose file is at least half free
// space (and at least quota/64 of it) once per DefragInterval, or at once
// when its file passed 3/4 of the quota. Never a learner, a member that
// did not answer, or one whose node holds a reboot slot.
func NextSpaceAction(v SpaceView, p SpacePolicy) SpaceAction {
	if v.Alarm && v.CompactedTo < v.Revision {
		return SpaceAction{Kind: SpaceCompact, Reason: fmt.Sprintf("NOSPACE alarm: compacting all history up to revision %d", v.Revision)}
	}
	if d, ok := pickDefrag(v, p); ok {
		return d
	}
	if !v.Alarm {
		return SpaceAction{}
	}
	if v.Now.Sub(v.LeaderSince) < p.TakeoverWait {
		return SpaceAction{Reason: "NOSPACE alarm: this agent just became leader, waiting before defragmenting"}
	}
	var full []string
	for _, m := range v.Members {
		if m.Known && !m.Learner && m.DBSize*disarmDen >= p.Quota*disarmNum {
			full = append(full, fmt.Sprintf("%s %s (%s in use)", m.Name, humanize.IBytes(uint64(m.DBSize)), humanize.IBytes(uint64(m.InUse))))
		}
	}
	if len(full) > 0 {
		return SpaceAction{Reason: fmt.Sprintf("NOSPACE alarm stays: %s of quota %s after compaction and defragmentation: delete data or raise etcd_quota on every member",
			strings.Join(full, ", "), humanize.IBytes(uint64(p.Quota)))}
	}
	return SpaceAction{Kind: SpaceDisarm, Reason: "NOSPACE alarm: every member is below 90% of the quota again"}
}

func pickDefrag(v SpaceView, p SpacePolicy) (SpaceAction, bool) {
	if v.Now.Sub(v.LeaderSince) < p.TakeoverWait {
		return SpaceAction{}, false
	}
	minReclaim := p.Quota / 64
	type cand struct {
		m        MemberSpace
		pressure bool
		reason   string
	}
	var cands []cand
	for _, m := range v.Members {
		if !m.Known || m.Learner || m.HoldsRebootSlot {
			continue
		}
		free := m.reclaimable()
		pressure := v.Alarm || m.DBSize*pressureDen >= p.Quota*pressureNum
		since := v.Now.Sub(m.LastDefrag)
		if m.LastDefrag.IsZero() {
			since = p.DefragInterval
		}
		switch {
		case pressure && since >= min(p.DefragInterval, pressureCooldown) && free > 0 && free*10 >= m.DBSize:
			// Under pressure any tenth of the file helps; a defrag that
			// frees less would only repeat.
			what := "file over 3/4 of the quota"
			if v.Alarm {
				what = "NOSPACE alarm"
			}
			cands = append(cands, cand{m, true, fmt.Sprintf("%s: %s of %s free", what, humanize.IBytes(uint64(free)), humanize.IBytes(uint64(m.DBSize)))})
		case since < p.DefragInterval:
		case free >= minReclaim && free*2 >= m.DBSize && free > 0:
			cands = append(cands, cand{m, false, fmt.Sprintf("%s of %s free", humanize.IBytes(uint64(free)), humanize.IBytes(uint64(m.DBSize)))})
		}
	}
	if len(cands) == 0 {
		return SpaceAction{}, false
	}
	// Pressure first; followers before the leader (a defrag blocks the
	// member's applies for its duration); then the most space back.
	slices.SortFunc(cands, func(a, b cand) int {
		if a.pressure != b.pressure {
			if a.pressure {
				return -1
			}
			return 1
		}
		if a.m.Leader != b.m.Leader {
			if b.m.Leader {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.m.reclaimable(), a.m.reclaimable()); c != 0 {
			return c
		}
		return cmp.Compare(a.m.Name, b.m.Name)
	})
	c := cands[0]
	return SpaceAction{Kind: SpaceDefrag, Member: c.m, Reason: c.reason}, true
}
