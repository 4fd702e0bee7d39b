package ctl

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/updater/payload"
)

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
	autoRevert     bool
	payload        string
	force          bool
	reason         string
}

// pushTimeout bounds the upload of one payload to one node.
const pushTimeout = 30 * time.Minute

// progressEvery is the least time between two progress lines of a push.
const progressEvery = 3 * time.Second

// cmdOSPush pushes a payload into the cluster registry under its version.
func cmdOSPush(ctx context.Context, s *session) error {
	file := s.opts.args[1]
	var keys []ed25519.PublicKey
	if s.opts.os.keys != "" {
		var err error
		if keys, err = payload.LoadPublicKeys(s.opts.os.keys); err != nil {
			return fail(ExitUsage, "--keys: %v", err)
		}
	}
	local, err := payload.OpenLocal(file, keys)
	if err != nil {
		return fail(ExitError, "%v", err)
	}
	version := local.Manifest.Version
	if err := checkPayloadTag(version); err != nil {
		return err
	}
	n, err := pushToCluster(ctx, s, rollout.PayloadRepo+":"+version, func(ctx context.Context, node string, ref name.Reference, rt http.RoundTripper) error {
		return pushWithProgress(ctx, s.sys.Stderr, node, ref, local.Image, rt)
	})
	if err != nil {
		var exit *exitError
		if errors.As(err, &exit) || ctx.Err() != nil {
			return err
		}
		return fail(ExitError, "push payload %s: no node's registry took it: %v", version, err)
	}
	signature := "signature not checked here (no --keys): every node verifies it before installing"
	if local.Verified {
		signature = fmt.Sprintf("signature verified with the keys in %s", s.opts.os.keys)
	}
	out := s.sys.Stdout
	fmt.Fprintf(out, "pushed %s (%s, %d bytes) to node %s's registry\n", file, mebibytes(local.Size), local.Size, n)
	fmt.Fprintf(out, "version:   %s (%s %s, %s)\n", version, local.Manifest.OS, local.Manifest.Arch, signature)
	fmt.Fprintf(out, "digest:    %s\n", local.Digest)
	fmt.Fprintf(out, "reference: %s\n", rollout.DefaultPayload(version))
	fmt.Fprintf(out, "roll it out with: berthctl os rollout %s\n", version)
	return nil
}

// pushWithProgress uploads img to ref, printing to w at most one progress
// line every progressEvery.
func pushWithProgress(ctx context.Context, w io.Writer, node string, ref name.Reference, img v1.Image, transport http.RoundTripper) error {
	updates := make(chan v1.Update, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		for u := range updates {
			if u.Error == nil && u.Total > 0 && time.Since(last) >= progressEvery {
				last = time.Now()
				fmt.Fprintf(w, "pushing to node %s: %s of %s (%d%%)\n", node, mebibytes(u.Complete), mebibytes(u.Total), u.Complete*100/u.Total)
			}
		}
	}()
	pctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	err := remote.Write(ref, img, remote.WithContext(pctx), remote.WithTransport(transport), remote.WithProgress(updates))
	// remote.Write closes updates when it is done, except when its options
	// are refused; then the printer is left to the garbage collector.
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return err
}

func mebibytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// checkPayloadTag tells whether version can be the tag of its payload in
// the cluster registry (a tag allows fewer characters than a version).
func checkPayloadTag(version string) error {
	if _, err := name.NewTag(rollout.DefaultPayload(version), name.StrictValidation); err != nil {
		return fail(ExitUsage, "version %q cannot be a registry tag (letters, digits and . _ - only, not . or - first): push the payload to another registry and pass --payload REF to os rollout", version)
	}
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
		AutoRevert:      o.autoRevert,
		Created:         s.sys.Now().UTC().Truncate(time.Second),
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
	fmt.Fprintf(out, "rollout of %s set: payload %s, max-unavailable %d, %s, canary %d, window %s, deadline %s, max-failures %d",
		version, t.Payload, t.MaxUnavailable, groupText(t.Group), t.Canary, windowText(t.Window), t.Deadline(), t.MaxFailures)
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

// checkPayloadPushed refuses a default payload that is not in the cluster
// registry, so a rollout cannot start with nothing for the nodes to fetch.
func checkPayloadPushed(ctx context.Context, s *session, version string) error {
	client, err := s.apiClient()
	if err != nil {
		return err
	}
	client.Timeout = 3 * s.opts.timeout // a miss makes the node ask its peers first
	apis, err := nodeAPIs(ctx, s)
	if err != nil {
		return err
	}
	found, err := payloadInRegistry(ctx, client, apis, version)
	if err != nil {
		return fail(ExitError, "cannot check that payload %s is in the cluster registry: %v", version, err)
	}
	if !found {
		return fail(ExitError, "payload %s is not in the cluster registry: push it first with berthctl os push FILE", version)
	}
	return nil
}

// manifestAccept are the manifest types a payload may be stored as.
var manifestAccept = []string{string(types.OCIManifestSchema1), string(types.DockerManifestSchema2)}

// payloadInRegistry asks the nodes' registries, in name order, whether the
// payload of version is there. The first node that answers decides: a
// node's registry asks its peers before it answers "not found", so its
// answer holds for the cluster. Nodes that do not answer are skipped.
func payloadInRegistry(ctx context.Context, client *http.Client, apis map[string]string, version string) (bool, error) {
	if len(apis) == 0 {
		return false, errors.New("no agent API address is known in the cluster")
	}
	var errs []error
	for _, n := range slices.Sorted(maps.Keys(apis)) {
		u := strings.TrimSuffix(apis[n], "/") + "/v2/" + rollout.PayloadRepo + "/manifests/" + url.PathEscape(version)
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n, err))
			continue
		}
		req.Header.Set("Accept", strings.Join(manifestAccept, ", "))
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("node %s: %w", n, err))
			continue
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return true, nil
		case http.StatusNotFound:
			return false, nil
		}
		errs = append(errs, fmt.Errorf("node %s: %s", n, resp.Status))
	}
	return false, fmt.Errorf("no node's registry answered: %w", errors.Join(errs...))
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

