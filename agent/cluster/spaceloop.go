package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

const (
	// How often an agent looks at etcd's space and alarms. Members ask
	// their own member (local, cheap); clients ask one endpoint, less often,
	// since a thousand of them share three members.
	memberSpaceCheck = 5 * time.Second
	clientSpaceCheck = 15 * time.Second
	// defragTimeout bounds one Defragment call; a new leader's agent waits
	// as long before its first defrag, so that one started by its
	// predecessor is over: never two at once.
	defragTimeout = time.Minute
	// DefragTakeoverWait is how long a new leader's agent waits before
	// its first defrag (tests bound a recovery across a leader change).
	DefragTakeoverWait = defragTimeout
	// spaceLowNum/Den: a member's file at 80% of the quota shows as
	// etcd_space "low" in its node document.
	spaceLowNum, spaceLowDen = 4, 5
)

// Space is what the node document says of etcd's space: nodedoc.SpaceLow,
// nodedoc.SpaceFull or "".
func (a *Agent) Space() string { return a.space.Load().(string) }

// spaceLoopState is what the space loop remembers between looks.
type spaceLoopState struct {
	alarm       bool
	leaderSince time.Time // zero while this agent's member does not lead
	compactedTo int64
	lastDefrag  map[uint64]time.Time
	lastReason  string // of the last SpaceNone with a reason, logged once
}

