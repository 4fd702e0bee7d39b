package ctl

import (
	"context"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/berth-os/berth/agent/rollout"
)

// The os commands, one file each: os_push.go, os_rollout.go, os_status.go
// and os_control.go (pause, resume, abort). This file holds what they share.

// osLong is the help text of `berthctl os`.
const osLong = `Cluster-wide OS rollouts. These commands need an admin client certificate
(--cacert, --cert, --key); push and rollout also talk to the agents' API.

Commands:
  push PAYLOAD [--keys DIR]    push a payload (berth-build's out/NAME-VERSION.oci, or an
                               OCI archive) into the cluster registry as
                               berth.local/berth/os:VERSION; --keys verifies its signature
                               with DIR/*.pub first (nodes always verify before installing)
  rollout VERSION [FLAGS]      roll VERSION out (replaces the current rollout)
    --max-unavailable N        nodes of a group rebooting at once (default 1)
    --group G                  only the nodes of group G (default: every node)
    --window "Sat 02:00-04:00" maintenance window in UTC: DAYS HH:MM-HH:MM, DAYS is
                               daily or a list like Mon,Sat (default: any time)
    --canary K                 the first K nodes by name update alone first (default 1)
    --deadline DURATION        how long a node may stay rebooting or verifying (default 15m)
    --max-failures N           pause once more than N nodes failed (default 0)
    --tries N                  boots the new OS gets on a node to pass its health gate
                               before that node rolls back (1-99, default 3)
    --auto-revert              then also move updated nodes back to their previous version
    --payload REF              payload reference (default berth.local/berth/os:VERSION,
                               which must have been pushed)
    --force                    set VERSION again although it is the current rollout
  status                       target, state, progress, reboot locks, then per node:
                               NODE GROUP CURRENT STAGED PHASE SINCE REASON (-o json|yaml)
  pause [--reason TEXT]        no node starts a reboot; nodes already rebooting finish
  resume                       continue a paused rollout (raises --max-failures to the
                               current failures when the error budget is spent)
  abort [--reason TEXT]        stop the rollout of this version for good
`

// osOptions are the flags of the os commands.
type osOptions struct {
	keys           string
	maxUnavailable int
	group          string
	window         string
	canary         int
	deadline       time.Duration
	maxFailures    int
	tries          int
	autoRevert     bool
	payload        string
	force          bool
	reason         string
}

// checkPayloadTag tells whether version can be the tag of its payload in
// the cluster registry (a tag allows fewer characters than a version).
func checkPayloadTag(version string) error {
	if _, err := name.NewTag(rollout.DefaultPayload(version), name.StrictValidation); err != nil {
		return fail(ExitUsage, "version %q cannot be a registry tag (letters, digits and . _ - only, not . or - first): push the payload to another registry and pass --payload REF to os rollout", version)
	}
	return nil
}

func groupText(g string) string {
	if g == "" {
		return "all nodes"
	}
	return "group " + g
}

func orValue(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

func windowText(w string) string {
	if w == "" {
		return "any time"
	}
	return strconv.Quote(w) + " (UTC)"
}

func loadRollout(ctx context.Context, s *session) (rollout.Snapshot, error) {
	var snap rollout.Snapshot
	err := s.request(ctx, "read rollout", func(ctx context.Context) error {
		var err error
		snap, err = rollout.Load(ctx, s.cli)
		return err
	})
	return snap, err
}

// Rollout states shown by os status.
const (
	StateNone     = "none"
	StateRolling  = "rolling"
	StatePaused   = "paused"
	StateAborted  = "aborted"
	StateComplete = "complete"
)

// rolloutState is the target's state for people: "paused: REASON" and the
// like. It also returns the bare state.
func rolloutState(t rollout.Target, snap rollout.Snapshot) (text, state string) {
	switch {
	case t.Aborted:
		return StateAborted + ": " + reasonText(t.Reason), StateAborted
	case t.Paused:
		return StatePaused + ": " + reasonText(t.Reason), StatePaused
	case rollout.Count(t, snap.Statuses).Complete():
		return StateComplete, StateComplete
	}
	return StateRolling, StateRolling
}

func reasonText(r string) string {
	if r == "" {
		return "no reason given"
	}
	return r
}
