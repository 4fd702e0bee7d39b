package subnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Key layout (documented in README.md, "Key layout").
const (
	Prefix = nodedoc.Prefix + "subnets/"
	// RangesKey holds Ranges, written once by the bootstrapping node.
	RangesKey = Prefix + "ranges"
	// LeasesPrefix holds one Lease per leased subnet, at LeaseKey.
	LeasesPrefix = Prefix + "leases/"
	// NodesPrefix holds one NodeRecord per node holding subnets.
	NodesPrefix = Prefix + "nodes/"
	// ElectionPrefix is the reclaimer's election (agent/leader).
	ElectionPrefix = Prefix + "reclaimer/"
)

// LeaseKey is the key of a subnet's lease: the prefix with '-' for '/'
// (10.88.3.0-24, fd5a:1f03:9c2e:3::-64).
func LeaseKey(p netip.Prefix) string {
	return LeasesPrefix + strings.ReplaceAll(p.Masked().String(), "/", "-")
}

// NodeKey is the key of a node's record.
func NodeKey(node string) string { return NodesPrefix + node }

// GetRanges reads the cluster's ranges; found is false when none are
// stored yet.
func GetRanges(ctx context.Context, cli *clientv3.Client) (r Ranges, found bool, err error) {
	resp, err := cli.Get(ctx, RangesKey)
	if err != nil {
		return Ranges{}, false, fmt.Errorf("read %s: %w", RangesKey, err)
	}
	if len(resp.Kvs) == 0 {
		return Ranges{}, false, nil
	}
	r, err = decodeRanges(resp.Kvs[0].Value)
	return r, err == nil, err
}

func decodeRanges(data []byte) (Ranges, error) {
	var r Ranges
	if err := json.Unmarshal(data, &r); err != nil {
		return Ranges{}, fmt.Errorf("parse %s: %w (fix or delete the key: it is written at bootstrap)", RangesKey, err)
	}
	if err := r.Validate(); err != nil {
		return Ranges{}, fmt.Errorf("%s: %w", RangesKey, err)
	}
	return r, nil
}

// EnsureRanges stores r unless ranges are stored already, in one
// transaction, and returns what etcd holds afterwards: the first writer
// wins and every later call gets its ranges.
func EnsureRanges(ctx context.Context, cli *clientv3.Client, r Ranges) (Ranges, error) {
	if err := r.Validate(); err != nil {
		return Ranges{}, err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return Ranges{}, fmt.Errorf("encode ranges: %w", err)
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(RangesKey), "=", 0)).
		Then(clientv3.OpPut(RangesKey, string(data))).
		Else(clientv3.OpGet(RangesKey)).
		Commit()
	if err != nil {
		return Ranges{}, fmt.Errorf("store %s: %w", RangesKey, err)
	}
	if resp.Succeeded {
		return r, nil
	}
	return decodeRanges(resp.Responses[0].GetResponseRange().Kvs[0].Value)
}

// Want says which families a node leases.
type Want struct{ IPv4, IPv6 bool }

// state is one consistent read of the leases and records.
type state struct {
	rev     int64
	leases  map[netip.Prefix]storedLease
	records map[string]storedRecord
	docs    map[string]bool // nodes with a node document
}

type storedLease struct {
	Lease
	modRev int64
}

type storedRecord struct {
	NodeRecord
	modRev int64
}

// readState reads leases, records and node documents at one revision.
func readState(ctx context.Context, cli *clientv3.Client) (state, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(LeasesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(NodesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(nodedoc.NodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return state{}, fmt.Errorf("read %s: %w", Prefix, err)
	}
	st := state{rev: resp.Header.Revision, leases: map[netip.Prefix]storedLease{}, records: map[string]storedRecord{}, docs: map[string]bool{}}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var l Lease
		if err := json.Unmarshal(kv.Value, &l); err != nil || !l.Subnet.IsValid() || LeaseKey(l.Subnet) != string(kv.Key) {
			// Left alone, it still blocks nothing; say so, since a
			// hand-edited lease is the only way to get one.
			slog.Warn("ignoring malformed subnet lease", "key", string(kv.Key), "err", err)
			continue
		}
		st.leases[l.Subnet.Masked()] = storedLease{Lease: l, modRev: kv.ModRevision}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var r NodeRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil || NodeKey(r.Node) != string(kv.Key) {
			slog.Warn("ignoring malformed subnet node record", "key", string(kv.Key), "err", err)
			continue
		}
		st.records[r.Node] = storedRecord{NodeRecord: r, modRev: kv.ModRevision}
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		if name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, string(kv.Key)); ok {
			st.docs[name] = true
		}
	}
	return st, nil
}

