package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

// alive puts node's document with a lease, as a live agent does, and
// returns the lease (revoke it to make the node dead).
func alive(t *testing.T, cli *clientv3.Client, node string) clientv3.LeaseID {
	t.Helper()
	ctx := context.Background()
	l, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, nodedoc.NodeKey(node), `{}`, clientv3.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	return l.ID
}

// dies ends node's lease: its document goes, as when its agent stops.
func dies(t *testing.T, cli *clientv3.Client, l clientv3.LeaseID) {
	t.Helper()
	if _, err := cli.Revoke(context.Background(), l); err != nil {
		t.Fatal(err)
	}
}

// TestPromoteRace: nodes that all find the owner dead promote at the
// same moment, each with its own client: exactly one wins the next epoch,
// the others are refused because the winner is alive. 20 volumes, 20 races.
func TestPromoteRace(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	nodes := []string{"node-1", "node-2", "node-3"}
	for _, n := range nodes {
		alive(t, cli, n)
	}
	clients := make([]*clientv3.Client, len(nodes))
	for i := range nodes {
		clients[i] = e.Client(t)
	}
	for round := range 20 {
		// The owner, node-0, is dead: it has no node document.
		id := ID{Tenant: "acme", Job: "db", Replica: round, Name: "data"}
		r := Record{ID: id, SizeBytes: 1 << 30, Owner: "node-0", Epoch: 7}
		for _, n := range nodes {
			r.Copies = append(r.Copies, Copy{Node: n, State: UpToDate})
		}
		if _, err := Create(ctx, cli, r); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make([]Record, len(nodes))
		errs := make([]error, len(nodes))
		for i, n := range nodes {
			wg.Go(func() {
				<-start
				results[i], errs[i] = PromoteNode(ctx, clients[i], id, n, time.Now())
			})
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("round %d: %s and %s both promoted: %+v %+v", round, nodes[won], nodes[i], results[won], results[i])
			case err == nil:
				won = i
			case !strings.Contains(err.Error(), "which is alive"):
				t.Fatalf("round %d: %s refused for another reason: %v", round, nodes[i], err)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: nobody promoted: %v", round, errs)
		}
		stored, err := Get(ctx, cli, id)
		if err != nil {
			t.Fatal(err)
		}
		if stored.Owner != nodes[won] || stored.Epoch != 8 || results[won].Epoch != 8 {
			t.Fatalf("round %d: stored owner %s epoch %d, winner %s at epoch %d", round, stored.Owner, stored.Epoch, nodes[won], results[won].Epoch)
		}
	}
	if _, err := Create(ctx, cli, Record{ID: ID{Tenant: "acme", Job: "db", Name: "data"}}); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("create over an existing volume: %v", err)
	}
}

