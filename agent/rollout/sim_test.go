package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// sim drives simulated nodes through a real embedded etcd, one round at a
// time: the leader evaluates, then every node takes at most one step, each
// decided only from the snapshot read at the start of the round (so nodes
// act on slightly stale state, as real agents do), with the steps of one
// round running concurrently. A simulated minute passes per round.
type sim struct {
	t       *testing.T
	cli     *clientv3.Client
	now     time.Time
	nodes   []*simNode
	byName  map[string]*simNode
	members []Member
	// peakDown is the most nodes of a group seen down (rebooting,
	// verifying) in one snapshot; peakVotersDown the same for voters.
	peakDown       map[string]int
	peakVotersDown int
	// trace, when set, is called with every snapshot.
	trace func(Snapshot)
}

type simNode struct {
	name, group string
	version     string
	voter       bool
	lease       clientv3.LeaseID
	sem, voters *Semaphore
	failHealth  bool // the target version fails the health gate here
	dead        bool // killed: takes no more steps
}

func newSim(t *testing.T, n int, groups []string, voterEvery int, tg Target) *sim {
	t.Helper()
	e := etcdtest.Start(t, etcdtest.Options{})
	s := &sim{t: t, cli: e.Client(t), now: at("2026-11-21 02:00"), byName: map[string]*simNode{}, peakDown: map[string]int{}}
	ctx := context.Background()
	for i := range n {
		nd := &simNode{name: fmt.Sprintf("node-%03d", i), group: groups[i%len(groups)], version: "v1", voter: i%voterEvery == 0}
		nd.lease = grant(t, s.cli, 600)
		nd.sem = newSem(t, s.cli, nd.group, nd.name, nd.lease)
		nd.voters = newSem(t, s.cli, VotersGroup, nd.name, nd.lease)
		s.nodes = append(s.nodes, nd)
		s.byName[nd.name] = nd
		if nd.voter {
			s.members = append(s.members, Member{Name: nd.name, Voter: true})
		}
		st := NodeStatus{Schema: StatusSchema, Node: nd.name, Group: nd.group, Target: "v1", Phase: PhaseDone, Current: "v1", Since: s.now}
		if err := PutStatus(ctx, s.cli, st); err != nil {
			t.Fatal(err)
		}
	}
	tg.Created = s.now
	if err := PutTarget(ctx, s.cli, tg, 0); err != nil {
		t.Fatal(err)
	}
	if err := PutTarget(ctx, s.cli, tg, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create of the target = %v, want ErrConflict", err)
	}
	return s
}

func (s *sim) load() Snapshot {
	s.t.Helper()
	snap, err := Load(context.Background(), s.cli)
	if err != nil {
		s.t.Fatal(err)
	}
	return snap
}

// round runs one leader evaluation and one step of every node; it returns
// the snapshot the nodes acted on.
func (s *sim) round() Snapshot {
	s.t.Helper()
	ctx := context.Background()
	snap := s.load()
	if err := Apply(ctx, s.cli, snap, Evaluate(snap, s.now)); err != nil && !errors.Is(err, ErrConflict) {
		s.t.Fatal(err)
	}
	snap = s.load()
	s.check(snap)
	if s.trace != nil {
		s.trace(snap)
	}
	var wg sync.WaitGroup
	work := make(chan *simNode)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for nd := range work {
				if err := s.step(ctx, snap, nd); err != nil {
					s.t.Errorf("%s: %v", nd.name, err)
				}
			}
		}()
	}
	for _, nd := range s.nodes {
		if !nd.dead {
			work <- nd
		}
	}
	close(work)
	wg.Wait()
	s.now = s.now.Add(time.Minute)
	return snap
}

// check records how many nodes each snapshot shows down.
func (s *sim) check(snap Snapshot) {
	down := map[string]int{}
	votersDown := 0
	for _, st := range snap.Statuses {
		if Effective(*snap.Target, st).Down() {
			down[st.GroupOrDefault()]++
			if s.byName[st.Node].voter {
				votersDown++
			}
		}
	}
	for g, n := range down {
		s.peakDown[g] = max(s.peakDown[g], n)
	}
	s.peakVotersDown = max(s.peakVotersDown, votersDown)
}

func (s *sim) put(ctx context.Context, old NodeStatus, p Phase, mut func(*NodeStatus)) error {
	st := old
	st.Phase, st.Since, st.Reason = p, s.now, ""
	if mut != nil {
		mut(&st)
	}
	return PutStatus(ctx, s.cli, st)
}

