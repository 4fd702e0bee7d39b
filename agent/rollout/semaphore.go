package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/berth-os/berth/agent/nodedoc"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors of Semaphore.Release.
var (
	ErrNotHeld  = errors.New("reboot slot not held")
	ErrNotOwner = errors.New("reboot slot held under another lease")
)

// Semaphore is one holder's handle on a group's reboot semaphore.
//
// Each holder has one key, LockKey(group, holder), put with the holder's
// lease: when the holder dies its lease expires and etcd deletes the key,
// so no dead holder blocks the cluster. A new slot is taken with a Txn
// that succeeds only if no key of the group changed since the read that
// counted fewer than max holders, so concurrent acquirers never exceed max.
// The semaphore is re-entrant per holder (the value counts acquisitions)
// and a slot is released only under the lease that holds it.
type Semaphore struct {
	cli    *clientv3.Client
	group  string
	holder string
	lease  clientv3.LeaseID
	now    func() time.Time
}

// NewSemaphore returns holder's handle on group's semaphore; lease is the
// holder's etcd lease, kept alive by the holder for as long as it lives.
func NewSemaphore(cli *clientv3.Client, group, holder string, lease clientv3.LeaseID) (*Semaphore, error) {
	if err := CheckGroup(group); err != nil {
		return nil, fmt.Errorf("reboot semaphore: %w", err)
	}
	if err := nodedoc.CheckName(holder); err != nil {
		return nil, fmt.Errorf("reboot semaphore holder: %w", err)
	}
	if lease == clientv3.NoLease {
		return nil, fmt.Errorf("reboot semaphore holder %q: a lease is required", holder)
	}
	return &Semaphore{cli: cli, group: group, holder: holder, lease: lease, now: time.Now}, nil
}

// TryAcquire takes a slot without waiting. It returns true when the holder
// now holds a slot: a new one because fewer than max holders held one, or
// its own again (re-entry, which never counts against max). A slot held by
// the same holder under another lease (an agent restarted while its old
// lease lives) is adopted under the new lease with a count of 1.
func (s *Semaphore) TryAcquire(ctx context.Context, max int) (bool, error) {
	ok, _, err := s.tryAcquire(ctx, max)
	return ok, err
}

func (s *Semaphore) tryAcquire(ctx context.Context, max int) (ok bool, rev int64, err error) {
	if max < 1 {
		return false, 0, fmt.Errorf("reboot semaphore %s: max %d, want at least 1", s.group, max)
	}
	prefix, key := LockGroupPrefix(s.group), LockKey(s.group, s.holder)
	for {
		resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return false, 0, fmt.Errorf("reboot semaphore %s: read holders: %w", s.group, err)
		}
		rev = resp.Header.Revision
		others := 0
		var mine *LockValue
		var mineRev int64
		for _, kv := range resp.Kvs {
			if string(kv.Key) != key {
				others++
				continue
			}
			var v LockValue
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				return false, 0, fmt.Errorf("reboot semaphore %s: decode own slot: %w", s.group, err)
			}
			mine, mineRev = &v, kv.ModRevision
		}
		var cmp clientv3.Cmp
		v := LockValue{Holder: s.holder, Count: 1, Lease: int64(s.lease), Acquired: s.now().UTC()}
		switch {
		case mine != nil:
			if clientv3.LeaseID(mine.Lease) == s.lease {
				v.Count, v.Acquired = mine.Count+1, mine.Acquired
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", mineRev)
		case others >= max:
			return false, rev, nil
		default:
			// Every key of the group unchanged since the read: a new
			// holder in between has a newer ModRevision and fails this.
			cmp = clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()
		}
		data, err := json.Marshal(v)
		if err != nil {
			return false, 0, fmt.Errorf("reboot semaphore %s: encode slot: %w", s.group, err)
		}
		txn, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(data), clientv3.WithLease(s.lease))).Commit()
		if err != nil {
			return false, 0, fmt.Errorf("reboot semaphore %s: take slot for %s: %w", s.group, s.holder, err)
		}
		if txn.Succeeded {
			return true, txn.Header.Revision, nil
		}
		// Someone else changed the group in between: read again.
	}
}

