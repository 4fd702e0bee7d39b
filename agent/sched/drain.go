package sched

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Draining a node (for an OS-update reboot) is driven from the node: its
// document says draining (nodedoc.Node.Draining), the leader moves its
// replicas away at once, and the driver waits here for its assignment
// prefix to empty. The node's agent stops each container when its
// assignment is deleted, so an empty prefix means nothing is meant to run
// there any more; the containers may take their stop timeout to exit.

// AssignedTo counts the replicas assigned to node: the keys under its
// assignment prefix, as the node's agent sees them.
func AssignedTo(ctx context.Context, cli *clientv3.Client, node string) (int, error) {
	if err := nodedoc.CheckName(node); err != nil {
		return 0, fmt.Errorf("count assignments: %w", err)
	}
	resp, err := cli.Get(ctx, jobs.AssignNodePrefix(node), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count assignments of node %s: %w", node, err)
	}
	return int(resp.Count), nil
}

// errWatchLost makes WaitDrained list the prefix again.
var errWatchLost = errors.New("assignment watch lost")

// WaitDrained waits until no replica is assigned to node or timeout passes,
// and returns how many are left. Running out of time is not an error (left
// > 0 tells it): replicas that fit on no other node, or whose volumes live
// on node, stay, and the caller decides whether to reboot anyway. err is
// ctx's error when ctx ends first, or etcd's when listing fails. A lost
// watch is recovered by listing again. timeout <= 0 only counts.
func WaitDrained(ctx context.Context, cli *clientv3.Client, node string, timeout time.Duration) (left int, err error) {
	if err := nodedoc.CheckName(node); err != nil {
		return 0, fmt.Errorf("wait for node to drain: %w", err)
	}
	if timeout <= 0 {
		return AssignedTo(ctx, cli, node)
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	prefix := jobs.AssignNodePrefix(node)
	for {
		resp, err := cli.Get(waitCtx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			if ctx.Err() != nil {
				return left, ctx.Err()
			}
			if waitCtx.Err() != nil {
				return left, nil // timed out
			}
			return left, fmt.Errorf("list assignments of node %s: %w", node, err)
		}
		keys := make(map[string]bool, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			keys[string(kv.Key)] = true
		}
		left = len(keys)
		if left == 0 {
			return 0, nil
		}
		left, err = watchUntilEmpty(waitCtx, cli, prefix, keys, resp.Header.Revision)
		switch {
		case err == nil:
			return 0, nil
		case ctx.Err() != nil:
			return left, ctx.Err()
		case waitCtx.Err() != nil:
			return left, nil // timed out
		}
		// Watch lost (compaction, no etcd leader): list again after a
		// breath so that an etcd outage does not spin.
		select {
		case <-waitCtx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// watchUntilEmpty follows keys (the prefix as listed at rev) until none is
// left; it returns how many are left and errWatchLost when the watch ends
// first (also when ctx ends).
func watchUntilEmpty(ctx context.Context, cli *clientv3.Client, prefix string, keys map[string]bool, rev int64) (int, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range wc {
		if wr.Canceled || wr.Err() != nil {
			return len(keys), fmt.Errorf("%w: %v", errWatchLost, wr.Err())
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(keys, string(ev.Kv.Key))
			} else {
				keys[string(ev.Kv.Key)] = true
			}
		}
		if len(keys) == 0 {
			return 0, nil
		}
	}
	return len(keys), errWatchLost
}
