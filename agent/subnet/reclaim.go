package subnet

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Lease is the document of one leased subnet (at LeaseKey(subnet)). It is
// written once and deleted on reclaim, never changed: a later route
// controller can watch LeasesPrefix and route each subnet to its node.
type Lease struct {
	Subnet  netip.Prefix `json:"subnet"`
	Node    string       `json:"node"`
	Created time.Time    `json:"created"`
}

// NodeRecord is the per-node index (at NodeKey(node)): which subnets the
// node holds, so it finds them again after a reboot, and since when the
// reclaimer has seen it gone.
type NodeRecord struct {
	Node string       `json:"node"`
	IPv4 netip.Prefix `json:"ipv4,omitzero"`
	IPv6 netip.Prefix `json:"ipv6,omitzero"`
	// MissingSince is when the reclaimer first saw the node gone (no node
	// document, no etcd member): its last-seen bound. Zero while the node
	// is around; the grace period is measured from it.
	MissingSince time.Time `json:"missing_since,omitzero"`
}

// ActionKind is what the reclaimer does to one node's leases.
type ActionKind string

const (
	// MarkMissing records now as the node's MissingSince.
	MarkMissing ActionKind = "mark-missing"
	// ClearMissing forgets MissingSince: the node is back.
	ClearMissing ActionKind = "clear-missing"
	// Reclaim deletes the node's leases and its record.
	Reclaim ActionKind = "reclaim"
)

// Action is one decision of Decide.
type Action struct {
	Kind    ActionKind
	Node    string
	Subnets []netip.Prefix // Reclaim: the leases to delete
	At      time.Time      // MarkMissing: the time to record
}

// Decide is the reclaimer's decision: for every node that holds a lease or
// has a record, given which nodes are live (a node document or an etcd
// member) at now. A gone node is marked first; its leases are reclaimed
// once it has been missing for grace, measured from the recorded time, so
// a new reclaimer (after a leader change) never shortens the wait.
func Decide(leases []Lease, records []NodeRecord, live map[string]bool, now time.Time, grace time.Duration) []Action {
	held := map[string][]netip.Prefix{}
	for _, l := range leases {
		held[l.Node] = append(held[l.Node], l.Subnet)
	}
	recs := map[string]NodeRecord{}
	for _, r := range records {
		recs[r.Node] = r
	}
	nodes := map[string]bool{}
	for n := range held {
		nodes[n] = true
	}
	for n := range recs {
		nodes[n] = true
	}
	var out []Action
	for node := range nodes {
		rec, hasRec := recs[node]
		switch {
		case live[node]:
			if hasRec && !rec.MissingSince.IsZero() {
				out = append(out, Action{Kind: ClearMissing, Node: node})
			}
		case !hasRec || rec.MissingSince.IsZero():
			out = append(out, Action{Kind: MarkMissing, Node: node, At: now})
		case now.Sub(rec.MissingSince) >= grace:
			subnets := slices.Clone(held[node])
			slices.SortFunc(subnets, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
			out = append(out, Action{Kind: Reclaim, Node: node, Subnets: subnets})
		}
	}
	slices.SortFunc(out, func(a, b Action) int { return strings.Compare(a.Node, b.Node) })
	return out
}
