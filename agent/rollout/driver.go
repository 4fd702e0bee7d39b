package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/berth-os/berth/updater/slot"
)

// Updater is the node's OS updater as the driver uses it; slot.System is
// the real one.
type Updater interface {
	Status() (slot.Status, error)
	Apply(ctx context.Context, src slot.Source, o slot.ApplyOptions) (slot.Plan, error)
	Unstage(reason string) (string, error)
	Rollback() error
}

// DriverOptions are what a node's rollout driver needs from the node.
type DriverOptions struct {
	Node  string
	Group string // "" means DefaultGroup
	// Updater installs and reports the OS.
	Updater Updater
	// Download makes the payload at ref available on this node (the
	// cluster registry keeps what it fetched, so peers fetch from here
	// too); it returns the bytes of the image.
	Download func(ctx context.Context, ref string) (int64, error)
	// Open opens and verifies the downloaded payload for Apply.
	Open func(ctx context.Context, ref string) (slot.Source, error)
	// Reboot asks the init system to reboot; the agent is stopped by it.
	Reboot func(ctx context.Context) error
	// Drain empties the node of containers before a reboot (nil: none).
	Drain func(ctx context.Context) error
	// BootID tells this boot from the next one.
	BootID func() (string, error)
	// Members lists the etcd members with their health for the quorum
	// guard; nil means every node is a healthy non-voter.
	Members func(ctx context.Context) ([]Member, error)
	// CaughtUp returns nil once this node is back in the cluster with its
	// etcd member caught up with the leader.
	CaughtUp func(ctx context.Context) error
	// Interval between checks when nothing changes (default 5 s).
	Interval time.Duration
	Now      func() time.Time
	Log      *slog.Logger
}

// Driver moves one node through a rollout: download and stage as soon as
// the target changes, reboot while holding a slot of its group's reboot
// semaphore (and, for a voter, of the voters' one), report the result
// after the reboot and release the slot. Everything it decides on is in
// etcd or on the node's disk, so an agent restart or a reboot continues
// where it stopped: the status document records the boot a reboot left
// from, and the slot lives on under its lease while the node is down.
type Driver struct {
	o       DriverOptions
	cli     *clientv3.Client
	session *concurrency.Session // the reboot slots' lease, kept alive while the agent runs
	ttl     int
	bootID  string
	last    NodeStatus // last status written, to skip identical writes
	snap    Snapshot   // read at the start of the current step
	started time.Time  // when Run started (in this boot)
	retryAt time.Time  // no download before this (after a failed one)
	fails   int
}

// NewDriver checks opts.
func NewDriver(o DriverOptions) (*Driver, error) {
	if o.Group == "" {
		o.Group = DefaultGroup
	}
	if err := CheckNodeGroup(o.Group); err != nil {
		return nil, fmt.Errorf("rollout driver: %w", err)
	}
	if o.Updater == nil || o.Download == nil || o.Open == nil || o.Reboot == nil || o.BootID == nil {
		return nil, errors.New("rollout driver: Updater, Download, Open, Reboot and BootID are required")
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Driver{o: o}, nil
}

// errRebooting ends Run: the node is going down.
var errRebooting = errors.New("rebooting for an OS update")

// Run drives the node until ctx ends or the node reboots. It is an agent
// service: cli is the agent's cluster client.
func (d *Driver) Run(ctx context.Context, cli *clientv3.Client) error {
	d.cli = cli
	id, err := d.o.BootID()
	if err != nil {
		return fmt.Errorf("rollout driver: %w", err)
	}
	d.bootID, d.started = id, d.o.Now()
	for {
		// Watch before reading, so no change between the two is missed.
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, Prefix, clientv3.WithPrefix())
		err := d.step(ctx)
		switch {
		case errors.Is(err, errRebooting):
			cancel()
			d.o.Log.Info("rollout: node rebooting; waiting to be stopped")
			<-ctx.Done()
			return nil
		case err != nil && ctx.Err() == nil:
			d.o.Log.Warn("rollout step failed", "err", err)
		}
		err = waitForChange(ctx, wch, d.o.Interval)
		cancel()
		if err != nil {
			return nil
		}
	}
}

