package rollout

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/updater/slot"
)

// Schemas of the documents; they change only with an incompatible change.
const (
	TargetSchema = "berth.rollout.v1"
	StatusSchema = "berth.rollout-status.v1"
)

// DefaultDeadline is how long a node may stay rebooting or verifying before
// it counts against the error budget.
const DefaultDeadline = 15 * time.Minute

// Target is the document at TargetKey: what the operator asked for.
type Target struct {
	Schema  string `json:"schema"`
	Version string `json:"version"`
	// Payload references the signed payload (an OCI reference, usually in
	// the cluster registry).
	Payload        string `json:"payload"`
	MaxUnavailable int    `json:"max_unavailable"`
	// Group limits the rollout to nodes of one group; "" means every node.
	Group string `json:"group,omitempty"`
	// Canary is K: the first K nodes by name update alone.
	Canary int `json:"canary"`
	// Window is a maintenance window ("Sat 02:00-04:00", "daily 01:00-05:00",
	// UTC); "" means any time.
	Window          string `json:"window,omitempty"`
	DeadlineSeconds int    `json:"deadline_seconds,omitempty"`
	// MaxFailures is the error budget: the rollout pauses once more nodes
	// than this rolled back or missed their deadline (default 0).
	MaxFailures int `json:"max_failures,omitempty"`
	// Tries is how many boots the new OS gets on each node to pass its
	// health gate before the node rolls back; 0 means the updater's
	// default (slot.DefaultTries).
	Tries      int       `json:"tries,omitempty"`
	AutoRevert bool      `json:"auto_revert,omitempty"`
	Paused     bool      `json:"paused,omitempty"`
	Aborted    bool      `json:"aborted,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Created    time.Time `json:"created"`
}

// Deadline is the target's deadline, defaulted.
func (t Target) Deadline() time.Duration {
	if t.DeadlineSeconds <= 0 {
		return DefaultDeadline
	}
	return time.Duration(t.DeadlineSeconds) * time.Second
}

// BootTries is Tries, defaulted.
func (t Target) BootTries() int {
	if t.Tries == 0 {
		return slot.DefaultTries
	}
	return t.Tries
}

// Validate checks a target before it is stored or acted on.
func (t Target) Validate() error {
	if t.Schema != TargetSchema {
		return fmt.Errorf("rollout target has schema %q, want %q", t.Schema, TargetSchema)
	}
	if t.Version == "" {
		return fmt.Errorf("rollout target: version is empty")
	}
	if t.MaxUnavailable < 1 {
		return fmt.Errorf("rollout target %s: max_unavailable %d, want at least 1", t.Version, t.MaxUnavailable)
	}
	if t.Canary < 0 || t.MaxFailures < 0 || t.DeadlineSeconds < 0 {
		return fmt.Errorf("rollout target %s: canary, max_failures and deadline_seconds must not be negative", t.Version)
	}
	if t.Tries < 0 || t.Tries > slot.MaxTries {
		return fmt.Errorf("rollout target %s: tries %d, want 1 to %d (0: the default, %d)", t.Version, t.Tries, slot.MaxTries, slot.DefaultTries)
	}
	if t.Group != "" {
		if err := CheckNodeGroup(t.Group); err != nil {
			return fmt.Errorf("rollout target %s: %w", t.Version, err)
		}
	}
	if _, err := ParseWindow(t.Window); err != nil {
		return fmt.Errorf("rollout target %s: %w", t.Version, err)
	}
	return nil
}

// Marshal encodes the target as stored (compact JSON) after validating it.
func (t Target) Marshal() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode rollout target: %w", err)
	}
	return data, nil
}

// ParseTarget decodes and validates a stored target.
func ParseTarget(data []byte) (Target, error) {
	var t Target
	if err := json.Unmarshal(data, &t); err != nil {
		return Target{}, fmt.Errorf("decode rollout target: %w", err)
	}
	if err := t.Validate(); err != nil {
		return Target{}, err
	}
	return t, nil
}

// Phase is where a node is in the rollout.
type Phase string

// The phases, in the order a node passes them.
const (
	PhaseIdle           Phase = ""
	PhaseDownloading    Phase = "downloading"
	PhaseStaged         Phase = "staged"
	PhaseWaitingForLock Phase = "waiting-for-lock"
	PhaseRebooting      Phase = "rebooting"
	PhaseVerifying      Phase = "verifying"
	PhaseDone           Phase = "done"
	PhaseRolledBack     Phase = "rolled-back"
	PhaseFailed         Phase = "failed"
)

var knownPhases = map[Phase]bool{
	PhaseIdle: true, PhaseDownloading: true, PhaseStaged: true, PhaseWaitingForLock: true,
	PhaseRebooting: true, PhaseVerifying: true, PhaseDone: true, PhaseRolledBack: true, PhaseFailed: true,
}

// Down tells whether a node in this phase is (or may be) unavailable.
func (p Phase) Down() bool { return p == PhaseRebooting || p == PhaseVerifying }

// NodeStatus is the document at StatusKey(node), written by the node.
type NodeStatus struct {
	Schema string `json:"schema"`
	Node   string `json:"node"`
	Group  string `json:"group"`
	// Target is the version this status is about; a status for another
	// version than the current target is stale and means "not started".
	Target   string `json:"target"`
	Phase    Phase  `json:"phase"`
	Reason   string `json:"reason,omitempty"`
	Current  string `json:"current"`
	Previous string `json:"previous,omitempty"`
	Staged   string `json:"staged,omitempty"`
	// Since is when the node entered Phase.
	Since time.Time `json:"since"`
	// BootID is the boot a rollout reboot left from (set while rebooting
	// and verifying): a driver that sees another boot ID knows the node
	// went down and came back.
	BootID string `json:"boot_id,omitempty"`
	// Seconds is how long the phases of this version took on this node:
	// download, stage, reboot (decision to agent start), verify (agent
	// start to done).
	Seconds map[string]float64 `json:"seconds,omitempty"`
}

// Validate checks a status document.
func (s NodeStatus) Validate() error {
	if s.Schema != StatusSchema {
		return fmt.Errorf("rollout status %q has schema %q, want %q", s.Node, s.Schema, StatusSchema)
	}
	if err := nodedoc.CheckName(s.Node); err != nil {
		return fmt.Errorf("rollout status: %w", err)
	}
	if err := CheckNodeGroup(s.GroupOrDefault()); err != nil {
		return fmt.Errorf("rollout status %q: %w", s.Node, err)
	}
	if !knownPhases[s.Phase] {
		return fmt.Errorf("rollout status %q: unknown phase %q", s.Node, s.Phase)
	}
	return nil
}

// GroupOrDefault is the node's group, DefaultGroup when unset.
func (s NodeStatus) GroupOrDefault() string {
	if s.Group == "" {
		return DefaultGroup
	}
	return s.Group
}

// Marshal encodes the status as stored after validating it.
func (s NodeStatus) Marshal() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode rollout status %q: %w", s.Node, err)
	}
	return data, nil
}

// ParseStatus decodes and validates a stored status.
func ParseStatus(data []byte) (NodeStatus, error) {
	var s NodeStatus
	if err := json.Unmarshal(data, &s); err != nil {
		return NodeStatus{}, fmt.Errorf("decode rollout status: %w", err)
	}
	if err := s.Validate(); err != nil {
		return NodeStatus{}, err
	}
	return s, nil
}

// LockValue is the value of a semaphore slot.
type LockValue struct {
	Holder string `json:"holder"`
	// Count is the re-entrancy depth: acquisitions minus releases.
	Count    int       `json:"count"`
	Lease    int64     `json:"lease"`
	Acquired time.Time `json:"acquired"`
}