// TestFenceDeposed: a primary cut off from the others fences only while
// it owns the epoch it acts at; once the peer was promoted (the owner's
// lease ended) the old primary's fence is refused as deposed and the
// record keeps the new owner's view.
func TestFenceDeposed(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	id := ID{Tenant: "acme", Job: "db", Name: "data"}
	if _, err := Create(ctx, cli, Record{ID: id, Copies: []Copy{{Node: "node-1", State: UpToDate}, {Node: "node-2", State: UpToDate}}}); err != nil {
		t.Fatal(err)
	}
	l1 := alive(t, cli, "node-1")
	alive(t, cli, "node-2")
	r, err := PromoteNode(ctx, cli, id, "node-1", time.Now())
	if err != nil || r.Owner != "node-1" || r.Epoch != 1 {
		t.Fatalf("first promotion: %+v, %v", r, err)
	}
	if _, err := PromoteNode(ctx, cli, id, "node-2", time.Now()); err == nil {
		t.Fatal("node-2 promoted while node-1 is alive")
	}
	// node-1 loses node-2 and fences it: node-2's copy is outdated.
	r, err = FenceNode(ctx, cli, id, "node-1", 1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := r.Copy("node-2"); c.State != Outdated {
		t.Fatalf("after the fence node-2 is %s", c.State)
	}
	// node-1 dies; node-2 is outdated, so it may not take over.
	dies(t, cli, l1)
	if _, err := PromoteNode(ctx, cli, id, "node-2", time.Now()); err == nil || !strings.Contains(err.Error(), "is outdated") {
		t.Fatalf("outdated node-2 promoted: %v", err)
	}
	// node-1 comes back, resyncs node-2 and says so at its epoch.
	alive(t, cli, "node-1")
	if _, err := MarkSynced(ctx, cli, id, "node-1", "node-2", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Now node-1 is partitioned from node-2 and from etcd: its lease ends,
	// node-2 (up to date) takes over at epoch 2.
	if _, err := cli.Delete(ctx, nodedoc.NodeKey("node-1")); err != nil {
		t.Fatal(err)
	}
	r, err = PromoteNode(ctx, cli, id, "node-2", time.Now())
	if err != nil || r.Owner != "node-2" || r.Epoch != 2 {
		t.Fatalf("node-2 after node-1's lease ended: %+v, %v", r, err)
	}
	// node-1's fence handler reaches etcd late: deposed, nothing written.
	before, _ := Get(ctx, cli, id)
	if _, err := FenceNode(ctx, cli, id, "node-1", 1, time.Now()); !errors.Is(err, ErrDeposed) {
		t.Fatalf("old primary's fence: %v, want deposed", err)
	}
	after, _ := Get(ctx, cli, id)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("a deposed fence changed the record:\n%+v\n%+v", before, after)
	}
}

// TestFenceEtcdUnreachable: with etcd gone the fence fails within its
// context (the handler then keeps I/O frozen) and says why.
func TestFenceEtcdUnreachable(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	id := ID{Tenant: "acme", Job: "db", Name: "data"}
	if _, err := Create(ctx, cli, Record{ID: id, Copies: []Copy{{Node: "node-1", State: UpToDate}, {Node: "node-2", State: UpToDate}}, Owner: "node-1", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	// The primary is cut off from etcd: its client reaches no member.
	cut := unreachable(t)
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := FenceNode(tctx, cut, id, "node-1", 1, time.Now())
	if err == nil || errors.Is(err, ErrDeposed) {
		t.Fatalf("fence with etcd down: %v, want an error that is not deposed", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the fence took %s with a 2 s context", took)
	}
	if !strings.Contains(err.Error(), "volume acme/db/0/data") {
		t.Errorf("error %q does not name the volume", err)
	}
	if r, _ := Get(ctx, cli, id); r.Copies[1].State != UpToDate {
		t.Errorf("a fence that never reached etcd changed the record: %+v", r)
	}
}

func TestGetMissingAndMalformed(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	id := ID{Tenant: "acme", Job: "db", Name: "data"}
	if _, err := Get(ctx, cli, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := PromoteNode(ctx, cli, id, "node-1", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("promote missing: %v", err)
	}
	cli.Put(ctx, Key(id), "{not json")
	if _, err := Get(ctx, cli, id); err == nil || !strings.Contains(err.Error(), "parse "+Key(id)) {
		t.Errorf("malformed: %v", err)
	}
	other := id
	other.Name = "logs"
	cli.Put(ctx, Key(id), fmt.Sprintf(`{"id":{"tenant":"acme","job":"db","replica":0,"name":"logs"}}`))
	if _, err := Get(ctx, cli, id); err == nil || !strings.Contains(err.Error(), "holds the record of "+other.String()) {
		t.Errorf("record under the wrong key: %v", err)
	}
}

// TestCreateMinors: volumes created at the same moment, each by its own
// client, get distinct minors, the lowest free ones, each reserved under
// MinorKey with its volume's name.
func TestCreateMinors(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	const n = 10
	got := make([]Record, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		cli := e.Client(t)
		wg.Go(func() {
			<-start
			got[i], errs[i] = Create(ctx, cli, Record{ID: ID{Tenant: "acme", Job: "db", Replica: i, Name: "data"}, Minor: 99})
		})
	}
	close(start)
	wg.Wait()
	cli := e.Client(t)
	seen := map[int]bool{}
	for i, r := range got {
		if errs[i] != nil {
			t.Fatalf("volume %d: %v", i, errs[i])
		}
		if seen[r.Minor] || r.Minor >= n {
			t.Fatalf("minor %d given twice or not among the lowest %d: %+v", r.Minor, n, got)
		}
		seen[r.Minor] = true
		resp, err := cli.Get(ctx, MinorKey(r.Minor))
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != r.ID.String() {
			t.Fatalf("minor %d reserved as %v, %v; want %s", r.Minor, resp, err, r.ID)
		}
		if stored, err := Get(ctx, cli, r.ID); err != nil || stored.Minor != r.Minor {
			t.Fatalf("stored %+v, %v; want minor %d", stored, err, r.Minor)
		}
	}
}

func TestLowestFree(t *testing.T) {
	if m, ok := lowestFree(map[int]bool{0: true, 1: true, 3: true}, 10); !ok || m != 2 {
		t.Errorf("lowestFree = %d %v, want 2", m, ok)
	}
	if _, ok := lowestFree(map[int]bool{0: true, 1: true}, 1); ok {
		t.Errorf("lowestFree of a full range: ok")
	}
}

// TestFencePeer: the handler's exit codes on a real etcd: 4 when the
// owner fences, 6 when deposed (at once, no retries), 1 when etcd is not
// reached within its time, which it keeps trying until then.
func TestFencePeer(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	id := ID{Tenant: "acme", Job: "db", Name: "data"}
	if _, err := Create(ctx, cli, Record{ID: id, Copies: []Copy{{Node: "node-1", State: UpToDate}, {Node: "node-2", State: UpToDate}}, Owner: "node-1", Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if code := FencePeer(ctx, cli, id, "node-1", 3, 5*time.Second, log); code != 4 {
		t.Errorf("the owner's fence: exit %d, want 4", code)
	}
	if r, _ := Get(ctx, cli, id); r.Copies[1].State != Outdated {
		t.Errorf("after the fence node-2 is %s", r.Copies[1].State)
	}
	start := time.Now()
	if code := FencePeer(ctx, cli, id, "node-1", 2, 5*time.Second, log); code != 6 || time.Since(start) > 2*time.Second {
		t.Errorf("a fence at an old epoch: exit %d after %s, want 6 at once", code, time.Since(start))
	}
	cut := unreachable(t)
	start = time.Now()
	if code := FencePeer(ctx, cut, id, "node-1", 3, 2*time.Second, log); code != 1 {
		t.Errorf("etcd unreachable: exit %d, want 1", code)
	}
	if took := time.Since(start); took < 1500*time.Millisecond || took > 6*time.Second {
		t.Errorf("etcd unreachable: gave up after %s, want about the 2 s it was given", took)
	}
}

// unreachable is a client of a node cut off from etcd: its endpoint is a
// loopback port nobody listens on.
func unreachable(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestListRemove: List gives every record in key order and reports a
// malformed one apart; Remove frees the minor for the next volume.
func TestListRemove(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	a := ID{Tenant: "acme", Job: "db", Name: "data"}
	b := ID{Tenant: "acme", Job: "db", Replica: 1, Name: "data"}
	ra, err := Create(ctx, cli, Record{ID: a})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, cli, Record{ID: b}); err != nil {
		t.Fatal(err)
	}
	cli.Put(ctx, Prefix+"acme/db/x/data", "{}")
	recs, errs, err := List(ctx, cli)
	if err != nil || len(recs) != 2 || recs[0].ID != a || recs[1].ID != b || len(errs) != 1 {
		t.Fatalf("List = %+v, %v, %v; want a, b and one error", recs, errs, err)
	}
	if err := Remove(ctx, cli, a); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(ctx, cli, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Remove: %v", err)
	}
	if err := Remove(ctx, cli, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
	c, err := Create(ctx, cli, Record{ID: ID{Tenant: "acme", Job: "web", Name: "cache"}})
	if err != nil || c.Minor != ra.Minor {
		t.Errorf("the next volume got minor %d, %v; want the freed %d", c.Minor, err, ra.Minor)
	}
}