// family is one address family's view for Acquire.
type family struct {
	rng      netip.Prefix
	nodeBits int
	want     bool
	held     *netip.Prefix // the record's field
}

// Acquire gives node its subnets: the ones its record names when their
// leases still name it, else leases of the node found without a record,
// else the lowest free ones. New leases and the record are written in one
// transaction that requires each new lease key to be absent and the
// record unchanged since it was read; a lost race reads again and picks
// again. A family not wanted is released. A range with no free subnet
// returns an error wrapping ErrExhausted.
func Acquire(ctx context.Context, cli *clientv3.Client, node string, r Ranges, want Want, now time.Time) (NodeRecord, error) {
	for {
		rec, done, err := tryAcquire(ctx, cli, node, r, want, now)
		if err != nil || done {
			return rec, err
		}
		if ctx.Err() != nil {
			return NodeRecord{}, fmt.Errorf("lease subnets for %s: %w", node, ctx.Err())
		}
	}
}

func tryAcquire(ctx context.Context, cli *clientv3.Client, node string, r Ranges, want Want, now time.Time) (NodeRecord, bool, error) {
	st, err := readState(ctx, cli)
	if err != nil {
		return NodeRecord{}, false, err
	}
	old, hasRec := st.records[node]
	rec := NodeRecord{Node: node, IPv4: old.IPv4, IPv6: old.IPv6}
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	changed := hasRec && !old.MissingSince.IsZero()
	for _, f := range []family{
		{r.IPv4, r.NodeBits4, want.IPv4, &rec.IPv4},
		{r.IPv6, NodeBits6, want.IPv6, &rec.IPv6},
	} {
		held := *f.held
		l, leased := st.leases[held]
		mine := held.IsValid() && leased && l.Node == node && f.rng.Contains(held.Addr()) && held.Bits() == f.nodeBits
		switch {
		case !f.want:
			if mine {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(LeaseKey(held)), "=", l.modRev))
				ops = append(ops, clientv3.OpDelete(LeaseKey(held)))
			}
			*f.held, changed = netip.Prefix{}, changed || held.IsValid()
		case mine:
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(LeaseKey(held)), "=", l.modRev))
		default:
			p, found := orphanOf(st, node, f.rng, f.nodeBits)
			if found {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(LeaseKey(p)), "=", st.leases[p].modRev))
			} else {
				taken := make([]netip.Prefix, 0, len(st.leases))
				for t := range st.leases {
					taken = append(taken, t)
				}
				if p, err = Pick(f.rng, f.nodeBits, taken); err != nil {
					return NodeRecord{}, false, fmt.Errorf("lease a subnet for node %s: %w", node, err)
				}
				data, err := json.Marshal(Lease{Subnet: p, Node: node, Created: now.UTC()})
				if err != nil {
					return NodeRecord{}, false, fmt.Errorf("encode lease: %w", err)
				}
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(LeaseKey(p)), "=", 0))
				ops = append(ops, clientv3.OpPut(LeaseKey(p), string(data)))
			}
			*f.held, changed = p, true
		}
	}
	if !changed {
		return rec, true, nil // nothing to write: not even a record when nothing is wanted
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return NodeRecord{}, false, fmt.Errorf("encode node record: %w", err)
	}
	if hasRec {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(NodeKey(node)), "=", old.modRev))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(NodeKey(node)), "=", 0))
	}
	ops = append(ops, clientv3.OpPut(NodeKey(node), string(data)))
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return NodeRecord{}, false, fmt.Errorf("lease subnets for node %s: %w", node, err)
	}
	return rec, resp.Succeeded, nil
}

// orphanOf finds a lease naming node inside rng that its record does not
// name (a record lost or hand-deleted): the node takes it back rather than
// leaking it.
func orphanOf(st state, node string, rng netip.Prefix, bits int) (netip.Prefix, bool) {
	var best netip.Prefix
	for p, l := range st.leases {
		if l.Node == node && p.Bits() == bits && rng.Contains(p.Addr()) && (!best.IsValid() || p.Addr().Less(best.Addr())) {
			best = p
		}
	}
	return best, best.IsValid()
}