// step reads the world once and takes at most one action.
func (d *Driver) step(ctx context.Context) error {
	snap, err := Load(ctx, d.cli)
	if err != nil {
		return err
	}
	d.snap = snap
	st, err := d.o.Updater.Status()
	if err != nil {
		return fmt.Errorf("read the updater's status: %w", err)
	}
	own, known := snap.Statuses[d.o.Node]
	if !known {
		own = NodeStatus{Phase: PhaseIdle}
	}
	cur := d.base(own, st)

	// After a reboot this driver started: report how it went.
	if (own.Phase.Down() || own.Phase == PhaseFailed) && own.BootID != "" && own.BootID != d.bootID {
		return d.returned(ctx, snap, own, cur, st)
	}
	t := snap.Target
	if t == nil || (t.Group != "" && t.Group != d.o.Group) {
		return d.idle(ctx, own, cur, "no rollout for this node")
	}
	if t.Aborted {
		return d.idle(ctx, own, cur, "rollout aborted: "+orUnknown(t.Reason))
	}
	if v, ok := RevertTo(snap, d.o.Node, d.o.Now()); ok && st.Booted.Version != v {
		return d.revert(ctx, snap, own, cur, v)
	}
	cur.Target = t.Version
	if own.Target == t.Version && own.Phase == PhaseRebooting && own.BootID == d.bootID {
		// The agent restarted after deciding to reboot, before the node
		// went down: do it now (the slots are still ours).
		return d.reboot(ctx, snap, own, cur)
	}
	if st.Booted.Version == t.Version {
		return d.onTarget(ctx, own, cur, st)
	}
	p := Effective(*t, own)
	switch p {
	case PhaseRolledBack, PhaseFailed, PhaseDone:
		// Final for this version; a new target starts over.
		cur.Phase, cur.Reason, cur.Since = p, own.Reason, own.Since
		d.dropHeld(ctx)
		return d.put(ctx, cur)
	}
	if st.Other.State == slot.SlotStaged && st.Other.Version == t.Version {
		return d.staged(ctx, snap, own, cur)
	}
	return d.download(ctx, *t, own, cur, st)
}

// base is the node's status with what the updater says now.
func (d *Driver) base(own NodeStatus, st slot.Status) NodeStatus {
	s := own
	s.Schema, s.Node, s.Group = StatusSchema, d.o.Node, d.o.Group
	s.Current = st.Booted.Version
	s.Staged = ""
	if st.Other.State == slot.SlotStaged {
		s.Staged = st.Other.Version
	}
	return s
}

// put writes s if it differs from the stored status; Since is set when
// the phase changes.
func (d *Driver) put(ctx context.Context, s NodeStatus) error {
	if s.Since.IsZero() {
		s.Since = d.o.Now().UTC()
	}
	if sameStatus(s, d.last) {
		return nil
	}
	if err := PutStatus(ctx, d.cli, s); err != nil {
		return err
	}
	if s.Phase != d.last.Phase || s.Target != d.last.Target {
		d.o.Log.Info("rollout phase", "target", s.Target, "phase", string(s.Phase), "reason", s.Reason, "current", s.Current)
	}
	d.last = s
	return nil
}

func sameStatus(a, b NodeStatus) bool {
	return a.Schema == b.Schema && a.Node == b.Node && a.Group == b.Group && a.Target == b.Target &&
		a.Phase == b.Phase && a.Reason == b.Reason && a.Current == b.Current && a.Previous == b.Previous &&
		a.Staged == b.Staged && a.Since.Equal(b.Since) && a.BootID == b.BootID && maps.Equal(a.Seconds, b.Seconds)
}

