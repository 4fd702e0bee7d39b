// Package rollout is the agent-level logic of cluster-wide OS rollouts
// (issue 7): the documents under /berth/v1/rollout/, the cluster's reboot
// semaphore, the etcd quorum guard, and the pure decisions of rollout
// control (canary first, error budget, maintenance windows). Decisions are
// functions of the stored state and a clock only, so a leader change or an
// agent restart continues a rollout where it was.
package rollout

import (
	"fmt"
	"strings"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Key layout under nodedoc.Prefix (/berth/v1/).
const (
	// Prefix holds everything of the rollout.
	Prefix = nodedoc.Prefix + "rollout/"
	// TargetKey holds the Target document (written by berthctl).
	TargetKey = Prefix + "target"
	// StatusPrefix holds one NodeStatus per node (written by that node).
	StatusPrefix = Prefix + "status/"
	// LockPrefix holds the reboot semaphore: one key per holder and group,
	// LockPrefix<group>/<holder>, bound to the holder's lease.
	LockPrefix = Prefix + "lock/"

	// DefaultGroup is the group of a node without one; a target without a
	// group addresses every node.
	DefaultGroup = "all"
)

// StatusKey is the key of a node's rollout status.
func StatusKey(node string) string { return StatusPrefix + node }

// LockGroupPrefix holds the semaphore slots of one group.
func LockGroupPrefix(group string) string { return LockPrefix + group + "/" }

// LockKey is the key of one holder's slot in a group's semaphore.
func LockKey(group, holder string) string { return LockGroupPrefix(group) + holder }

// CheckGroup accepts group names with the rules of node names, so that a
// group is one key segment.
func CheckGroup(group string) error {
	if err := nodedoc.CheckName(group); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	return nil
}

// CheckNodeGroup is CheckGroup for the groups of nodes and targets, which
// must not be the reserved VotersGroup.
func CheckNodeGroup(group string) error {
	if group == VotersGroup {
		return fmt.Errorf("group %q is reserved for the etcd voters' semaphore", group)
	}
	return CheckGroup(group)
}

// ParseLockKey splits lock/<group>/<holder>.
func ParseLockKey(key string) (group, holder string, err error) {
	rest, ok := strings.CutPrefix(key, LockPrefix)
	if !ok {
		return "", "", fmt.Errorf("key %q is not under %s", key, LockPrefix)
	}
	group, holder, ok = strings.Cut(rest, "/")
	if !ok || CheckGroup(group) != nil || nodedoc.CheckName(holder) != nil {
		return "", "", fmt.Errorf("key %q: want %s<group>/<holder>", key, LockPrefix)
	}
	return group, holder, nil
}

// Where OS payloads live in the cluster registry: `berthctl os push` stores
// a payload as PayloadRepo:VERSION, and a target without an explicit
// payload reference names it as DefaultPayload(version). berth.local is
// resolved by each agent to its own registry, which fetches what it lacks
// from the other agents, so a payload enters the cluster once.
const (
	LocalRegistryHost = "berth.local"
	PayloadRepo       = "berth/os"
)

// DefaultPayload is the cluster-registry reference of a version's payload.
func DefaultPayload(version string) string {
	return LocalRegistryHost + "/" + PayloadRepo + ":" + version
}