// Acquire waits until the holder holds a slot or ctx ends. It retries
// whenever a slot of the group is freed (released or lease expired).
func (s *Semaphore) Acquire(ctx context.Context, max int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		ok, rev, err := s.tryAcquire(ctx, max)
		if err != nil || ok {
			return err
		}
		wch := s.cli.Watch(ctx, LockGroupPrefix(s.group), clientv3.WithPrefix(), clientv3.WithRev(rev+1),
			clientv3.WithFilterPut())
		select {
		case wr, open := <-wch:
			if !open {
				return fmt.Errorf("reboot semaphore %s: wait for a slot: %w", s.group, context.Cause(ctx))
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("reboot semaphore %s: wait for a slot: %w", s.group, err)
			}
		case <-ctx.Done():
			return fmt.Errorf("reboot semaphore %s: wait for a slot: %w", s.group, ctx.Err())
		}
	}
}

// Release gives back one acquisition and returns how many remain; the slot
// is freed at 0. It fails with ErrNotHeld when the holder holds no slot and
// with ErrNotOwner when the slot is held under another lease (a stale
// incarnation of the holder must not free its successor's slot).
func (s *Semaphore) Release(ctx context.Context) (remaining int, err error) {
	key := LockKey(s.group, s.holder)
	for {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return 0, fmt.Errorf("reboot semaphore %s: read slot of %s: %w", s.group, s.holder, err)
		}
		if len(resp.Kvs) == 0 {
			return 0, fmt.Errorf("reboot semaphore %s: release by %s: %w", s.group, s.holder, ErrNotHeld)
		}
		kv := resp.Kvs[0]
		var v LockValue
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return 0, fmt.Errorf("reboot semaphore %s: decode slot of %s: %w", s.group, s.holder, err)
		}
		if clientv3.LeaseID(v.Lease) != s.lease || clientv3.LeaseID(kv.Lease) != s.lease {
			return 0, fmt.Errorf("reboot semaphore %s: release by %s under lease %x, slot is under lease %x: %w",
				s.group, s.holder, int64(s.lease), kv.Lease, ErrNotOwner)
		}
		op := clientv3.OpDelete(key)
		if v.Count > 1 {
			v.Count--
			data, err := json.Marshal(v)
			if err != nil {
				return 0, fmt.Errorf("reboot semaphore %s: encode slot: %w", s.group, err)
			}
			op = clientv3.OpPut(key, string(data), clientv3.WithLease(s.lease))
		} else {
			v.Count = 0
		}
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).Then(op).Commit()
		if err != nil {
			return 0, fmt.Errorf("reboot semaphore %s: release by %s: %w", s.group, s.holder, err)
		}
		if txn.Succeeded {
			return v.Count, nil
		}
	}
}

// Holders lists a group's current holders, sorted by name.
func Holders(ctx context.Context, cli *clientv3.Client, group string) ([]LockValue, error) {
	resp, err := cli.Get(ctx, LockGroupPrefix(group), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reboot semaphore %s: read holders: %w", group, err)
	}
	return decodeHolders(resp.Kvs)
}

// SlotHolders names every node holding a reboot slot in any group: nodes
// rebooting for a rollout, which maintenance (defragmentation) and
// self-healing leave alone.
func SlotHolders(ctx context.Context, cli *clientv3.Client) (map[string]bool, error) {
	resp, err := cli.Get(ctx, LockPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("reboot semaphore: read holders: %w", err)
	}
	out := map[string]bool{}
	for _, kv := range resp.Kvs {
		if _, holder, err := ParseLockKey(string(kv.Key)); err == nil {
			out[holder] = true
		}
	}
	return out, nil
}

func decodeHolders(kvs []*mvccpb.KeyValue) ([]LockValue, error) {
	out := make([]LockValue, 0, len(kvs))
	for _, kv := range kvs {
		_, holder, err := ParseLockKey(string(kv.Key))
		if err != nil {
			return nil, err
		}
		var v LockValue
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, fmt.Errorf("reboot semaphore: decode slot %q: %w", kv.Key, err)
		}
		v.Holder = holder
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Holder < out[j].Holder })
	return out, nil
}