// enter sets a new phase, keeping Since when the phase does not change.
func enter(s *NodeStatus, old NodeStatus, p Phase, reason string, now time.Time) {
	if old.Phase != p || old.Target != s.Target {
		s.Since = now
	} else {
		s.Since = old.Since
	}
	s.Phase, s.Reason = p, reason
	if !p.Down() && p != PhaseFailed {
		s.BootID = ""
	}
}

// idle: no rollout addresses this node. A staged update of a rollout
// that went away is withdrawn, so no later reboot installs it.
func (d *Driver) idle(ctx context.Context, own, cur NodeStatus, why string) error {
	if cur.Staged != "" && own.Target != "" && cur.Staged == own.Target && !own.Phase.Down() {
		if v, err := d.o.Updater.Unstage(why); err != nil {
			return err
		} else if v != "" {
			cur.Staged = ""
			d.o.Log.Info("rollout: staged update withdrawn", "version", v, "reason", why)
		}
	}
	d.dropHeld(ctx)
	switch own.Phase {
	case PhaseDone, PhaseRolledBack, PhaseFailed:
		return d.put(ctx, cur) // the last result stays visible
	}
	enter(&cur, own, PhaseIdle, why, d.o.Now().UTC())
	return d.put(ctx, cur)
}

// download fetches the payload into the cluster registry on this node and
// installs it into the passive slot.
func (d *Driver) download(ctx context.Context, t Target, own, cur NodeStatus, st slot.Status) error {
	now := d.o.Now().UTC()
	if now.Before(d.retryAt) {
		return nil
	}
	if st.Booted.State != slot.SlotGood {
		// The updater installs only next to a blessed OS.
		enter(&cur, own, PhaseIdle, "waiting for the running OS "+st.Booted.Version+" to be blessed before installing "+t.Version, now)
		return d.put(ctx, cur)
	}
	ref := t.Payload
	if ref == "" {
		ref = DefaultPayload(t.Version)
	}
	enter(&cur, own, PhaseDownloading, "", now)
	cur.Seconds = nil
	if err := d.put(ctx, cur); err != nil {
		return err
	}
	start := time.Now()
	n, err := d.o.Download(ctx, ref)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Transient (a peer rebooting, the network): retry with backoff.
		d.fails++
		d.retryAt = now.Add(min(time.Duration(d.fails)*10*time.Second, 2*time.Minute))
		cur.Reason = fmt.Sprintf("download %s failed (try %d, next in %s): %v", ref, d.fails, d.retryAt.Sub(now).Round(time.Second), err)
		return d.put(ctx, cur)
	}
	d.fails, d.retryAt = 0, time.Time{}
	downloaded := time.Since(start)
	d.o.Log.Info("rollout: payload downloaded", "ref", ref, "bytes", n, "seconds", downloaded.Seconds())

	start = time.Now()
	err = d.stage(ctx, ref, t.Tries)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The payload is here but cannot be installed (bad signature,
		// wrong architecture, disk error): this node fails the version.
		enter(&cur, cur, PhaseFailed, fmt.Sprintf("install %s: %v", t.Version, err), d.o.Now().UTC())
		cur.BootID = ""
		return d.put(ctx, cur)
	}
	st, err = d.o.Updater.Status()
	if err != nil {
		return fmt.Errorf("read the updater's status: %w", err)
	}
	cur = d.base(cur, st)
	cur.Seconds = map[string]float64{"download": round1(downloaded), "stage": round1(time.Since(start))}
	enter(&cur, cur, PhaseStaged, "", d.o.Now().UTC())
	return d.put(ctx, cur)
}

func (d *Driver) stage(ctx context.Context, ref string, tries int) error {
	src, err := d.o.Open(ctx, ref)
	if err != nil {
		return err
	}
	// The operator chose the version: an older one is a deliberate
	// downgrade, installed like any other.
	_, err = d.o.Updater.Apply(ctx, src, slot.ApplyOptions{AllowDowngrade: true, Tries: tries})
	return err
}

