package rollout

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func grant(t *testing.T, cli *clientv3.Client, ttl int64) clientv3.LeaseID {
	t.Helper()
	l, err := cli.Grant(context.Background(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return l.ID
}

func newSem(t *testing.T, cli *clientv3.Client, group, holder string, lease clientv3.LeaseID) *Semaphore {
	t.Helper()
	s, err := NewSemaphore(cli, group, holder, lease)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// holderWatch follows every change under LockPrefix from rev on and records
// the most holders any group had at any revision. It stops at the sentinel
// key, written by stop once the test's writers are done, so that every
// earlier revision has been seen.
type holderWatch struct {
	mu   sync.Mutex
	peak map[string]int
	done chan struct{}
	cli  *clientv3.Client
}

const sentinelGroup = "zz-sentinel"

func watchHolders(t *testing.T, cli *clientv3.Client) *holderWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	resp, err := cli.Get(ctx, LockPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	hw := &holderWatch{peak: map[string]int{}, done: make(chan struct{}), cli: cli}
	held := map[string]map[string]bool{}
	for _, kv := range resp.Kvs {
		g, h, _ := ParseLockKey(string(kv.Key))
		if held[g] == nil {
			held[g] = map[string]bool{}
		}
		held[g][h] = true
	}
	wch := cli.Watch(ctx, LockPrefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		defer close(hw.done)
		for wr := range wch {
			if wr.Err() != nil {
				t.Errorf("holder watch: %v", wr.Err())
				return
			}
			// Events of one revision (one Txn) are applied together
			// before counting.
			for i := 0; i < len(wr.Events); {
				rev := wr.Events[i].Kv.ModRevision
				for ; i < len(wr.Events) && wr.Events[i].Kv.ModRevision == rev; i++ {
					ev := wr.Events[i]
					g, h, err := ParseLockKey(string(ev.Kv.Key))
					if err != nil {
						t.Errorf("holder watch: %v", err)
						continue
					}
					if g == sentinelGroup {
						return
					}
					if held[g] == nil {
						held[g] = map[string]bool{}
					}
					if ev.Type == mvccpb.DELETE {
						delete(held[g], h)
					} else {
						held[g][h] = true
					}
				}
				hw.mu.Lock()
				for g, hs := range held {
					hw.peak[g] = max(hw.peak[g], len(hs))
				}
				hw.mu.Unlock()
			}
		}
	}()
	return hw
}

// stop waits until the watcher has seen everything written so far and
// returns the peak number of holders per group.
func (hw *holderWatch) stop(t *testing.T) map[string]int {
	t.Helper()
	if _, err := hw.cli.Put(context.Background(), LockKey(sentinelGroup, "end"), `{"holder":"end"}`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hw.done:
	case <-time.After(20 * time.Second):
		t.Fatal("holder watch did not reach the sentinel")
	}
	if _, err := hw.cli.Delete(context.Background(), LockKey(sentinelGroup, "end")); err != nil {
		t.Fatal(err)
	}
	hw.mu.Lock()
	defer hw.mu.Unlock()
	delete(hw.peak, sentinelGroup)
	return hw.peak
}

// 50 simulated nodes, each with its own lease, race for 3 slots, three
// times each; an independent watcher checks every revision of etcd.
func TestSemaphoreRace(t *testing.T) {
	const nodes, maxHolders, rounds = 50, 3, 3
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	hw := watchHolders(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var inside, peakInside, acquisitions atomic.Int64
	var wg sync.WaitGroup
	for i := range nodes {
		sem := newSem(t, cli, "all", fmt.Sprintf("node-%02d", i), grant(t, cli, 60))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := sem.Acquire(ctx, maxHolders); err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for p := peakInside.Load(); n > p && !peakInside.CompareAndSwap(p, n); p = peakInside.Load() {
				}
				acquisitions.Add(1)
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				inside.Add(-1)
				if left, err := sem.Release(ctx); err != nil || left != 0 {
					t.Errorf("release: %d %v", left, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	peak := hw.stop(t)
	t.Logf("%d acquisitions by %d nodes; peak holders in etcd %d, in process %d (max %d)",
		acquisitions.Load(), nodes, peak["all"], peakInside.Load(), maxHolders)
	if acquisitions.Load() != nodes*rounds {
		t.Errorf("%d acquisitions, want %d", acquisitions.Load(), nodes*rounds)
	}
	if peak["all"] > maxHolders || peakInside.Load() > maxHolders {
		t.Errorf("peak holders %d in etcd, %d in process: more than %d", peak["all"], peakInside.Load(), maxHolders)
	}
	if peak["all"] < 2 {
		t.Errorf("peak holders %d: the race did not overlap at all, the test proves nothing", peak["all"])
	}
	if hs, err := Holders(ctx, cli, "all"); err != nil || len(hs) != 0 {
		t.Errorf("holders left: %v %v", hs, err)
	}
}

// A holder that dies (its lease is not kept alive) frees its slot by
// itself; a waiter gets the slot once etcd expires the lease.
func TestSemaphoreLeaseExpiry(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	dead := newSem(t, cli, "all", "dead", grant(t, cli, 2)) // never kept alive
	live := newSem(t, cli, "all", "live", grant(t, cli, 60))
	if ok, err := dead.TryAcquire(ctx, 1); err != nil || !ok {
		t.Fatalf("dead holder acquire: %v %v", ok, err)
	}
	if ok, err := live.TryAcquire(ctx, 1); err != nil || ok {
		t.Fatalf("second holder got a slot of 1: %v %v", ok, err)
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := live.Acquire(wctx, 1); err != nil {
		t.Fatalf("slot of an expired holder not freed: %v", err)
	}
	waited := time.Since(start)
	t.Logf("slot freed by lease expiry after %s", waited)
	if waited < time.Second {
		t.Errorf("got the slot after %s, before the dead holder's lease could expire", waited)
	}
	hs, err := Holders(ctx, cli, "all")
	if err != nil || len(hs) != 1 || hs[0].Holder != "live" {
		t.Fatalf("holders = %+v %v, want only live", hs, err)
	}
	// A revoked lease (a holder that is removed for good) frees at once.
	if _, err := cli.Revoke(ctx, live.lease); err != nil {
		t.Fatal(err)
	}
	other := newSem(t, cli, "all", "other", grant(t, cli, 60))
	if ok, err := other.TryAcquire(ctx, 1); err != nil || !ok {
		t.Fatalf("slot not free after revoke: %v %v", ok, err)
	}
}

func TestSemaphoreReentrantAndOwned(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	a := newSem(t, cli, "all", "node-a", grant(t, cli, 60))
	b := newSem(t, cli, "all", "node-b", grant(t, cli, 60))
	mustTry := func(s *Semaphore, max int, want bool) {
		t.Helper()
		ok, err := s.TryAcquire(ctx, max)
		if err != nil || ok != want {
			t.Fatalf("%s TryAcquire(%d) = %v %v, want %v", s.holder, max, ok, err, want)
		}
	}
	mustTry(a, 1, true)
	mustTry(a, 1, true) // re-entry does not count against max
	mustTry(b, 1, false)
	// Release by a non-owner: b holds nothing and a's slot stays.
	if _, err := b.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release by non-owner = %v, want ErrNotHeld", err)
	}
	if left, err := a.Release(ctx); err != nil || left != 1 {
		t.Fatalf("first release = %d %v, want 1 left", left, err)
	}
	mustTry(b, 1, false) // still held once
	if left, err := a.Release(ctx); err != nil || left != 0 {
		t.Fatalf("second release = %d %v, want 0 left", left, err)
	}
	if _, err := a.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release of a free slot = %v, want ErrNotHeld", err)
	}
	mustTry(b, 1, true)

	// An agent restart: the same holder under a new lease adopts its slot;
	// the old incarnation may no longer release it, and the old lease's
	// end no longer frees it.
	oldLease := grant(t, cli, 60)
	old := newSem(t, cli, "all", "node-c", oldLease)
	mustTry(old, 2, true)
	mustTry(old, 2, true)
	restarted := newSem(t, cli, "all", "node-c", grant(t, cli, 60))
	mustTry(restarted, 2, true)
	if _, err := old.Release(ctx); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("release by the old incarnation = %v, want ErrNotOwner", err)
	}
	if _, err := cli.Revoke(ctx, oldLease); err != nil {
		t.Fatal(err)
	}
	hs, err := Holders(ctx, cli, "all")
	if err != nil || len(hs) != 2 || hs[1].Holder != "node-c" || hs[1].Count != 1 {
		t.Fatalf("holders after restart = %+v %v", hs, err)
	}
	if left, err := restarted.Release(ctx); err != nil || left != 0 {
		t.Fatalf("release by the new incarnation = %d %v", left, err)
	}

	// Lowering the maximum keeps current holders but admits nobody new.
	c := newSem(t, cli, "all", "node-c", grant(t, cli, 60))
	mustTry(c, 2, true) // b and c hold
	d := newSem(t, cli, "all", "node-d", grant(t, cli, 60))
	mustTry(d, 1, false)
	mustTry(c, 1, true)
	if _, err := c.TryAcquire(ctx, 0); err == nil {
		t.Error("max 0 accepted")
	}
	// Groups are independent.
	mustTry(newSem(t, cli, "edge", "node-d", grant(t, cli, 60)), 1, true)

	// A slot held twice and released once is still bound to the lease.
	eLease := grant(t, cli, 60)
	e2 := newSem(t, cli, "solo", "node-e", eLease)
	mustTry(e2, 1, true)
	mustTry(e2, 1, true)
	if left, err := e2.Release(ctx); err != nil || left != 1 {
		t.Fatalf("release = %d %v", left, err)
	}
	if _, err := cli.Revoke(ctx, eLease); err != nil {
		t.Fatal(err)
	}
	if hs, err := Holders(ctx, cli, "solo"); err != nil || len(hs) != 0 {
		t.Fatalf("slot outlived its lease after a partial release: %+v %v", hs, err)
	}

	if _, err := NewSemaphore(cli, "all", "node-x", clientv3.NoLease); err == nil {
		t.Error("semaphore without a lease accepted")
	}
	if _, err := NewSemaphore(cli, "All", "node-x", 1); err == nil {
		t.Error("bad group accepted")
	}
}

func TestSlotHolders(t *testing.T) {
	cli := etcdtest.Start(t, etcdtest.Options{}).Client(t)
	lease := grant(t, cli, 30)
	for _, g := range []struct{ group, holder string }{{"all", "n1"}, {VotersGroup, "n1"}, {"edge", "n2"}} {
		if ok, err := newSem(t, cli, g.group, g.holder, lease).TryAcquire(context.Background(), 2); err != nil || !ok {
			t.Fatalf("acquire %s/%s: %v %v", g.group, g.holder, ok, err)
		}
	}
	got, err := SlotHolders(context.Background(), cli)
	if err != nil || len(got) != 2 || !got["n1"] || !got["n2"] {
		t.Fatalf("SlotHolders = %v, %v; want n1 and n2", got, err)
	}
}

// The election's keys are LeaderKey/<lease>: one slash, not two.
func TestLeaderKeyHasOneSlash(t *testing.T) {
	cli := etcdtest.Start(t, etcdtest.Options{}).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); (&Leader{Node: "n1", Interval: time.Hour}).Run(ctx, cli) }()
	defer func() { cancel(); <-done }()
	var keys []string
	deadline := time.Now().Add(10 * time.Second)
	for len(keys) == 0 && time.Now().Before(deadline) {
		resp, err := cli.Get(ctx, Prefix+"leader", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(keys) != 1 {
		t.Fatalf("election keys %v, want one", keys)
	}
	rest, ok := strings.CutPrefix(keys[0], "/berth/v1/rollout/leader/")
	if !ok || rest == "" || strings.Contains(rest, "/") {
		t.Fatalf("election key %q, want /berth/v1/rollout/leader/<lease>", keys[0])
	}
}
