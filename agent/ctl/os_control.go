package ctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/berth-os/berth/agent/rollout"
)

// updateRollout changes the rollout target for a command with
// rollout.UpdateTarget. Refusals made by change (exit errors) and "no
// rollout" are reported as they are, not as etcd errors.
func updateRollout(ctx context.Context, s *session, what string, change func(rollout.Snapshot, *rollout.Target) (bool, error)) (rollout.Target, error) {
	var t rollout.Target
	var refusal error
	err := s.request(ctx, what, func(ctx context.Context) error {
		var err error
		t, err = rollout.UpdateTarget(ctx, s.cli, func(snap rollout.Snapshot, t *rollout.Target) (bool, error) {
			write, err := change(snap, t)
			refusal = err
			return write, err
		})
		if errors.Is(err, rollout.ErrNoTarget) {
			refusal = fail(ExitError, "no rollout is set: start one with berthctl os rollout VERSION")
		}
		return err
	})
	if refusal != nil {
		return t, refusal
	}
	return t, err
}

func cmdOSPause(ctx context.Context, s *session) error { return stopRollout(ctx, s, false) }

func cmdOSAbort(ctx context.Context, s *session) error { return stopRollout(ctx, s, true) }

// stopRollout pauses the rollout or, with abort, stops it for good. Both
// set a flag and a reason; an aborted rollout cannot be paused, a paused
// one can be aborted, and a pause with a new reason replaces the reason.
func stopRollout(ctx context.Context, s *session, abort bool) error {
	verb, state := "pause", StatePaused
	if abort {
		verb, state = "abort", StateAborted
	}
	reason := strings.TrimSpace(s.opts.os.reason)
	already := false
	t, err := updateRollout(ctx, s, verb+" rollout", func(_ rollout.Snapshot, t *rollout.Target) (bool, error) {
		flag := &t.Paused
		if abort {
			flag = &t.Aborted
		}
		already = false
		switch {
		case t.Aborted && !abort:
			return false, fail(ExitError, "the rollout of %s was aborted (%s): there is nothing to pause", t.Version, reasonText(t.Reason))
		case *flag && (abort || reason == "" || reason == t.Reason):
			already = true
			return false, nil
		}
		*flag = true
		t.Reason = cmp.Or(reason, state+" with berthctl os "+verb)
		return true, nil
	})
	if err != nil {
		return err
	}
	out := s.sys.Stdout
	if already {
		fmt.Fprintf(out, "the rollout of %s is already %s: %s\n", t.Version, state, reasonText(t.Reason))
		return nil
	}
	fmt.Fprintf(out, "rollout of %s %s: %s\n", t.Version, state, t.Reason)
	if abort {
		fmt.Fprintf(out, "no further node reboots into it; this is final for %s (start a new rollout to go on)\n", t.Version)
	} else {
		fmt.Fprintln(out, "no node starts a reboot into it until berthctl os resume")
	}
	return nil
}

func cmdOSResume(ctx context.Context, s *session) error {
	now := s.sys.Now()
	notPaused := false
	var failures []string
	var oldMax int
	t, err := updateRollout(ctx, s, "resume rollout", func(snap rollout.Snapshot, t *rollout.Target) (bool, error) {
		failures, notPaused = nil, false
		if t.Aborted {
			return false, fail(ExitError, "the rollout of %s was aborted (%s) and cannot be resumed: start a new rollout with berthctl os rollout VERSION",
				t.Version, reasonText(t.Reason))
		}
		if !t.Paused {
			notPaused = true
			return false, nil
		}
		t.Paused, t.Reason = false, ""
		// With the budget still spent the rollout leader would pause the
		// rollout again at once: accept the failures seen so far.
		if over, _ := rollout.BudgetExceeded(*t, snap.Statuses, now); over {
			failures = rollout.Failures(*t, snap.Statuses, now)
			oldMax, t.MaxFailures = t.MaxFailures, len(failures)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	out := s.sys.Stdout
	if notPaused {
		fmt.Fprintf(out, "the rollout of %s is not paused\n", t.Version)
		return nil
	}
	fmt.Fprintf(out, "rollout of %s resumed\n", t.Version)
	if len(failures) > 0 {
		fmt.Fprintf(out, "the error budget was spent: raised max-failures from %d to %d, so the rollout does not pause again at once; failed nodes:\n",
			oldMax, t.MaxFailures)
		for _, f := range failures {
			fmt.Fprintf(out, "  %s\n", f)
		}
	}
	return nil
}