// spaceLoop runs on every agent: it reports a NOSPACE alarm (metric, log,
// node document) and, on the etcd leader's agent, compacts, defragments
// and disarms as NextSpaceAction says.
func (a *Agent) spaceLoop(ctx context.Context) {
	st := &spaceLoopState{lastDefrag: map[uint64]time.Time{}}
	acted := false
	for {
		interval := clientSpaceCheck
		if a.member.running() {
			interval = memberSpaceCheck
		}
		if acted {
			interval = time.Second // the next step of a recovery follows at once
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		var err error
		acted, err = a.checkSpace(ctx, st)
		if err != nil && ctx.Err() == nil {
			a.log.Debug("etcd space check", "err", err)
		}
	}
}

// checkSpace looks once; acted tells whether the leader's agent did
// something (compact, defrag, disarm).
func (a *Agent) checkSpace(ctx context.Context, st *spaceLoopState) (acted bool, err error) {
	status, err := a.ownStatus(ctx)
	if err != nil {
		return false, err
	}
	alarm := hasNoSpace(status.Errors)
	a.noteAlarm(st, alarm)
	member := a.member.running()
	space := ""
	if member && status.DbSize*spaceLowDen >= a.opts.QuotaBytes*spaceLowNum {
		space = nodedoc.SpaceLow
	}
	if alarm {
		space = nodedoc.SpaceFull
	}
	if old := a.space.Swap(space); old != space {
		if space == nodedoc.SpaceLow {
			a.log.Warn("etcd member's database past 80% of its quota", "size", humanize.IBytes(uint64(status.DbSize)),
				"in_use", humanize.IBytes(uint64(status.DbSizeInUse)), "quota", humanize.IBytes(uint64(a.opts.QuotaBytes)))
		}
		a.Republish()
	}
	if !a.member.leads() {
		st.leaderSince = time.Time{}
		return false, nil
	}
	if st.leaderSince.IsZero() {
		st.leaderSince = time.Now()
	}
	return a.spaceStep(ctx, st, alarm, status.Header.GetRevision())
}

// ownStatus asks this node's own member, or for a client node the first
// endpoint that answers.
func (a *Agent) ownStatus(ctx context.Context) (*clientv3.StatusResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if a.member.running() {
		return a.member.status()
	}
	var errs []error
	for _, ep := range a.cli.Endpoints() {
		s, err := a.cli.Status(cctx, ep)
		if err == nil {
			return s, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
	}
	return nil, fmt.Errorf("etcd status: %w", errors.Join(errs...))
}

// hasNoSpace reads a Status response's alarm list ("memberID:... alarm:NOSPACE").
func hasNoSpace(errs []string) bool {
	for _, e := range errs {
		if strings.Contains(e, etcdserverpb.AlarmType_NOSPACE.String()) {
			return true
		}
	}
	return false
}

func (a *Agent) noteAlarm(st *spaceLoopState, alarm bool) {
	if alarm == st.alarm {
		return
	}
	st.alarm = alarm
	if alarm {
		nospaceGauge.Set(1)
		a.log.Error("etcd NOSPACE alarm: the cluster refuses writes", "quota", humanize.IBytes(uint64(a.opts.QuotaBytes)), "what_next", nodedoc.NoSpaceHint)
		return
	}
	nospaceGauge.Set(0)
	a.log.Info("etcd NOSPACE alarm cleared: writes are accepted again")
}

// spaceStep reads every member's space and does what NextSpaceAction says.
func (a *Agent) spaceStep(ctx context.Context, st *spaceLoopState, alarm bool, rev int64) (acted bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	list, err := a.cli.MemberList(cctx)
	if err != nil {
		return false, fmt.Errorf("list members: %w", err)
	}
	var holders map[string]bool
	if a.opts.RebootSlotHolders != nil {
		// Never defragment blind: without the holders, wait for the next look.
		if holders, err = a.opts.RebootSlotHolders(cctx, a.cli); err != nil {
			return false, fmt.Errorf("reboot slot holders: %w", err)
		}
	}
	leader := a.member.leader()
	view := SpaceView{Now: time.Now(), LeaderSince: st.leaderSince, Alarm: alarm, Revision: rev, CompactedTo: st.compactedTo}
	for _, m := range list.Members {
		ms := MemberSpace{ID: m.ID, Name: m.Name, Leader: m.ID == leader, Learner: m.IsLearner,
			HoldsRebootSlot: holders[m.Name], LastDefrag: st.lastDefrag[m.ID]}
		if len(m.ClientURLs) > 0 {
			ms.Endpoint = m.ClientURLs[0]
			if s, err := a.cli.Status(cctx, ms.Endpoint); err == nil {
				ms.Known, ms.DBSize, ms.InUse = true, s.DbSize, s.DbSizeInUse
			}
		}
		view.Members = append(view.Members, ms)
	}
	act := NextSpaceAction(view, SpacePolicy{Quota: a.opts.QuotaBytes, DefragInterval: a.opts.DefragInterval, TakeoverWait: defragTimeout})
	return act.Kind != SpaceNone, a.doSpaceAction(ctx, st, act, rev)
}

func (a *Agent) doSpaceAction(ctx context.Context, st *spaceLoopState, act SpaceAction, rev int64) error {
	if act.Kind != SpaceNone {
		st.lastReason = ""
	}
	outcome := func(err error) string {
		if err != nil {
			return "error"
		}
		return "ok"
	}
	switch act.Kind {
	case SpaceNone:
		if act.Reason != "" && act.Reason != st.lastReason {
			a.log.Warn("etcd space", "state", act.Reason)
		}
		st.lastReason = act.Reason
		return nil
	case SpaceCompact:
		cctx, cancel := context.WithTimeout(ctx, defragTimeout)
		defer cancel()
		_, err := a.cli.Compact(cctx, rev)
		if errors.Is(err, rpctypes.ErrCompacted) {
			err = nil // auto-compaction or an earlier leader got there
		}
		spaceActionsTotal.WithLabelValues("compact", outcome(err)).Inc()
		if err != nil {
			return fmt.Errorf("compact to revision %d: %w", rev, err)
		}
		st.compactedTo = rev
		a.log.Warn("compacted etcd history", "revision", rev, "reason", act.Reason)
		return nil
	case SpaceDefrag:
		m := act.Member
		st.lastDefrag[m.ID] = time.Now() // also after a failure: no hammering
		cctx, cancel := context.WithTimeout(ctx, defragTimeout)
		defer cancel()
		start := time.Now()
		_, err := a.cli.Defragment(cctx, m.Endpoint)
		spaceActionsTotal.WithLabelValues("defrag", outcome(err)).Inc()
		if err != nil {
			return fmt.Errorf("defragment member %s at %s: %w", m.Name, m.Endpoint, err)
		}
		after := "?"
		if s, err := a.cli.Status(cctx, m.Endpoint); err == nil {
			after = humanize.IBytes(uint64(s.DbSize))
		}
		a.log.Info("defragmented etcd member", "member", m.Name, "before", humanize.IBytes(uint64(m.DBSize)), "after", after,
			"took", time.Since(start).Round(time.Millisecond), "reason", act.Reason)
		return nil
	case SpaceDisarm:
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		alarms, err := a.cli.AlarmList(cctx)
		if err != nil {
			return fmt.Errorf("list alarms: %w", err)
		}
		for _, am := range alarms.Alarms {
			if am.Alarm != etcdserverpb.AlarmType_NOSPACE {
				continue // CORRUPT and others are for a human
			}
			_, err := a.cli.AlarmDisarm(cctx, &clientv3.AlarmMember{MemberID: am.MemberID, Alarm: am.Alarm})
			spaceActionsTotal.WithLabelValues("disarm", outcome(err)).Inc()
			if err != nil {
				return fmt.Errorf("disarm NOSPACE alarm of member %x: %w", am.MemberID, err)
			}
		}
		a.log.Warn("disarmed etcd NOSPACE alarm", "reason", act.Reason)
		return nil
	}
	return nil
}
