package nodedoc

import (
	"fmt"
	"strings"
	"time"
)

// Key layout in etcd. Everything berth stores lives under Prefix, so that a
// future incompatible layout can live next to it under /berth/v2/.
const (
	Prefix = "/berth/v1/"
	// NodesPrefix holds one node document per node, put with the node's lease.
	NodesPrefix = Prefix + "nodes/"
	// ClusterConfigKey holds ClusterConfig, written at bootstrap.
	ClusterConfigKey = Prefix + "cluster/config"
	// RolesPrefix holds one RoleEntry per node that ever joined; it outlives
	// the node document, which is how a dead node is told from an unknown one.
	RolesPrefix = Prefix + "cluster/roles/"
	// PromotePrefix holds requests to a client node to become a member.
	PromotePrefix = Prefix + "cluster/promote/"

	// DefaultTTL is the lease TTL of a node document: the failure
	// detector. Kept alive every TTL/3; an etcd leader change extends
	// every lease by its TTL. 6 s was tried: under software emulation a
	// joining learner and etcd leader changes let live nodes' leases
	// lapse, so 10 s stays.
	DefaultTTL = 10 * time.Second
)

// Roles of a node in RoleEntry and Node.Role.
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
	RoleClient  = "client"
)

// ClusterConfig is the document at ClusterConfigKey.
type ClusterConfig struct {
	Voters           int    `json:"voters"`
	DeadAfterSeconds int    `json:"dead_after_seconds"`
	CAHash           string `json:"ca_hash"`
}

// RoleEntry is the document at RoleKey(name).
type RoleEntry struct {
	Role      string `json:"role"`
	PeerURL   string `json:"peer_url,omitempty"`
	ClientURL string `json:"client_url,omitempty"`
	APIURL    string `json:"api_url,omitempty"`
}

// NodeKey is the key of a node's document.
func NodeKey(name string) string { return NodesPrefix + name }

// RoleKey is the key of a node's role entry.
func RoleKey(name string) string { return RolesPrefix + name }

// PromoteKey is the key that asks a client node to become a member.
func PromoteKey(name string) string { return PromotePrefix + name }

// NameFromKey returns the node name of a key under prefix (NodesPrefix,
// RolesPrefix or PromotePrefix); ok is false for any other key.
func NameFromKey(prefix, key string) (name string, ok bool) {
	name, ok = strings.CutPrefix(key, prefix)
	if !ok || CheckName(name) != nil {
		return "", false
	}
	return name, true
}

// CheckName accepts node names that are safe as one etcd key segment and as
// a certificate CN: 1 to 63 characters of a-z, 0-9, '-' and '.', starting
// and ending with a letter or digit.
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("node name is empty")
	}
	if len(name) > 63 {
		return fmt.Errorf("node name %q is longer than 63 characters", name)
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		inner := r == '-' || r == '.'
		if !alnum && !(inner && i > 0 && i < len(name)-1) {
			return fmt.Errorf("node name %q: character %q at %d not allowed (use a-z, 0-9, inner '-' or '.')", name, r, i)
		}
	}
	return nil
}