func round1(d time.Duration) float64 {
	return float64(d.Round(100*time.Millisecond)) / float64(time.Second)
}

// staged: wait for the rollout to let this node reboot, then take the
// reboot slots, drain and reboot.
func (d *Driver) staged(ctx context.Context, snap Snapshot, own, cur NodeStatus) error {
	now := d.o.Now().UTC()
	cur.Seconds = own.Seconds
	ok, why := MayReboot(snap, d.o.Node, now)
	if !ok {
		d.dropHeld(ctx)
		enter(&cur, own, PhaseStaged, why, now)
		return d.put(ctx, cur)
	}
	t := snap.Target
	enter(&cur, own, PhaseWaitingForLock, "", now)
	got, why, err := d.acquire(ctx, *t)
	if err != nil {
		return err
	}
	if !got {
		cur.Reason = why
		return d.put(ctx, cur)
	}
	return d.reboot(ctx, snap, own, cur)
}

// acquire takes a slot of the node's group and, for a voter, a slot of
// the voters' semaphore that the quorum guard allows. Both or neither.
func (d *Driver) acquire(ctx context.Context, t Target) (bool, string, error) {
	lease, err := d.lease(ctx, t)
	if err != nil {
		return false, "", err
	}
	group, err := NewSemaphore(d.cli, d.o.Group, d.o.Node, lease)
	if err != nil {
		return false, "", err
	}
	ok, err := group.TryAcquire(ctx, t.MaxUnavailable)
	if err != nil || !ok {
		holders, _ := Holders(ctx, d.cli, d.o.Group)
		return false, fmt.Sprintf("waiting for a reboot slot of group %s (max-unavailable %d, held by %s)",
			d.o.Group, t.MaxUnavailable, holderNames(holders)), err
	}
	members := []Member{}
	if d.o.Members != nil {
		if members, err = d.o.Members(ctx); err != nil {
			d.dropSlots(ctx)
			return false, "", fmt.Errorf("quorum guard: %w", err)
		}
	}
	voter := false
	for _, m := range members {
		voter = voter || (m.Name == d.o.Node && m.Voter)
	}
	if !voter {
		return true, "", nil
	}
	vh, err := Holders(ctx, d.cli, VotersGroup)
	if err != nil {
		d.dropSlots(ctx)
		return false, "", err
	}
	var others []string
	for _, h := range vh {
		if h.Holder != d.o.Node {
			others = append(others, h.Holder)
		}
	}
	if err := CheckQuorum(members, others, d.o.Node); err != nil {
		d.dropSlots(ctx)
		return false, "quorum guard: " + err.Error(), nil
	}
	voters, err := NewSemaphore(d.cli, VotersGroup, d.o.Node, lease)
	if err != nil {
		return false, "", err
	}
	ok, err = voters.TryAcquire(ctx, VoterSlots(members, others))
	if err != nil || !ok {
		d.dropSlots(ctx)
		return false, fmt.Sprintf("quorum guard: no etcd voter may reboot now (rebooting: %s)", strings.Join(others, ", ")), err
	}
	return true, "", nil
}

func holderNames(hs []LockValue) string {
	if len(hs) == 0 {
		return "nobody (retrying)"
	}
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.Holder
	}
	return strings.Join(names, ", ")
}

// lease is the reboot slots' lease: its TTL is the target's deadline, so
// the slot outlives a reboot that keeps to it, and a holder that never
// returns frees it when the deadline passes.
func (d *Driver) lease(ctx context.Context, t Target) (clientv3.LeaseID, error) {
	ttl := int(t.Deadline() / time.Second)
	if d.session != nil && d.ttl == ttl {
		select {
		case <-d.session.Done():
		default:
			return d.session.Lease(), nil
		}
	}
	// Not closed when replaced: closing revokes, and a slot under the old
	// lease may still be held (it is adopted under the new one).
	s, err := concurrency.NewSession(d.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return clientv3.NoLease, fmt.Errorf("reboot slot lease: %w", err)
	}
	d.session, d.ttl = s, ttl
	return s.Lease(), nil
}