// maxCASAttempts bounds how often UpdateRollout reads again after losing a
// compare-and-swap to another writer (the rollout leader, another admin).
const maxCASAttempts = 5

// UpdateRollout changes the stored rollout target with a compare-and-swap
// on its revision. change edits t in place and returns false when there is
// nothing to write; when another writer changed the target in between, the
// target is read again and change is called again, up to maxCASAttempts
// times. It returns the target as stored (or as found, when nothing was
// written) and fails when no rollout was ever set.
func UpdateRollout(ctx context.Context, cli *clientv3.Client, change func(snap rollout.Snapshot, t *rollout.Target) (write bool, err error)) (rollout.Target, error) {
	for range maxCASAttempts {
		snap, err := rollout.Load(ctx, cli)
		if err != nil {
			return rollout.Target{}, err
		}
		if snap.Target == nil {
			return rollout.Target{}, errNoRollout
		}
		t := *snap.Target
		write, err := change(snap, &t)
		if err != nil || !write {
			return t, err
		}
		err = rollout.PutTarget(ctx, cli, t, snap.TargetRevision)
		if !errors.Is(err, rollout.ErrConflict) {
			return t, err
		}
	}
	return rollout.Target{}, fmt.Errorf("the rollout target changed %d times while this command ran: try again", maxCASAttempts)
}

var errNoRollout = errors.New("no rollout is set: start one with berthctl os rollout VERSION")

// updateRollout runs UpdateRollout for a command. Refusals made by change
// (exit errors) and "no rollout" are reported as they are, not as etcd
// errors.
func updateRollout(ctx context.Context, s *session, what string, change func(rollout.Snapshot, *rollout.Target) (bool, error)) (rollout.Target, error) {
	var t rollout.Target
	var refusal error
	err := s.request(ctx, what, func(ctx context.Context) error {
		var err error
		t, err = UpdateRollout(ctx, s.cli, func(snap rollout.Snapshot, t *rollout.Target) (bool, error) {
			write, err := change(snap, t)
			refusal = err
			return write, err
		})
		if errors.Is(err, errNoRollout) {
			refusal = fail(ExitError, "%v", err)
		}
		return err
	})
	if refusal != nil {
		return t, refusal
	}
	return t, err
}

func cmdOSPause(ctx context.Context, s *session) error {
	reason := strings.TrimSpace(s.opts.os.reason)
	already := false
	t, err := updateRollout(ctx, s, "pause rollout", func(_ rollout.Snapshot, t *rollout.Target) (bool, error) {
		if t.Aborted {
			return false, fail(ExitError, "the rollout of %s was aborted (%s): there is nothing to pause", t.Version, reasonText(t.Reason))
		}
		if t.Paused && (reason == "" || reason == t.Reason) {
			already = true
			return false, nil
		}
		t.Paused = true
		t.Reason = reason
		if t.Reason == "" {
			t.Reason = "paused with berthctl os pause"
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if already {
		fmt.Fprintf(s.sys.Stdout, "the rollout of %s is already paused: %s\n", t.Version, reasonText(t.Reason))
		return nil
	}
	fmt.Fprintf(s.sys.Stdout, "rollout of %s paused: %s\nno node starts a reboot into it until berthctl os resume\n", t.Version, t.Reason)
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

func cmdOSAbort(ctx context.Context, s *session) error {
	reason := strings.TrimSpace(s.opts.os.reason)
	already := false
	t, err := updateRollout(ctx, s, "abort rollout", func(_ rollout.Snapshot, t *rollout.Target) (bool, error) {
		if t.Aborted {
			already = true
			return false, nil
		}
		t.Aborted = true
		t.Reason = reason
		if t.Reason == "" {
			t.Reason = "aborted with berthctl os abort"
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if already {
		fmt.Fprintf(s.sys.Stdout, "the rollout of %s is already aborted: %s\n", t.Version, reasonText(t.Reason))
		return nil
	}
	fmt.Fprintf(s.sys.Stdout, "rollout of %s aborted: %s\nno further node reboots into it; this is final for %s (start a new rollout to go on)\n",
		t.Version, t.Reason, t.Version)
	return nil
}
