package ctl

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-os/berth/agent/rollout"
)

// OSStatus is the output of `berthctl os status -o json|yaml`.
type OSStatus struct {
	// Target is the document at rollout.TargetKey; null when no rollout
	// was ever set.
	Target *rollout.Target `json:"target"`
	// State is none, rolling, paused, aborted or complete; Reason says why
	// a rollout is paused or aborted.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Progress counts the nodes the target addresses; null without target.
	Progress *OSProgress `json:"progress"`
	// RebootLocks are the holders of the reboot semaphore, by group.
	RebootLocks map[string][]rollout.LockValue `json:"reboot_locks"`
	// Nodes are every node's rollout status, by name.
	Nodes []OSNode `json:"nodes"`
}

// OSProgress is rollout.Count of the target, with the error budget.
type OSProgress struct {
	Total  int `json:"total"`
	Done   int `json:"done"`
	Down   int `json:"down"`   // rebooting or verifying
	Failed int `json:"failed"` // rolled back or failed
	// Failures say why nodes count against the error budget
	// (target.max_failures): failed, rolled back or past the deadline.
	Failures []string `json:"failures"`
}

// OSNode is one node in os status.
type OSNode struct {
	Node string `json:"node"`
	// Phase is the node's phase for the target (rollout.Effective): "idle"
	// when it has not started, "excluded" when the target's group leaves
	// it out. Without a target it is the phase of the node's last status.
	Phase string `json:"phase"`
	// Status is the node's document at rollout.StatusKey, as it wrote it.
	Status rollout.NodeStatus `json:"status"`
}

// PhaseExcluded marks nodes outside the target's group in os status.
const PhaseExcluded = "excluded"

func phaseText(p rollout.Phase) string {
	if p == rollout.PhaseIdle {
		return "idle"
	}
	return string(p)
}

// makeOSStatus summarises a snapshot for os status.
func makeOSStatus(snap rollout.Snapshot, now time.Time) OSStatus {
	st := OSStatus{Target: snap.Target, State: StateNone, RebootLocks: snap.Holders, Nodes: []OSNode{}}
	if st.RebootLocks == nil {
		st.RebootLocks = map[string][]rollout.LockValue{}
	}
	for _, n := range slices.Sorted(maps.Keys(snap.Statuses)) {
		ns := snap.Statuses[n]
		phase := phaseText(ns.Phase)
		if t := snap.Target; t != nil {
			phase = phaseText(rollout.Effective(*t, ns))
			if t.Group != "" && ns.GroupOrDefault() != t.Group {
				phase = PhaseExcluded
			}
		}
		st.Nodes = append(st.Nodes, OSNode{Node: n, Phase: phase, Status: ns})
	}
	if t := snap.Target; t != nil {
		_, st.State = rolloutState(*t, snap)
		if t.Aborted || t.Paused {
			st.Reason = reasonText(t.Reason)
		}
		pr := rollout.Count(*t, snap.Statuses)
		st.Progress = &OSProgress{Total: pr.Total, Done: pr.Done, Down: pr.Down, Failed: pr.Failed,
			Failures: rollout.Failures(*t, snap.Statuses, now)}
		if st.Progress.Failures == nil {
			st.Progress.Failures = []string{}
		}
	}
	return st
}

func cmdOSStatus(ctx context.Context, s *session) error {
	snap, err := loadRollout(ctx, s)
	if err != nil {
		return err
	}
	now := s.sys.Now()
	st := makeOSStatus(snap, now)
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, st)
	}
	out := s.sys.Stdout
	t := snap.Target
	if t == nil {
		fmt.Fprintln(out, "no rollout")
	} else {
		state, _ := rolloutState(*t, snap)
		h := &table{tw: tabwriter.NewWriter(out, 0, 0, 1, ' ', 0)}
		h.row("target:", t.Version)
		h.row("payload:", t.Payload)
		h.row("max-unavailable:", strconv.Itoa(t.MaxUnavailable))
		h.row("group:", orValue(t.Group, "every node"))
		h.row("canary:", strconv.Itoa(t.Canary))
		h.row("window:", windowText(t.Window))
		h.row("deadline:", t.Deadline().String())
		h.row("tries:", fmt.Sprintf("%d (boots a node gives the new OS to pass its health gate)", t.BootTries()))
		revert := ""
		if t.AutoRevert {
			revert = ", auto-revert"
		}
		h.row("max-failures:", fmt.Sprintf("%d (%d so far)%s", t.MaxFailures, len(st.Progress.Failures), revert))
		h.row("created:", fmt.Sprintf("%s (%s ago)", t.Created.UTC().Format(time.RFC3339), HumanDuration(now.Sub(t.Created))))
		h.row("state:", state)
		p := st.Progress
		h.row("progress:", fmt.Sprintf("%d/%d done, %d down, %d failed", p.Done, p.Total, p.Down, p.Failed))
		h.row("reboot locks:", locksText(snap.Holders, now))
		if err := h.flush(); err != nil {
			return err
		}
	}
	if len(st.Nodes) == 0 {
		if t != nil {
			fmt.Fprintln(out, "\nno node has reported a rollout status yet")
		}
		return nil
	}
	fmt.Fprintln(out)
	tbl := newTable(out, "NODE", "GROUP", "CURRENT", "STAGED", "PHASE", "SINCE", "REASON")
	for _, n := range st.Nodes {
		ns := n.Status
		since, reason := "-", orDash(ns.Reason)
		// A status about another version than the target says nothing
		// about this rollout: its time and reason would mislead.
		if t != nil && ns.Target != t.Version {
			reason = "-"
		} else if !ns.Since.IsZero() {
			since = HumanDuration(now.Sub(ns.Since))
		}
		tbl.row(n.Node, ns.GroupOrDefault(), orDash(ns.Current), orDash(ns.Staged), n.Phase, since, reason)
	}
	return tbl.flush()
}

func locksText(holders map[string][]rollout.LockValue, now time.Time) string {
	var groups []string
	for _, g := range slices.Sorted(maps.Keys(holders)) {
		var names []string
		for _, h := range holders[g] {
			names = append(names, fmt.Sprintf("%s for %s", h.Holder, HumanDuration(now.Sub(h.Acquired))))
		}
		if len(names) > 0 {
			groups = append(groups, g+": "+strings.Join(names, ", "))
		}
	}
	if len(groups) == 0 {
		return "none"
	}
	return strings.Join(groups, "; ")
}