// holds tells whether the step's snapshot shows this node holding a reboot slot.
func (d *Driver) holds() bool {
	for _, g := range []string{d.o.Group, VotersGroup} {
		for _, h := range d.snap.Holders[g] {
			if h.Holder == d.o.Node {
				return true
			}
		}
	}
	return false
}

// dropHeld frees the node's reboot slots when this step's snapshot shows
// any (most steps hold none: no write then).
func (d *Driver) dropHeld(ctx context.Context) {
	if d.holds() {
		d.dropSlots(ctx)
	}
}

// dropSlots frees the node's reboot slots, if it holds any. Only this
// node writes keys with its name, so a plain delete is safe.
func (d *Driver) dropSlots(ctx context.Context) {
	for _, g := range []string{d.o.Group, VotersGroup} {
		resp, err := d.cli.Delete(ctx, LockKey(g, d.o.Node))
		if err != nil {
			d.o.Log.Warn("rollout: free reboot slot", "group", g, "err", err)
		} else if resp.Deleted > 0 {
			d.o.Log.Info("rollout: reboot slot freed", "group", g)
		}
	}
}

// reboot drains the node, records the boot it leaves from and reboots.
func (d *Driver) reboot(ctx context.Context, snap Snapshot, own, cur NodeStatus) error {
	if d.o.Drain != nil && own.Phase != PhaseRebooting {
		if err := d.o.Drain(ctx); err != nil {
			d.o.Log.Warn("rollout: drain before reboot", "err", err)
		}
	}
	now := d.o.Now().UTC()
	cur.Seconds = own.Seconds
	enter(&cur, own, PhaseRebooting, "", now)
	cur.BootID = d.bootID
	if own.Phase != PhaseRebooting {
		cur.Previous = cur.Current
	}
	if err := d.put(ctx, cur); err != nil {
		return err
	}
	if err := d.o.Reboot(ctx); err != nil {
		enter(&cur, cur, PhaseFailed, "reboot: "+err.Error(), d.o.Now().UTC())
		d.dropSlots(ctx)
		if perr := d.put(ctx, cur); perr != nil {
			return perr
		}
		return fmt.Errorf("reboot: %w", err)
	}
	return errRebooting
}

// returned reports a node that came back from its rollout reboot: done
// once the new OS is blessed and the node caught up, rolled back when the
// boot loader went back to the old OS.
func (d *Driver) returned(ctx context.Context, snap Snapshot, own, cur NodeStatus, st slot.Status) error {
	now := d.o.Now().UTC()
	d.keepSlots(ctx, snap)
	if own.Phase == PhaseRebooting {
		// Time down: from the decision to reboot to this agent's start.
		cur.Seconds = addSecond(own.Seconds, "reboot", now.Sub(own.Since))
	}
	if st.Booted.Version != own.Target {
		rec := st.LastUpdate
		reason := fmt.Sprintf("booted %s again instead of %s", st.Booted.Version, own.Target)
		if rec != nil && rec.State == slot.UpdateRolledBack && rec.Version == own.Target {
			reason = rec.Reason
		} else if own.Phase != PhaseFailed && now.Sub(d.started) < 2*time.Minute {
			// The health gate records the rollback early at boot; give
			// it the time to, for the reason it gives. Counted from this
			// agent's start: own.Since may be minutes old (the failed
			// boots of the new version were "verifying" since the first).
			cur.Phase = own.Phase
			return d.put(ctx, cur)
		}
		enter(&cur, own, PhaseRolledBack, reason, now)
		d.dropSlots(ctx)
		return d.put(ctx, cur)
	}
	return d.onTarget(ctx, own, cur, st)
}

func addSecond(m map[string]float64, k string, d time.Duration) map[string]float64 {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]float64{}
	}
	out[k] = round1(d)
	return out
}