// ReclaimOnce reads the leases, records, node documents and etcd members,
// decides (Decide) and applies each action in its own transaction,
// guarded by fence (the reclaimer's leader term) and by the revisions it
// read; a reclaim also requires the node document to be absent at that
// moment. An action whose guard fails is skipped: the next round decides
// again. It returns the actions applied.
func ReclaimOnce(ctx context.Context, cli *clientv3.Client, fence clientv3.Cmp, now time.Time, grace time.Duration) ([]Action, error) {
	st, err := readState(ctx, cli)
	if err != nil {
		return nil, err
	}
	members, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	live := map[string]bool{}
	for n := range st.docs {
		live[n] = true
	}
	for _, m := range members.Members {
		if m.Name != "" {
			live[m.Name] = true
		}
	}
	var leases []Lease
	for _, l := range st.leases {
		leases = append(leases, l.Lease)
	}
	var records []NodeRecord
	for _, r := range st.records {
		records = append(records, r.NodeRecord)
	}
	var applied []Action
	var errs []error
	for _, a := range Decide(leases, records, live, now, grace) {
		ok, err := apply(ctx, cli, st, fence, a)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			applied = append(applied, a)
		}
	}
	return applied, errors.Join(errs...)
}

func apply(ctx context.Context, cli *clientv3.Client, st state, fence clientv3.Cmp, a Action) (bool, error) {
	key := NodeKey(a.Node)
	old, hasRec := st.records[a.Node]
	cmps := []clientv3.Cmp{fence}
	if hasRec {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", old.modRev))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	}
	var ops []clientv3.Op
	if a.Kind != ClearMissing {
		// Only while the node is still gone: a document put meanwhile wins.
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nodedoc.NodeKey(a.Node)), "=", 0))
	}
	switch a.Kind {
	case MarkMissing, ClearMissing:
		rec := old.NodeRecord
		if !hasRec {
			// Leases without a record: name them, so the record says
			// what a reclaim will free.
			rec = NodeRecord{Node: a.Node}
			for p, l := range st.leases {
				if l.Node == a.Node && p.Addr().Is4() {
					rec.IPv4 = p
				} else if l.Node == a.Node {
					rec.IPv6 = p
				}
			}
		}
		rec.MissingSince = a.At.UTC()
		if a.Kind == ClearMissing {
			rec.MissingSince = time.Time{}
		}
		data, err := json.Marshal(rec)
		if err != nil {
			return false, fmt.Errorf("encode node record: %w", err)
		}
		ops = append(ops, clientv3.OpPut(key, string(data)))
	case Reclaim:
		for _, p := range a.Subnets {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(LeaseKey(p)), "=", st.leases[p].modRev))
			ops = append(ops, clientv3.OpDelete(LeaseKey(p)))
		}
		ops = append(ops, clientv3.OpDelete(key))
	}
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("%s subnets of node %s: %w", a.Kind, a.Node, err)
	}
	return resp.Succeeded, nil
}

// CheckRoom tells whether node could lease its subnets now: it holds them
// already (its record's leases, or leases naming it), or a free subnet is
// left in every family of the stored ranges. The join API asks before it
// admits a node that will run containers, so that a full range refuses
// the join with the reason instead of leaving a node that cannot start a
// container. Nothing is written; the lease itself is still decided by
// Acquire's transaction.
func CheckRoom(ctx context.Context, cli *clientv3.Client, node string) error {
	r, found, err := GetRanges(ctx, cli)
	if err != nil || !found {
		return err // no ranges yet: the bootstrapping node has not stored them
	}
	st, err := readState(ctx, cli)
	if err != nil {
		return err
	}
	taken := make([]netip.Prefix, 0, len(st.leases))
	for p := range st.leases {
		taken = append(taken, p)
	}
	for _, f := range []struct {
		rng  netip.Prefix
		bits int
	}{{r.IPv4, r.NodeBits4}, {r.IPv6, NodeBits6}} {
		if !f.rng.IsValid() {
			continue
		}
		if _, mine := orphanOf(st, node, f.rng, f.bits); mine {
			continue
		}
		if _, err := Pick(f.rng, f.bits, taken); err != nil {
			return fmt.Errorf("node %s would get no container subnet: %w", node, err)
		}
	}
	return nil
}
