// Package volume owns berth's replicated volumes: the record of each
// volume in etcd (its copies, their states, its owner and epoch) and the
// decisions that keep DRBD safe without a quorum of its own. DRBD 8.4
// pairs two copies; etcd decides which of them may be primary:
//
//   - a node promotes its copy only after it has won the volume's record in
//     a transaction (Promote), and only if its copy is recorded up to date;
//   - a primary that lost its peer marks the peer's copy outdated in etcd
//     (Fence) before DRBD resumes I/O; a primary deposed meanwhile is told
//     so and keeps I/O frozen, so that it never acknowledges a write the
//     new primary does not have.
//
// Decisions are pure functions of the record (decide.go, table tests);
// store.go is the thin etcd layer around them.
package volume

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Key layout (documented in README.md, "Key layout").
const (
	// Prefix holds one Record per replicated volume, at Key.
	Prefix = nodedoc.Prefix + "storage/volumes/"
	// MinorsPrefix holds one key per DRBD minor in use, naming its
	// volume: created with the record in one transaction, so that two
	// volumes never share a minor (nor the port derived from it).
	MinorsPrefix = nodedoc.Prefix + "storage/minors/"
)

// BasePort is the DRBD port of minor 0; a volume listens on
// BasePort+Minor on both of its nodes.
const BasePort = 7800

// MaxMinor is the highest minor berth hands out (its port stays a port).
const MaxMinor = 65535 - BasePort

// MinorKey is the key that reserves a minor.
func MinorKey(minor int) string { return MinorsPrefix + strconv.Itoa(minor) }

// ID names a job replica's volume: JOB/N/VOLUME of a tenant.
type ID struct {
	Tenant  string `json:"tenant"`
	Job     string `json:"job"`
	Replica int    `json:"replica"`
	Name    string `json:"name"`
}

func (id ID) String() string {
	return id.Tenant + "/" + id.Job + "/" + strconv.Itoa(id.Replica) + "/" + id.Name
}

// Key is the etcd key of the volume's record.
func Key(id ID) string { return Prefix + id.String() }

// ParseID reads TENANT/JOB/REPLICA/VOLUME (ID.String).
func ParseID(s string) (ID, error) {
	id, err := ParseKey(Prefix + s)
	if err != nil {
		return ID{}, fmt.Errorf("%q is not TENANT/JOB/REPLICA/VOLUME", s)
	}
	return id, nil
}

// ParseKey is the inverse of Key.
func ParseKey(key string) (ID, error) {
	rest, ok := strings.CutPrefix(key, Prefix)
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 4 || parts[0] == "" || parts[1] == "" || parts[3] == "" {
		return ID{}, fmt.Errorf("key %q: want %s<tenant>/<job>/<replica>/<volume>", key, Prefix)
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil || n < 0 {
		return ID{}, fmt.Errorf("key %q: replica %q is not a number", key, parts[2])
	}
	return ID{Tenant: parts[0], Job: parts[1], Replica: n, Name: parts[3]}, nil
}

// CopyState is what etcd knows of one copy's data.
type CopyState string

const (
	// UpToDate: the copy holds every acknowledged write; it may become
	// primary.
	UpToDate CopyState = "up-to-date"
	// Outdated: the primary went on without this copy (fenced); it must
	// resync before it may become primary.
	Outdated CopyState = "outdated"
	// Syncing: a new or returning copy being brought up to date.
	Syncing CopyState = "syncing"
)

// Copy is one copy of a volume on a node.
type Copy struct {
	Node string `json:"node"`
	// Address is the node's address DRBD replicates over, recorded with
	// the copy so that a survivor can configure its dead peer.
	Address string    `json:"address,omitempty"`
	State   CopyState `json:"state"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
	// Reason says why the state changed (a fence, a resync), for people.
	Reason string `json:"reason,omitempty"`
}

// Record is the document at Key: the volume's copies and who may write.
type Record struct {
	ID        ID    `json:"id"`
	SizeBytes int64 `json:"size_bytes"`
	// Minor is the DRBD device /dev/drbdMINOR on both nodes and gives the
	// port (BasePort+Minor); unique in the cluster (MinorKey).
	Minor int `json:"minor"`
	// Copies has one entry per copy: one for a node-local volume, two for
	// a DRBD pair.
	Copies []Copy `json:"copies"`
	// Owner is the only node allowed to make its copy primary; Epoch
	// grows by one at every change of owner, so that a deposed owner's
	// late writes to this record are refused.
	Owner string `json:"owner,omitempty"`
	Epoch int64  `json:"epoch"`
}

// copyOf returns the index of node's copy, or -1.
func (r Record) copyOf(node string) int {
	for i, c := range r.Copies {
		if c.Node == node {
			return i
		}
	}
	return -1
}

// Copy returns node's copy.
func (r Record) Copy(node string) (Copy, bool) {
	if i := r.copyOf(node); i >= 0 {
		return r.Copies[i], true
	}
	return Copy{}, false
}

// clone copies the record so that a decision never changes its input.
func (r Record) clone() Record {
	r.Copies = append([]Copy(nil), r.Copies...)
	return r
}