// keepSlots adopts this node's reboot slots under the running agent's
// lease, so they stay held until the node is done; a slot whose lease
// ran out in the meantime is not taken again.
func (d *Driver) keepSlots(ctx context.Context, snap Snapshot) {
	if snap.Target == nil {
		return
	}
	for _, g := range []string{d.o.Group, VotersGroup} {
		held := false
		for _, h := range snap.Holders[g] {
			held = held || h.Holder == d.o.Node
		}
		if !held {
			continue
		}
		lease, err := d.lease(ctx, *snap.Target)
		if err != nil {
			d.o.Log.Warn("rollout: keep reboot slot", "group", g, "err", err)
			continue
		}
		sem, err := NewSemaphore(d.cli, g, d.o.Node, lease)
		if err == nil {
			_, err = sem.TryAcquire(ctx, 1)
		}
		if err != nil {
			d.o.Log.Warn("rollout: keep reboot slot", "group", g, "err", err)
		}
	}
}

// onTarget: the node runs the target version. Verifying until the
// health gate blessed it and the node caught up, then done.
func (d *Driver) onTarget(ctx context.Context, own, cur NodeStatus, st slot.Status) error {
	now := d.o.Now().UTC()
	if own.Target == cur.Target && own.Phase == PhaseDone {
		cur.Phase, cur.Since, cur.Reason = PhaseDone, own.Since, own.Reason
		d.dropHeld(ctx)
		return d.put(ctx, cur)
	}
	if own.Target != cur.Target {
		// Not moved by this rollout (joined with the version, or the
		// target changed): nothing to verify but the blessing.
		cur.Previous, cur.Seconds = "", nil
	}
	if st.Booted.State != slot.SlotGood {
		if own.Phase == PhaseRebooting && own.Target == cur.Target {
			cur.Seconds = addSecond(own.Seconds, "reboot", now.Sub(own.Since))
		}
		enter(&cur, own, PhaseVerifying, "waiting for the health gate to bless the new OS", now)
		return d.put(ctx, cur)
	}
	if d.o.CaughtUp != nil {
		if err := d.o.CaughtUp(ctx); err != nil {
			enter(&cur, own, PhaseVerifying, "blessed; waiting to catch up with the cluster: "+err.Error(), now)
			return d.put(ctx, cur)
		}
	}
	if own.Phase == PhaseVerifying && own.Target == cur.Target {
		cur.Seconds = addSecond(cur.Seconds, "verify", now.Sub(own.Since))
	}
	enter(&cur, own, PhaseDone, "", now)
	if err := d.put(ctx, cur); err != nil {
		return err
	}
	d.dropHeld(ctx)
	return nil
}

// revert sends a node that moved to a target the rollout gave up on back
// to its previous version (auto-revert), through the same reboot slots.
func (d *Driver) revert(ctx context.Context, snap Snapshot, own, cur NodeStatus, to string) error {
	now := d.o.Now().UTC()
	cur.Target = snap.Target.Version
	got, why, err := d.acquire(ctx, *snap.Target)
	if err != nil {
		return err
	}
	if !got {
		enter(&cur, own, PhaseDone, "auto-revert to "+to+": "+why, now)
		return d.put(ctx, cur)
	}
	if err := d.o.Updater.Rollback(); err != nil {
		d.dropSlots(ctx)
		enter(&cur, own, PhaseDone, fmt.Sprintf("auto-revert to %s refused: %v", to, err), now)
		return d.put(ctx, cur)
	}
	if d.o.Drain != nil {
		if err := d.o.Drain(ctx); err != nil {
			d.o.Log.Warn("rollout: drain before reboot", "err", err)
		}
	}
	enter(&cur, own, PhaseRebooting, "auto-revert to "+to, now)
	cur.BootID = d.bootID
	if err := d.put(ctx, cur); err != nil {
		return err
	}
	if err := d.o.Reboot(ctx); err != nil {
		d.dropSlots(ctx)
		return fmt.Errorf("reboot: %w", err)
	}
	return errRebooting
}
