package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// ErrNotFound: the volume has no record.
var ErrNotFound = errors.New("no such volume")

// maxConflicts bounds the read-decide-write loop of one change: another
// writer won this many times in a row (a storm of fences and promotions
// on one volume is a bug, not load).
const maxConflicts = 16

// Get reads a volume's record.
func Get(ctx context.Context, cli *clientv3.Client, id ID) (Record, error) {
	r, _, err := get(ctx, cli, id)
	return r, err
}

func get(ctx context.Context, cli *clientv3.Client, id ID) (Record, int64, error) {
	resp, err := cli.Get(ctx, Key(id))
	if err != nil {
		return Record{}, 0, fmt.Errorf("read volume %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, 0, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	r, err := decode(resp.Kvs[0].Value, id)
	return r, resp.Kvs[0].ModRevision, err
}

func decode(data []byte, id ID) (Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return Record{}, fmt.Errorf("volume %s: parse %s: %w (the record is written by the agents only)", id, Key(id), err)
	}
	if r.ID != id {
		return Record{}, fmt.Errorf("volume %s: %s holds the record of %s", id, Key(id), r.ID)
	}
	return r, nil
}

// Create stores a new record with the lowest free minor (r.Minor is
// ignored) and returns it; it fails if the volume exists or no minor is
// left. Record and minor are created in one transaction.
func Create(ctx context.Context, cli *clientv3.Client, r Record) (Record, error) {
	key := Key(r.ID)
	for range maxConflicts {
		resp, err := cli.Get(ctx, MinorsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return Record{}, fmt.Errorf("create volume %s: read %s: %w", r.ID, MinorsPrefix, err)
		}
		used := map[int]bool{}
		for _, kv := range resp.Kvs {
			var m int
			if _, err := fmt.Sscan(string(kv.Key[len(MinorsPrefix):]), &m); err == nil {
				used[m] = true
			}
		}
		minor, ok := lowestFree(used, MaxMinor)
		if !ok {
			return Record{}, fmt.Errorf("create volume %s: all %d DRBD minors are in use: remove volumes that are no longer needed (berthctl volume rm)", r.ID, MaxMinor+1)
		}
		r.Minor = minor
		data, err := json.Marshal(r)
		if err != nil {
			return Record{}, fmt.Errorf("encode volume %s: %w", r.ID, err)
		}
		put, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(MinorKey(minor)), "=", 0)).
			Then(clientv3.OpPut(key, string(data)), clientv3.OpPut(MinorKey(minor), r.ID.String())).
			Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
			Commit()
		if err != nil {
			return Record{}, fmt.Errorf("create volume %s: %w", r.ID, err)
		}
		if put.Succeeded {
			return r, nil
		}
		if len(put.Responses[0].GetResponseRange().Kvs) > 0 {
			return Record{}, fmt.Errorf("volume %s exists already", r.ID)
		}
		// Another volume took the minor first: pick again.
	}
	return Record{}, fmt.Errorf("create volume %s: %d other volumes took the free minor first; try again", r.ID, maxConflicts)
}

// lowestFree is the lowest number in 0..max not in used.
func lowestFree(used map[int]bool, max int) (int, bool) {
	for m := 0; m <= max; m++ {
		if !used[m] {
			return m, true
		}
	}
	return 0, false
}

// change reads the record and the node documents of its copies at one
// revision, lets decide compute the new record from them, and writes it
// only if neither the record nor those nodes' liveness changed since:
// a decision is never taken on a stale view.
func change(ctx context.Context, cli *clientv3.Client, id ID, decide func(r Record, alive map[string]bool) (Record, error)) (Record, error) {
	key := Key(id)
	for range maxConflicts {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return Record{}, fmt.Errorf("read volume %s: %w", id, err)
		}
		if len(resp.Kvs) == 0 {
			return Record{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
		}
		kv := resp.Kvs[0]
		cur, err := decode(kv.Value, id)
		if err != nil {
			return Record{}, err
		}
		nodes := map[string]bool{}
		for _, c := range cur.Copies {
			nodes[c.Node] = true
		}
		if cur.Owner != "" {
			nodes[cur.Owner] = true
		}
		ops := make([]clientv3.Op, 0, len(nodes))
		names := make([]string, 0, len(nodes))
		for n := range nodes {
			names = append(names, n)
			ops = append(ops, clientv3.OpGet(nodedoc.NodeKey(n), clientv3.WithKeysOnly(), clientv3.WithRev(resp.Header.Revision)))
		}
		alive := map[string]bool{}
		if len(ops) > 0 {
			docs, err := cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return Record{}, fmt.Errorf("read the nodes of volume %s: %w", id, err)
			}
			for i, r := range docs.Responses {
				alive[names[i]] = len(r.GetResponseRange().Kvs) > 0
			}
		}
		next, err := decide(cur, alive)
		if err != nil {
			return cur, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return Record{}, fmt.Errorf("encode volume %s: %w", id, err)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}
		for _, n := range names {
			// Liveness as decided on: a node document that appeared or
			// went away since makes this a conflict, decided again.
			if alive[n] {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nodedoc.NodeKey(n)), ">", 0))
			} else {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nodedoc.NodeKey(n)), "=", 0))
			}
		}
		put, err := cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(data))).Commit()
		if err != nil {
			return Record{}, fmt.Errorf("write volume %s: %w", id, err)
		}
		if put.Succeeded {
			return next, nil
		}
	}
	return Record{}, fmt.Errorf("volume %s: %d writers in a row changed the record first; try again", id, maxConflicts)
}

