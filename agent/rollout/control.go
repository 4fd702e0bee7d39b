package rollout

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Snapshot is the stored state rollout control decides on: everything under
// Prefix read at one etcd revision.
type Snapshot struct {
	// Target is nil when no rollout was ever set.
	Target *Target
	// TargetRevision is the ModRevision of the target key (0 when absent),
	// for compare-and-swap writes.
	TargetRevision int64
	// Statuses by node name.
	Statuses map[string]NodeStatus
	// Holders by group: the reboot semaphore.
	Holders  map[string][]LockValue
	Revision int64
}

// Effective is a node's phase for the target: a status about another
// version means the node has not started on this one, unless it already
// runs the target version (a node that joined with it), which is done.
func Effective(t Target, s NodeStatus) Phase {
	if s.Target == t.Version {
		return s.Phase
	}
	if s.Current == t.Version {
		return PhaseDone
	}
	return PhaseIdle
}

// Participants are the statuses of the nodes the target addresses, sorted
// by node name.
func Participants(t Target, statuses map[string]NodeStatus) []NodeStatus {
	out := make([]NodeStatus, 0, len(statuses))
	for _, s := range statuses {
		if t.Group == "" || s.GroupOrDefault() == t.Group {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Canaries are the first K participants by name.
func Canaries(t Target, statuses map[string]NodeStatus) []string {
	p := Participants(t, statuses)
	k := min(t.Canary, len(p))
	out := make([]string, k)
	for i := range k {
		out[i] = p[i].Node
	}
	return out
}

// Failures lists, in node order, why participants count against the error
// budget: they rolled back, failed, or stayed down (rebooting, verifying)
// longer than the target's deadline.
func Failures(t Target, statuses map[string]NodeStatus, now time.Time) []string {
	var out []string
	for _, s := range Participants(t, statuses) {
		switch p := Effective(t, s); {
		case p == PhaseRolledBack || p == PhaseFailed:
			out = append(out, fmt.Sprintf("node %s %s on %s: %s", s.Node, p, t.Version, orUnknown(s.Reason)))
		case p.Down() && now.Sub(s.Since) > t.Deadline():
			out = append(out, fmt.Sprintf("node %s %s for %s, past the deadline of %s", s.Node, p,
				now.Sub(s.Since).Truncate(time.Second), t.Deadline()))
		}
	}
	return out
}

func orUnknown(reason string) string {
	if reason == "" {
		return "no reason given"
	}
	return reason
}

// BudgetExceeded tells whether the failures exceed the target's error
// budget and, if so, the reason to record when pausing.
func BudgetExceeded(t Target, statuses map[string]NodeStatus, now time.Time) (bool, string) {
	f := Failures(t, statuses, now)
	if len(f) <= t.MaxFailures {
		return false, ""
	}
	return true, fmt.Sprintf("error budget exceeded (%d failed, %d allowed): %s", len(f), t.MaxFailures, strings.Join(f, "; "))
}

// MayReboot tells whether node may now queue for the reboot semaphore
// (waiting-for-lock, then rebooting once it holds a slot). It is false
// with the reason while the rollout is paused or aborted, the node is not
// staged, the window is closed, the error budget is spent, or, for a
// non-canary, some canary is not done yet. The semaphore, not this
// function, bounds how many nodes reboot at once.
func MayReboot(snap Snapshot, node string, now time.Time) (bool, string) {
	t := snap.Target
	if t == nil {
		return false, "no rollout"
	}
	if t.Aborted {
		return false, "rollout aborted: " + orUnknown(t.Reason)
	}
	if t.Paused {
		return false, "rollout paused: " + orUnknown(t.Reason)
	}
	s, ok := snap.Statuses[node]
	if !ok || (t.Group != "" && s.GroupOrDefault() != t.Group) {
		return false, fmt.Sprintf("node %s is not part of the rollout", node)
	}
	if p := Effective(*t, s); p != PhaseStaged && p != PhaseWaitingForLock {
		return false, fmt.Sprintf("node %s is %s, not staged", node, phaseName(p))
	}
	w, err := ParseWindow(t.Window)
	if err != nil {
		return false, err.Error()
	}
	if !w.Contains(now) {
		return false, fmt.Sprintf("outside the maintenance window %q (UTC)", w.String())
	}
	if over, why := BudgetExceeded(*t, snap.Statuses, now); over {
		return false, why
	}
	canaries := Canaries(*t, snap.Statuses)
	var pending []string
	for _, c := range canaries {
		if c == node {
			return true, "canary"
		}
		if p := Effective(*t, snap.Statuses[c]); p != PhaseDone {
			pending = append(pending, c+" "+phaseName(p))
		}
	}
	if len(pending) > 0 {
		return false, "waiting for canaries: " + strings.Join(pending, ", ")
	}
	return true, ""
}

func phaseName(p Phase) string {
	if p == PhaseIdle {
		return "idle"
	}
	return string(p)
}

// Progress counts the participants by effective phase.
type Progress struct {
	Total, Done, Down, Failed int
}

// Complete tells whether every participant is done.
func (p Progress) Complete() bool { return p.Total > 0 && p.Done == p.Total }

// Count summarises the rollout.
func Count(t Target, statuses map[string]NodeStatus) Progress {
	var pr Progress
	for _, s := range Participants(t, statuses) {
		pr.Total++
		switch p := Effective(t, s); {
		case p == PhaseDone:
			pr.Done++
		case p.Down():
			pr.Down++
		case p == PhaseRolledBack || p == PhaseFailed:
			pr.Failed++
		}
	}
	return pr
}

// Evaluation is what the rollout leader should write after looking at a
// snapshot: a paused target when the error budget is spent, and failed
// statuses for nodes that missed their deadline (they cannot say so
// themselves). It is empty when nothing is to be written.
type Evaluation struct {
	Pause      *Target
	MarkFailed []NodeStatus
}

// Evaluate is the leader's pure decision over a snapshot.
func Evaluate(snap Snapshot, now time.Time) Evaluation {
	var ev Evaluation
	t := snap.Target
	if t == nil || t.Aborted {
		return ev
	}
	for _, s := range Participants(*t, snap.Statuses) {
		if p := Effective(*t, s); p.Down() && now.Sub(s.Since) > t.Deadline() {
			s.Reason = fmt.Sprintf("did not return within %s (was %s since %s)", t.Deadline(), p, s.Since.UTC().Format(time.RFC3339))
			s.Phase, s.Since = PhaseFailed, now.UTC()
			ev.MarkFailed = append(ev.MarkFailed, s)
		}
	}
	if !t.Paused {
		if over, why := BudgetExceeded(*t, snap.Statuses, now); over {
			paused := *t
			paused.Paused, paused.Reason = true, why
			ev.Pause = &paused
		}
	}
	return ev
}

// RevertTo tells whether node should go back to its previous version: the
// target asks for auto-revert, the rollout was paused by the error budget,
// and the node already moved (done on the target, with a previous version).
func RevertTo(snap Snapshot, node string, now time.Time) (version string, ok bool) {
	t := snap.Target
	if t == nil || !t.AutoRevert || !t.Paused {
		return "", false
	}
	if over, _ := BudgetExceeded(*t, snap.Statuses, now); !over {
		return "", false
	}
	s, found := snap.Statuses[node]
	if !found || Effective(*t, s) != PhaseDone || s.Target != t.Version || s.Previous == "" {
		return "", false
	}
	return s.Previous, true
}
