// Package nodedoc defines the node document every berth agent publishes into
// the cluster's etcd, the key layout under /berth/v1/, a collector that fills
// the document from the running system, and a publisher that keeps it in etcd
// under a lease so it disappears when the node does.
package nodedoc

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Schema is the value of Node.Schema; it changes only with an incompatible
// change to the document.
const Schema = "berth.node.v1"

// Node is the document at NodeKey(name). The JSON field names are the
// contract read by berthctl, the scheduler and operators with plain etcdctl.
// Draining (omitted when false) means the node is being emptied for a
// reboot: it takes no new replicas and its replicas are being moved.
type Node struct {
	Schema        string     `json:"schema"`
	Name          string     `json:"name"`
	Role          string     `json:"role"`
	Addresses     []string   `json:"addresses"`
	ClientURL     string     `json:"client_url"`
	OS            OS         `json:"os"`
	Kernel        string     `json:"kernel"`
	BootTime      time.Time  `json:"boot_time"`
	UptimeSeconds int64      `json:"uptime_seconds"`
	CPU           CPU        `json:"cpu"`
	Memory        Memory     `json:"memory"`
	Agent         Agent      `json:"agent"`
	Containers    Containers `json:"containers"`
	// Heartbeat is when the document was last written. Liveness is the
	// key itself, bound to the node's lease; the document is rewritten
	// only when it changes or to refresh its slow figures (see Publisher).
	Heartbeat time.Time `json:"heartbeat"`
	Ready     bool      `json:"ready"`
	// Draining: the node is being emptied for a reboot (an OS update); the
	// scheduler gives it no new replicas and moves its replicas elsewhere.
	Draining bool `json:"draining,omitempty"`
	// Labels are the operator's node labels (agent config), matched by a
	// job's node_selector.
	Labels map[string]string `json:"labels,omitempty"`
	// EtcdSpace (omitted when fine) is SpaceLow when this node's etcd
	// member is past 80% of its quota, SpaceFull under a NOSPACE alarm
	// (written once writes are possible again, or not at all).
	EtcdSpace string `json:"etcd_space,omitempty"`
	// VolumePool is the node's pool for replicated volumes (omitted on a
	// node that runs no containers).
	VolumePool *VolumePool `json:"volume_pool,omitempty"`
}

// VolumePool says how much replicated-volume space a node has: its pool's
// size and what volumes have not yet been promised.
type VolumePool struct {
	SizeBytes int64 `json:"size_bytes"`
	FreeBytes int64 `json:"free_bytes"`
}

// OS is the running OS and its update state. Off a berth node (no slot on
// the kernel command line) only Name and Version are known and Slot is "".
type OS struct {
	Name           string      `json:"name"`
	Version        string      `json:"version"`
	Slot           string      `json:"slot"`
	OtherSlotState string      `json:"other_slot_state,omitempty"`
	LastUpdate     *LastUpdate `json:"last_update,omitempty"`
}

// LastUpdate is the summary of the updater's last-update record.
type LastUpdate struct {
	State   string `json:"state"`
	Version string `json:"version"`
	Reason  string `json:"reason"`
}

// CPU is the processor count and the one-minute load average.
type CPU struct {
	Cores int     `json:"cores"`
	Load1 float64 `json:"load1"`
}

// Memory is from /proc/meminfo (MemTotal, MemAvailable), in bytes.
type Memory struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// Agent describes the berth-agent process that published the document.
type Agent struct {
	Version string    `json:"version"`
	Started time.Time `json:"started"`
}

// Containers counts the containers the node's agent runs.
type Containers struct {
	Running int `json:"running"`
	Total   int `json:"total"`
}

// Marshal encodes the document as stored in etcd (compact JSON).
func (n Node) Marshal() ([]byte, error) {
	data, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode node document %q: %w", n.Name, err)
	}
	return data, nil
}

// ParseNode decodes a stored document and checks its schema, so that a
// reader never silently misreads a future, incompatible document.
func ParseNode(data []byte) (Node, error) {
	var n Node
	if err := json.Unmarshal(data, &n); err != nil {
		return Node{}, fmt.Errorf("decode node document: %w", err)
	}
	if n.Schema != Schema {
		return Node{}, fmt.Errorf("node document %q has schema %q, want %q", n.Name, n.Schema, Schema)
	}
	return n, nil
}

// DefaultRefresh is the default slow refresh of the node document: an
// idle node writes it 3600/300 = 12 times an hour (24 at most when its
// load or free memory keep moving past their thresholds).
const DefaultRefresh = 5 * time.Minute

// WriteReason decides whether a node writes its document cur now, given
// last, the document it last wrote at lastWrite: "change" when a field
// that anyone reads changed (everything but heartbeat, uptime, load and
// free memory), "refresh" when refresh has passed, "load" or "memory"
// when that figure moved past its threshold (a change in load1 of at
// least max(1, cores/2), in free memory of at least a tenth of the total)
// and refresh/2 has passed, so such writes come at most twice per
// refresh. "" means no write.
func WriteReason(last, cur Node, lastWrite, now time.Time, refresh time.Duration) string {
	if !sameContent(last, cur) {
		return "change"
	}
	since := now.Sub(lastWrite)
	if since >= refresh {
		return "refresh"
	}
	if since < refresh/2 {
		return ""
	}
	if math.Abs(cur.CPU.Load1-last.CPU.Load1) >= max(1, float64(cur.CPU.Cores)/2) {
		return "load"
	}
	moved := int64(cur.Memory.AvailableBytes) - int64(last.Memory.AvailableBytes)
	if cur.Memory.TotalBytes > 0 && uint64(max(moved, -moved))*10 >= cur.Memory.TotalBytes {
		return "memory"
	}
	return ""
}

// sameContent tells whether two documents differ only in the fields that
// move on every collection (heartbeat, uptime, load, free memory), so the
// publisher re-publishes early only for changes someone cares about.
func sameContent(a, b Node) bool {
	for _, n := range []*Node{&a, &b} {
		n.Heartbeat = time.Time{}
		n.UptimeSeconds = 0
		n.CPU.Load1 = 0
		n.Memory.AvailableBytes = 0
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}