// PromoteNode makes node the owner of the volume if Promote allows it,
// atomically with the liveness of the old owner it decided on. The
// returned record's Epoch is the one node acts at.
func PromoteNode(ctx context.Context, cli *clientv3.Client, id ID, node string, now time.Time) (Record, error) {
	return change(ctx, cli, id, func(r Record, alive map[string]bool) (Record, error) {
		return Promote(PromoteInput{Record: r, Node: node, OwnerAlive: alive[r.Owner], Now: now})
	})
}

// FenceNode is the fence of a primary that lost its peer (see Fence). An
// error means I/O must stay frozen: ErrDeposed for good, any other (etcd
// unreachable) until a retry succeeds.
func FenceNode(ctx context.Context, cli *clientv3.Client, id ID, node string, epoch int64, now time.Time) (Record, error) {
	return change(ctx, cli, id, func(r Record, _ map[string]bool) (Record, error) {
		return Fence(FenceInput{Record: r, Node: node, Epoch: epoch, Now: now})
	})
}

// ReleaseNode gives up node's ownership at epoch (see Release).
func ReleaseNode(ctx context.Context, cli *clientv3.Client, id ID, node string, epoch int64) (Record, error) {
	return change(ctx, cli, id, func(r Record, _ map[string]bool) (Record, error) {
		return Release(ReleaseInput{Record: r, Node: node, Epoch: epoch})
	})
}

// MarkSynced records peer's copy up to date (see Synced).
func MarkSynced(ctx context.Context, cli *clientv3.Client, id ID, node, peer string, epoch int64, now time.Time) (Record, error) {
	return change(ctx, cli, id, func(r Record, _ map[string]bool) (Record, error) {
		return Synced(SyncedInput{Record: r, Node: node, Peer: peer, Epoch: epoch, Now: now})
	})
}

// ReplaceCopy moves the copy on gone to newNode (see Replace).
func ReplaceCopy(ctx context.Context, cli *clientv3.Client, id ID, gone, newNode, newAddr string, now time.Time) (Record, error) {
	return change(ctx, cli, id, func(r Record, _ map[string]bool) (Record, error) {
		return Replace(ReplaceInput{Record: r, Gone: gone, New: newNode, NewAddress: newAddr, Now: now})
	})
}

// ListTenant reads the tenant's volume records, sorted by key; malformed
// ones are left out.
func ListTenant(ctx context.Context, cli *clientv3.Client, tenant string) ([]Record, error) {
	resp, err := cli.Get(ctx, Prefix+tenant+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("read volumes of %s: %w", tenant, err)
	}
	var recs []Record
	for _, kv := range resp.Kvs {
		if id, err := ParseKey(string(kv.Key)); err == nil {
			if r, err := decode(kv.Value, id); err == nil {
				recs = append(recs, r)
			}
		}
	}
	return recs, nil
}

// List reads every volume's record, sorted by key. A malformed record is
// reported in errs and left out, so one bad record does not hide the rest.
func List(ctx context.Context, cli *clientv3.Client) (recs []Record, errs []error, err error) {
	resp, err := cli.Get(ctx, Prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", Prefix, err)
	}
	for _, kv := range resp.Kvs {
		id, perr := ParseKey(string(kv.Key))
		if perr != nil {
			errs = append(errs, perr)
			continue
		}
		r, derr := decode(kv.Value, id)
		if derr != nil {
			errs = append(errs, derr)
			continue
		}
		recs = append(recs, r)
	}
	return recs, errs, nil
}

// Remove deletes a volume's record and frees its minor in one
// transaction, only if the record is still the one read (a volume
// promoted or fenced meanwhile is not removed under its new owner's feet).
func Remove(ctx context.Context, cli *clientv3.Client, id ID) error {
	r, rev, err := get(ctx, cli, id)
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(Key(id)), "=", rev)).
		Then(clientv3.OpDelete(Key(id)), clientv3.OpDelete(MinorKey(r.Minor))).
		Commit()
	if err != nil {
		return fmt.Errorf("remove volume %s: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("remove volume %s: it changed while being removed (a failover or resync); look at it again and retry", id)
	}
	return nil
}
