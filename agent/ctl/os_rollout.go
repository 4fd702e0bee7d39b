package ctl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/updater/slot"
)

// cmdOSRollout stores a new rollout target.
func cmdOSRollout(ctx context.Context, s *session) error {
	version, o := s.opts.args[1], s.opts.os
	if err := checkVersion(version); err != nil {
		return err
	}
	if o.deadline < time.Second {
		return fail(ExitUsage, "--deadline %s: want a duration of at least 1s, like 15m", o.deadline)
	}
	t := rollout.Target{
		Schema:          rollout.TargetSchema,
		Version:         version,
		Payload:         o.payload,
		MaxUnavailable:  o.maxUnavailable,
		Group:           o.group,
		Canary:          o.canary,
		Window:          strings.TrimSpace(o.window),
		DeadlineSeconds: int((o.deadline + time.Second - 1) / time.Second),
		MaxFailures:     o.maxFailures,
		Tries:           o.tries,
		AutoRevert:      o.autoRevert,
		Created:         s.sys.Now().UTC().Truncate(time.Second),
	}
	if o.tries < 1 || o.tries > slot.MaxTries {
		return fail(ExitUsage, "--tries %d: want 1 to %d boots (default %d)", o.tries, slot.MaxTries, slot.DefaultTries)
	}
	if t.Payload == "" {
		if err := checkPayloadTag(version); err != nil {
			return err
		}
		t.Payload = rollout.DefaultPayload(version)
	} else if _, err := name.ParseReference(t.Payload, name.StrictValidation); err != nil {
		return fail(ExitUsage, "--payload %q: %v", t.Payload, err)
	}
	if err := t.Validate(); err != nil {
		return fail(ExitUsage, "%v", err)
	}
	snap, err := loadRollout(ctx, s)
	if err != nil {
		return err
	}
	if cur := snap.Target; cur != nil && cur.Version == version && !o.force {
		state, _ := rolloutState(*cur, snap)
		return fail(ExitError, "the rollout of %s is already set (%s): change it with berthctl os pause, resume or abort, or set it again with --force",
			version, state)
	}
	if o.payload == "" {
		if err := checkPayloadPushed(ctx, s, version); err != nil {
			return err
		}
	}
	conflict := false
	err = s.request(ctx, "set rollout target", func(ctx context.Context) error {
		err := rollout.PutTarget(ctx, s.cli, t, snap.TargetRevision)
		conflict = errors.Is(err, rollout.ErrConflict)
		return err
	})
	if conflict {
		return fail(ExitError, "the rollout target changed while this command ran: check berthctl os status and try again")
	}
	if err != nil {
		return err
	}
	out := s.sys.Stdout
	fmt.Fprintf(out, "rollout of %s set: payload %s, max-unavailable %d, %s, canary %d, window %s, deadline %s, max-failures %d, tries %d",
		version, t.Payload, t.MaxUnavailable, groupText(t.Group), t.Canary, windowText(t.Window), t.Deadline(), t.MaxFailures, t.BootTries())
	if t.AutoRevert {
		fmt.Fprint(out, ", auto-revert")
	}
	fmt.Fprintln(out)
	if cur := snap.Target; cur != nil {
		state, _ := rolloutState(*cur, snap)
		fmt.Fprintf(out, "it replaces the rollout of %s (%s)\n", cur.Version, state)
	}
	if w, err := rollout.ParseWindow(t.Window); err == nil && !w.Contains(s.sys.Now()) {
		fmt.Fprintf(out, "the maintenance window is closed now: nodes download and stage %s, and reboot into it only inside the window\n", version)
	}
	fmt.Fprintln(out, "follow it with: berthctl os status")
	return nil
}

// checkVersion accepts what a payload manifest accepts as a version.
func checkVersion(version string) error {
	ok := version != "" && len(version) <= 64
	for i := 0; ok && i < len(version); i++ {
		c := version[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		ok = alnum || i > 0 && strings.IndexByte("._+~-", c) >= 0
	}
	if !ok {
		return fail(ExitUsage, "version %q: want 1 to 64 letters, digits and . _ + ~ -, starting with a letter or digit", version)
	}
	return nil
}

// checkPayloadPushed refuses a default payload that is not in the cluster
// registry, so a rollout cannot start with nothing for the nodes to fetch.
func checkPayloadPushed(ctx context.Context, s *session, version string) error {
	reg, nodes, err := s.clusterRegistry(ctx)
	if err != nil {
		return err
	}
	// A miss makes the node ask its peers before it answers.
	found, err := reg.HasOnAny(ctx, nodes, rollout.PayloadRepo+":"+version, 3*s.opts.timeout)
	if err != nil {
		return fail(ExitError, "cannot check that payload %s is in the cluster registry: %v", version, err)
	}
	if !found {
		return fail(ExitError, "payload %s is not in the cluster registry: push it first with berthctl os push FILE", version)
	}
	return nil
}
