package rollout

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/berth-os/berth/agent/nodedoc"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrConflict is returned when a compare-and-swap write lost to another
// writer; read a new snapshot and decide again.
var ErrConflict = errors.New("rollout state changed concurrently")

// Load reads everything under Prefix at one revision.
func Load(ctx context.Context, cli *clientv3.Client) (Snapshot, error) {
	resp, err := cli.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return Snapshot{}, fmt.Errorf("read rollout state: %w", err)
	}
	snap := Snapshot{
		Statuses: map[string]NodeStatus{},
		Holders:  map[string][]LockValue{},
		Revision: resp.Header.Revision,
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case key == TargetKey:
			t, err := ParseTarget(kv.Value)
			if err != nil {
				return Snapshot{}, fmt.Errorf("read rollout state: %w", err)
			}
			snap.Target, snap.TargetRevision = &t, kv.ModRevision
		case strings.HasPrefix(key, StatusPrefix):
			name, ok := nodedoc.NameFromKey(StatusPrefix, key)
			if !ok {
				return Snapshot{}, fmt.Errorf("read rollout state: bad status key %q", key)
			}
			s, err := ParseStatus(kv.Value)
			if err != nil {
				return Snapshot{}, fmt.Errorf("read rollout state: key %q: %w", key, err)
			}
			if s.Node != name {
				return Snapshot{}, fmt.Errorf("read rollout state: key %q holds the status of %q", key, s.Node)
			}
			snap.Statuses[name] = s
		case strings.HasPrefix(key, LockPrefix):
			group, _, err := ParseLockKey(key)
			if err != nil {
				return Snapshot{}, fmt.Errorf("read rollout state: %w", err)
			}
			one, err := decodeHolders([]*mvccpb.KeyValue{kv})
			if err != nil {
				return Snapshot{}, fmt.Errorf("read rollout state: %w", err)
			}
			snap.Holders[group] = append(snap.Holders[group], one...)
		}
	}
	return snap, nil
}

// PutStatus stores a node's status (the node's own write).
func PutStatus(ctx context.Context, cli *clientv3.Client, s NodeStatus) error {
	data, err := s.Marshal()
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, StatusKey(s.Node), string(data)); err != nil {
		return fmt.Errorf("store rollout status of %s: %w", s.Node, err)
	}
	return nil
}

// PutTarget stores t if the target key's ModRevision is still prevRev (0:
// the key must not exist); otherwise it returns ErrConflict.
func PutTarget(ctx context.Context, cli *clientv3.Client, t Target, prevRev int64) error {
	data, err := t.Marshal()
	if err != nil {
		return err
	}
	txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(TargetKey), "=", prevRev)).
		Then(clientv3.OpPut(TargetKey, string(data))).Commit()
	if err != nil {
		return fmt.Errorf("store rollout target %s: %w", t.Version, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("store rollout target %s: %w", t.Version, ErrConflict)
	}
	return nil
}

// Apply writes an Evaluation made from snap: the paused target (only if
// the target is unchanged since snap) and the failed statuses (only if
// each status is unchanged, so a node that came back in between wins).
func Apply(ctx context.Context, cli *clientv3.Client, snap Snapshot, ev Evaluation) error {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	if ev.Pause != nil {
		data, err := ev.Pause.Marshal()
		if err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(TargetKey), "=", snap.TargetRevision))
		ops = append(ops, clientv3.OpPut(TargetKey, string(data)))
	}
	for _, s := range ev.MarkFailed {
		data, err := s.Marshal()
		if err != nil {
			return err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(StatusKey(s.Node)), "<", snap.Revision+1))
		ops = append(ops, clientv3.OpPut(StatusKey(s.Node), string(data)))
	}
	if len(ops) == 0 {
		return nil
	}
	txn, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("apply rollout evaluation: %w", err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("apply rollout evaluation: %w", ErrConflict)
	}
	return nil
}