func holds(snap Snapshot, group, node string) bool {
	return slices.ContainsFunc(snap.Holders[group], func(v LockValue) bool { return v.Holder == node })
}

func releaseAll(ctx context.Context, sem *Semaphore) error {
	for {
		left, err := sem.Release(ctx)
		if errors.Is(err, ErrNotHeld) || (err == nil && left == 0) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// step is one node agent's reaction to a snapshot; like the real agent it
// decides from stored state only, so it can be resumed at any point.
func (s *sim) step(ctx context.Context, snap Snapshot, nd *simNode) error {
	t := *snap.Target
	st := snap.Statuses[nd.name]
	switch Effective(t, st) {
	case PhaseIdle:
		if t.Aborted {
			return nil
		}
		return s.put(ctx, st, PhaseDownloading, func(n *NodeStatus) { n.Target, n.Current, n.Staged = t.Version, nd.version, "" })
	case PhaseDownloading:
		return s.put(ctx, st, PhaseStaged, func(n *NodeStatus) { n.Staged = t.Version })
	case PhaseStaged:
		if ok, _ := MayReboot(snap, nd.name, s.now); ok {
			return s.put(ctx, st, PhaseWaitingForLock, nil)
		}
	case PhaseWaitingForLock:
		if ok, _ := MayReboot(snap, nd.name, s.now); !ok {
			return nil
		}
		if nd.voter {
			var votersHolding []string
			for _, v := range snap.Holders[VotersGroup] {
				votersHolding = append(votersHolding, v.Holder)
			}
			members := s.healthy(snap)
			slots := VoterSlots(members, votersHolding)
			if slots < 1 {
				return nil
			}
			got, err := nd.voters.TryAcquire(ctx, slots)
			if err != nil || !got {
				return err
			}
			others := slices.DeleteFunc(votersHolding, func(h string) bool { return h == nd.name })
			if CheckQuorum(members, others, nd.name) != nil {
				return releaseAll(ctx, nd.voters)
			}
		}
		got, err := nd.sem.TryAcquire(ctx, t.MaxUnavailable)
		if err != nil {
			return err
		}
		if !got {
			if nd.voter {
				return releaseAll(ctx, nd.voters)
			}
			return nil
		}
		return s.put(ctx, st, PhaseRebooting, nil)
	case PhaseRebooting:
		// The node boots the staged slot and comes back.
		nd.version = t.Version
		return s.put(ctx, st, PhaseVerifying, func(n *NodeStatus) { n.Previous, n.Current, n.Staged = n.Current, t.Version, "" })
	case PhaseVerifying:
		var err error
		if nd.failHealth {
			// The updater's automatic rollback.
			nd.version = st.Previous
			err = s.put(ctx, st, PhaseRolledBack, func(n *NodeStatus) {
				n.Current, n.Reason = n.Previous, "health check failed: probe http://127.0.0.1:7481/readyz: 503"
			})
		} else {
			err = s.put(ctx, st, PhaseDone, nil)
		}
		if err != nil {
			return err
		}
		// Released only after the outcome is recorded.
		if err := releaseAll(ctx, nd.sem); err != nil {
			return err
		}
		return releaseAll(ctx, nd.voters)
	default: // done, rolled back, failed: finish a release cut short
		if holds(snap, nd.group, nd.name) {
			if err := releaseAll(ctx, nd.sem); err != nil {
				return err
			}
		}
		if holds(snap, VotersGroup, nd.name) {
			return releaseAll(ctx, nd.voters)
		}
	}
	return nil
}

// healthy is the member list with voters down in snap marked unhealthy.
func (s *sim) healthy(snap Snapshot) []Member {
	out := slices.Clone(s.members)
	for i := range out {
		out[i].Healthy = !Effective(*snap.Target, snap.Statuses[out[i].Name]).Down()
	}
	return out
}

// 200 simulated nodes in two groups with 5 etcd voters roll from v1 to v2
// through etcd; a watcher checks the semaphore at every revision.
func TestRollout200(t *testing.T) {
	if testing.Short() {
		t.Skip("200-node simulation")
	}
	const n, maxUnavail = 200, 8
	tg := Target{Schema: TargetSchema, Version: "v2", Payload: "registry.berth:5000/berth/os:v2", MaxUnavailable: maxUnavail, Canary: 3}
	s := newSim(t, n, []string{"rack-a", "rack-b"}, 40, tg)
	hw := watchHolders(t, s.cli)
	canaries := []string{"node-000", "node-001", "node-002"}
	canariesDoneAt, firstOtherAt := -1, -1
	var rounds int
	var snap Snapshot
	for rounds = 1; rounds <= 400; rounds++ {
		snap = s.round()
		if canariesDoneAt < 0 && allPhase(snap, canaries, PhaseDone) {
			canariesDoneAt = rounds
		}
		for name, st := range snap.Statuses {
			p := Effective(*snap.Target, st)
			if !slices.Contains(canaries, name) && firstOtherAt < 0 && (p.Down() || p == PhaseDone) {
				firstOtherAt = rounds
			}
		}
		if Count(*snap.Target, snap.Statuses).Complete() && len(snap.Holders["rack-a"])+len(snap.Holders["rack-b"]) == 0 {
			break
		}
	}
	peak := hw.stop(t)
	final := s.load()
	pr := Count(*final.Target, final.Statuses)
	t.Logf("%d nodes done in %d rounds; peak down per group %v (snapshots), peak holders %v (watch), peak voters down %d; canaries done at round %d, first other node down at round %d",
		pr.Done, rounds, s.peakDown, peak, s.peakVotersDown, canariesDoneAt, firstOtherAt)
	if !pr.Complete() || pr.Done != n {
		t.Fatalf("rollout not complete after %d rounds: %+v", rounds, pr)
	}
	for _, st := range final.Statuses {
		if st.Phase != PhaseDone || st.Current != "v2" || st.Previous != "v1" || s.byName[st.Node].version != "v2" {
			t.Errorf("node %s ended %+v", st.Node, st)
		}
	}
	for g, p := range peak {
		if g != VotersGroup && g != sentinelGroup && p > maxUnavail {
			t.Errorf("group %s had %d holders at once, max %d", g, p, maxUnavail)
		}
	}
	for g, p := range s.peakDown {
		if p > maxUnavail {
			t.Errorf("group %s had %d nodes down at once, max %d", g, p, maxUnavail)
		}
	}
	if peak[VotersGroup] > 2 || s.peakVotersDown > 2 {
		t.Errorf("%d voters held a slot, %d were down at once: 5 voters keep quorum only with 2 down", peak[VotersGroup], s.peakVotersDown)
	}
	if peak["rack-a"] < maxUnavail/2 {
		t.Errorf("peak holders in rack-a %d: the rollout never used its parallelism", peak["rack-a"])
	}
	if canariesDoneAt < 0 || firstOtherAt <= canariesDoneAt {
		t.Errorf("a non-canary went down at round %d, canaries done at %d", firstOtherAt, canariesDoneAt)
	}
	if len(final.Holders) != 0 {
		t.Errorf("holders left: %v", final.Holders)
	}
}

func allPhase(snap Snapshot, names []string, p Phase) bool {
	for _, n := range names {
		if Effective(*snap.Target, snap.Statuses[n]) != p {
			return false
		}
	}
	return true
}

// A canary whose health check fails rolls back; the error budget pauses
// the rollout with the reason, nobody else reboots, and with auto_revert
// the canary that already moved is told to go back.
func TestRolloutFailingCanaryPauses(t *testing.T) {
	tg := Target{Schema: TargetSchema, Version: "v2", Payload: "p", MaxUnavailable: 3, Canary: 2, AutoRevert: true}
	s := newSim(t, 20, []string{"all"}, 100, tg)
	s.byName["node-001"].failHealth = true
	for i := 0; i < 30; i++ {
		snap := s.round()
		for name, st := range snap.Statuses {
			if name != "node-000" && name != "node-001" && Effective(*snap.Target, st) != PhaseIdle &&
				st.Phase != PhaseDownloading && st.Phase != PhaseStaged {
				t.Fatalf("round %d: non-canary %s went %s", i, name, st.Phase)
			}
		}
	}
	snap := s.load()
	if !snap.Target.Paused || !strings.Contains(snap.Target.Reason, "node node-001 rolled-back on v2: health check failed") {
		t.Fatalf("target = %+v, want paused because node-001 rolled back", snap.Target)
	}
	t.Logf("paused: %s", snap.Target.Reason)
	if st := snap.Statuses["node-001"]; st.Phase != PhaseRolledBack || st.Current != "v1" {
		t.Errorf("node-001 = %+v, want rolled back on v1", st)
	}
	for name, st := range snap.Statuses {
		if name > "node-001" && (st.Phase != PhaseStaged || st.Current != "v1") {
			t.Errorf("%s = %s on %s, want staged on v1", name, st.Phase, st.Current)
		}
	}
	if len(snap.Holders) != 0 {
		t.Errorf("holders left after the pause: %v", snap.Holders)
	}
	if ok, why := MayReboot(snap, "node-005", s.now); ok || !strings.Contains(why, "rollout paused: error budget exceeded") {
		t.Errorf("MayReboot while paused = %v %q", ok, why)
	}
	if v, ok := RevertTo(snap, "node-000", s.now); !ok || v != "v1" {
		t.Errorf("auto-revert of node-000 = %q %v, want v1", v, ok)
	}
}

// The lock holder is killed mid-reboot and never returns: its lease ends,
// its slot frees, the next node proceeds (no deadlock), and after the
// deadline the leader reports it failed and pauses the rollout.
func TestRolloutDeadHolder(t *testing.T) {
	tg := Target{Schema: TargetSchema, Version: "v2", Payload: "p", MaxUnavailable: 1, Canary: 0, DeadlineSeconds: 600}
	s := newSim(t, 6, []string{"all"}, 100, tg)
	ctx := context.Background()
	var victim *simNode
	var killedAt time.Time
	s.trace = func(snap Snapshot) {
		for _, st := range snap.Statuses {
			if victim == nil && st.Phase == PhaseRebooting {
				// The first node to reboot dies before its next step and
				// never comes back.
				victim = s.byName[st.Node]
				victim.dead = true
				killedAt = s.now
				if _, err := s.cli.Revoke(ctx, victim.lease); err != nil { // as its lease expiring
					t.Fatal(err)
				}
			}
		}
	}
	pausedAt := -1
	for i := 0; i < 40 && (pausedAt < 0 || i < pausedAt+5); i++ {
		// After the pause, a few more rounds let nodes already rebooting
		// finish and release; nobody new may start.
		snap := s.round()
		if pausedAt < 0 && snap.Target.Paused {
			pausedAt = i
		}
	}
	snap := s.load()
	if victim == nil {
		t.Fatal("no node ever rebooted")
	}
	st := snap.Statuses[victim.name]
	if st.Phase != PhaseFailed || !strings.Contains(st.Reason, "did not return within 10m0s") {
		t.Errorf("victim status = %+v, want failed", st)
	}
	if !snap.Target.Paused || !strings.Contains(snap.Target.Reason, "node "+victim.name+" rebooting for 11m0s, past the deadline of 10m0s") {
		t.Errorf("target = %+v, want paused for %s", snap.Target, victim.name)
	}
	done := 0
	for _, st := range snap.Statuses {
		if st.Phase == PhaseDone && st.Target == "v2" {
			done++
		}
	}
	t.Logf("victim %s killed at %s, %d other nodes finished before the pause: %s", victim.name, killedAt.Format("15:04"), done, snap.Target.Reason)
	if done == 0 {
		t.Error("no node made progress after the holder died: deadlock")
	}
	if len(snap.Holders["all"]) != 0 {
		t.Errorf("holders left after the pause: %v", snap.Holders)
	}
	if holds(snap, "all", victim.name) {
		t.Error("the dead holder still holds its slot")
	}
}

// Five nodes, all etcd voters, with max_unavailable 5: the group semaphore
// alone would let all of them reboot at once; the voters' semaphore keeps
// at most two down, so etcd keeps its quorum of three.
func TestRolloutKeepsQuorum(t *testing.T) {
	tg := Target{Schema: TargetSchema, Version: "v2", Payload: "p", MaxUnavailable: 5}
	s := newSim(t, 5, []string{"all"}, 1, tg)
	hw := watchHolders(t, s.cli)
	rounds := 0
	for ; rounds < 40; rounds++ {
		if snap := s.round(); Count(*snap.Target, snap.Statuses).Complete() && len(snap.Holders) == 0 {
			break
		}
	}
	peak := hw.stop(t)
	t.Logf("5 voters done in %d rounds; peak voters down %d, peak voter slots %d", rounds, s.peakVotersDown, peak[VotersGroup])
	if pr := Count(tg, s.load().Statuses); !pr.Complete() {
		t.Fatalf("not complete: %+v", pr)
	}
	if s.peakVotersDown > 2 || peak[VotersGroup] > 2 {
		t.Errorf("%d voters down, %d voter slots held at once: quorum of 3 of 5 lost", s.peakVotersDown, peak[VotersGroup])
	}
	if s.peakVotersDown < 2 {
		t.Errorf("peak voters down %d: the test never used the two slots it has", s.peakVotersDown)
	}
}
