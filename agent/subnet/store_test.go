package subnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

func testRanges(v4 string, bits int) Ranges {
	return Ranges{IPv4: pfx(v4), NodeBits4: bits, IPv6: pfx("fd5a:1f03:9c2e::/48"), ReclaimAfterSeconds: 3600}
}

// always is a fence that holds (no leader term in these tests).
var always = clientv3.Compare(clientv3.CreateRevision("/test/never-written"), "=", 0)

func leasesIn(t *testing.T, cli *clientv3.Client) map[netip.Prefix]string {
	t.Helper()
	resp, err := cli.Get(context.Background(), LeasesPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]string{}
	for _, kv := range resp.Kvs {
		var l Lease
		if err := json.Unmarshal(kv.Value, &l); err != nil {
			t.Fatal(err)
		}
		out[l.Subnet] = l.Node
	}
	return out
}

// TestAcquireRace: nodes leasing at the same moment, each with its own
// client, never get the same subnet, and each finds its own again.
func TestAcquireRace(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	r := testRanges("10.88.0.0/20", 24) // 16 IPv4 subnets
	const n = 12
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	recs := make([]NodeRecord, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		cli := e.Client(t)
		wg.Go(func() {
			<-start
			recs[i], errs[i] = Acquire(ctx, cli, fmt.Sprintf("node-%d", i), r, Want{IPv4: true, IPv6: true}, time.Now())
		})
	}
	close(start)
	wg.Wait()
	seen := map[netip.Prefix]string{}
	for i, rec := range recs {
		if errs[i] != nil {
			t.Fatalf("node-%d: %v", i, errs[i])
		}
		for _, p := range []netip.Prefix{rec.IPv4, rec.IPv6} {
			if !p.IsValid() {
				t.Fatalf("node-%d: no subnet: %+v", i, rec)
			}
			if other, dup := seen[p]; dup {
				t.Fatalf("%s given to %s and node-%d", p, other, i)
			}
			seen[p] = rec.Node
		}
		if !r.IPv4.Contains(rec.IPv4.Addr()) || rec.IPv4.Bits() != 24 || !r.IPv6.Contains(rec.IPv6.Addr()) || rec.IPv6.Bits() != 64 {
			t.Fatalf("node-%d: %+v outside the ranges", i, rec)
		}
	}
	cli := e.Client(t)
	stored := leasesIn(t, cli)
	if len(stored) != 2*n {
		t.Fatalf("%d leases stored, want %d: %v", len(stored), 2*n, stored)
	}
	for p, node := range seen {
		if stored[p] != node {
			t.Fatalf("lease %s names %q, want %q", p, stored[p], node)
		}
	}
	// Lowest free: together they hold exactly the first n subnets.
	for i := range n {
		if _, ok := seen[nth(r.IPv4, 24, uint64(i))]; !ok {
			t.Fatalf("%s not leased: the allocation is not lowest-free", nth(r.IPv4, 24, uint64(i)))
		}
	}

	// A restarted node (a new client, the same name) gets its own back
	// and nothing new is leased.
	for i, want := range recs {
		got, err := Acquire(ctx, e.Client(t), want.Node, r, Want{IPv4: true, IPv6: true}, time.Now())
		if err != nil || got != want {
			t.Fatalf("node-%d after restart: %+v, %v; want %+v", i, got, err, want)
		}
	}
	if after := leasesIn(t, cli); len(after) != 2*n {
		t.Fatalf("restarts leased more: %d", len(after))
	}
}

// TestAcquireExhausted: a node that finds no free subnet gets one clear
// error naming the range and what to do, and nothing of it is stored
// (not even its IPv6 lease).
func TestAcquireExhausted(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := testRanges("10.9.0.0/23", 24) // two subnets
	for _, node := range []string{"a", "b"} {
		if _, err := Acquire(ctx, cli, node, r, Want{IPv4: true, IPv6: true}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Acquire(ctx, cli, "c", r, Want{IPv4: true, IPv6: true}, time.Now())
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("third node: %v, want ErrExhausted", err)
	}
	msg := err.Error()
	for _, want := range []string{"node c", "10.9.0.0/23", "all 2 /24 subnets", "larger range", "reclaim"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	if got, _ := cli.Get(ctx, NodeKey("c")); len(got.Kvs) != 0 {
		t.Fatal("a record was written for the refused node")
	}
	if got := leasesIn(t, cli); len(got) != 4 {
		t.Fatalf("leases after the refusal: %v", got)
	}
}

// TestCheckRoom: the join-time check says no for a new node once the
// range is full, names the range and the remedy, and still says yes for a
// node that holds its subnets (a rejoin); before the ranges are stored it
// has nothing to refuse.
func TestCheckRoom(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	if err := CheckRoom(ctx, cli, "a"); err != nil {
		t.Fatalf("no ranges stored yet: %v", err)
	}
	r, err := EnsureRanges(ctx, cli, testRanges("10.9.0.0/23", 24))
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"a", "b"} {
		if err := CheckRoom(ctx, cli, node); err != nil {
			t.Fatalf("%s before the range is full: %v", node, err)
		}
		if _, err := Acquire(ctx, cli, node, r, Want{IPv4: true, IPv6: true}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	err = CheckRoom(ctx, cli, "c")
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "node c") || !strings.Contains(err.Error(), "10.9.0.0/23") {
		t.Fatalf("third node: %v, want ErrExhausted naming the node and the range", err)
	}
	if err := CheckRoom(ctx, cli, "a"); err != nil {
		t.Errorf("node a holds its subnets, a rejoin must pass: %v", err)
	}
	if got := leasesIn(t, cli); len(got) != 4 {
		t.Fatalf("the check wrote leases: %v", got)
	}
}

// TestAcquireReleasesUnwanted: a node that now uses an explicit subnet
// (or turned IPv6 off) gives its lease of that family back.
func TestAcquireReleasesUnwanted(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := testRanges("10.88.0.0/16", 24)
	first, err := Acquire(ctx, cli, "a", r, Want{IPv4: true, IPv6: true}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got, err := Acquire(ctx, cli, "a", r, Want{IPv4: true}, time.Now())
	if err != nil || got.IPv4 != first.IPv4 || got.IPv6.IsValid() {
		t.Fatalf("%+v, %v", got, err)
	}
	if l := leasesIn(t, cli); len(l) != 1 || l[first.IPv4] != "a" {
		t.Fatalf("leases %v", l)
	}
}

func TestEnsureRangesFirstWins(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	if _, found, err := GetRanges(ctx, cli); found || err != nil {
		t.Fatalf("found %v, %v before bootstrap", found, err)
	}
	a := testRanges("10.88.0.0/16", 24)
	b := testRanges("10.77.0.0/16", 26)
	if got, err := EnsureRanges(ctx, cli, a); err != nil || got != a {
		t.Fatalf("%+v, %v", got, err)
	}
	if got, err := EnsureRanges(ctx, cli, b); err != nil || got != a {
		t.Fatalf("second writer: %+v, %v; want the first's", got, err)
	}
	if got, found, err := GetRanges(ctx, cli); !found || err != nil || got != a {
		t.Fatalf("%+v %v %v", got, found, err)
	}
	bad := a
	bad.NodeBits4 = 8
	if _, err := EnsureRanges(ctx, cli, bad); err == nil {
		t.Fatal("invalid ranges stored")
	}
}

// TestReclaim: the subnets of a node with no node document and no etcd
// member are reclaimed after the grace period, measured from when the
// reclaimer first saw it gone; not before, never a live node's, and the
// freed subnet goes to the next node that asks.
func TestReclaim(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := testRanges("10.88.0.0/16", 24)
	grace := r.ReclaimAfter()
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	gone, err := Acquire(ctx, cli, "gone", r, Want{IPv4: true, IPv6: true}, t0)
	if err != nil {
		t.Fatal(err)
	}
	alive, err := Acquire(ctx, cli, "alive", r, Want{IPv4: true, IPv6: true}, t0)
	if err != nil {
		t.Fatal(err)
	}
	// "alive" has a node document; "etcdtest" (the member) holds nothing.
	if _, err := cli.Put(ctx, nodedoc.NodeKey("alive"), "{}"); err != nil {
		t.Fatal(err)
	}

	round := func(now time.Time, want ...ActionKind) {
		t.Helper()
		acts, err := ReclaimOnce(ctx, cli, always, now, grace)
		if err != nil {
			t.Fatal(err)
		}
		var kinds []ActionKind
		for _, a := range acts {
			if a.Node != "gone" {
				t.Fatalf("action on %s: %+v", a.Node, a)
			}
			kinds = append(kinds, a.Kind)
		}
		if fmt.Sprint(kinds) != fmt.Sprint(want) {
			t.Fatalf("at %s: actions %v, want %v", now.Sub(t0), kinds, want)
		}
	}
	round(t0, MarkMissing)
	round(t0.Add(grace - time.Second)) // within the grace: kept
	if l := leasesIn(t, cli); len(l) != 4 {
		t.Fatalf("leases reclaimed early: %v", l)
	}
	// A failing fence (a deposed reclaimer) changes nothing.
	deposed := clientv3.Compare(clientv3.CreateRevision("/test/never-written"), "=", 7)
	if acts, _ := ReclaimOnce(ctx, cli, deposed, t0.Add(2*grace), grace); len(acts) != 0 {
		t.Fatalf("deposed reclaimer acted: %+v", acts)
	}
	round(t0.Add(grace), Reclaim)
	l := leasesIn(t, cli)
	if len(l) != 2 || l[alive.IPv4] != "alive" || l[alive.IPv6] != "alive" {
		t.Fatalf("after reclaim: %v", l)
	}
	if got, _ := cli.Get(ctx, NodeKey("gone")); len(got.Kvs) != 0 {
		t.Fatal("record of the reclaimed node kept")
	}
	next, err := Acquire(ctx, cli, "next", r, Want{IPv4: true, IPv6: true}, t0)
	if err != nil || next.IPv4 != gone.IPv4 || next.IPv6 != gone.IPv6 {
		t.Fatalf("next node got %+v, %v; want the reclaimed %+v", next, err, gone)
	}
}

// TestReclaimNodeBack: a node that returns within the grace keeps its
// subnets and its mark is cleared, by the reclaimer or by its own start.
func TestReclaimNodeBack(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := testRanges("10.88.0.0/16", 24)
	grace := time.Hour
	t0 := time.Now()
	first, err := Acquire(ctx, cli, "a", r, Want{IPv4: true, IPv6: true}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if acts, err := ReclaimOnce(ctx, cli, always, t0, grace); err != nil || len(acts) != 1 || acts[0].Kind != MarkMissing {
		t.Fatalf("%+v %v", acts, err)
	}
	if _, err := cli.Put(ctx, nodedoc.NodeKey("a"), "{}"); err != nil {
		t.Fatal(err)
	}
	if acts, err := ReclaimOnce(ctx, cli, always, t0.Add(2*grace), grace); err != nil || len(acts) != 1 || acts[0].Kind != ClearMissing {
		t.Fatalf("%+v %v", acts, err)
	}
	// Gone again, marked, then its own start clears the mark.
	if _, err := cli.Delete(ctx, nodedoc.NodeKey("a")); err != nil {
		t.Fatal(err)
	}
	if acts, _ := ReclaimOnce(ctx, cli, always, t0.Add(3*grace), grace); len(acts) != 1 || acts[0].Kind != MarkMissing {
		t.Fatalf("%+v", acts)
	}
	got, err := Acquire(ctx, cli, "a", r, Want{IPv4: true, IPv6: true}, t0)
	if err != nil || got != first {
		t.Fatalf("%+v %v", got, err)
	}
	resp, _ := cli.Get(ctx, NodeKey("a"))
	var rec NodeRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil || !rec.MissingSince.IsZero() {
		t.Fatalf("record %s after the node's start", resp.Kvs[0].Value)
	}
}

// TestNodeRun: the bootstrapping node stores the ranges (a random ULA
// /48), a joiner waits for them, both lease distinct subnets and the
// workload side gets them from Wait; an explicit subnet inside the range
// is refused with one line, one outside is used without a lease.
func TestNodeRun(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	run := func(o NodeOptions) (*Node, chan error) {
		n := NewNode(o)
		errc := make(chan error, 1)
		cli := e.Client(t)
		wg.Go(func() { errc <- n.Run(ctx, cli) })
		return n, errc
	}
	wait := func(n *Node) Assigned {
		t.Helper()
		// Wait reports a passing error (ranges not stored yet) at once:
		// ask again until the lease is there.
		deadline := time.Now().Add(20 * time.Second)
		for {
			wctx, wcancel := context.WithTimeout(ctx, time.Second)
			got, err := n.Wait(wctx)
			wcancel()
			if err == nil {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	base := Ranges{IPv4: pfx(DefaultIPv4), NodeBits4: DefaultNodeBits4, ReclaimAfterSeconds: 3600}

	// The joiner starts first and waits for the ranges.
	joiner, _ := run(NodeOptions{Name: "node-2", Containers: true, Ranges: testRanges("10.1.0.0/16", 28)})
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := joiner.Wait(wctx); err == nil || !strings.Contains(err.Error(), RangesKey) {
		t.Fatalf("joiner before bootstrap: %v", err)
	}
	wcancel()
	boot, _ := run(NodeOptions{Name: "node-1", Bootstrap: true, Containers: true, Ranges: base})
	a, b := wait(boot), wait(joiner)
	if a.Ranges != b.Ranges || a.Ranges.IPv4 != pfx(DefaultIPv4) || CheckIPv6(a.Ranges.IPv6) != nil || a.Ranges.IPv6.Bits() != 48 {
		t.Fatalf("ranges %+v / %+v", a.Ranges, b.Ranges)
	}
	if a.IPv4 == b.IPv4 || a.IPv6 == b.IPv6 || !a.IPv4.IsValid() || !b.IPv6.IsValid() || b.IPv4.Bits() != 24 {
		t.Fatalf("subnets %+v / %+v", a, b)
	}

	// Explicit subnets: inside the range refused, outside used as is.
	_, errc := run(NodeOptions{Name: "node-3", Containers: true, Own4: pfx("10.88.7.0/24")})
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "bridge-subnet 10.88.7.0/24 overlaps the cluster range 10.88.0.0/16") {
			t.Fatalf("explicit subnet inside the range: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("explicit subnet inside the range not refused")
	}
	own, _ := run(NodeOptions{Name: "node-4", Containers: true, Own4: pfx("10.231.51.0/24"), Own6: pfx("fd00:231:51::/64")})
	if got := wait(own); got.IPv4 != pfx("10.231.51.0/24") || got.IPv6 != pfx("fd00:231:51::/64") {
		t.Fatalf("explicit subnets: %+v", got)
	}
	none, _ := run(NodeOptions{Name: "node-5", Containers: false})
	if got := wait(none); got.IPv4.IsValid() || got.IPv6.IsValid() {
		t.Fatalf("a node without containers got %+v", got)
	}
	for node, p := range leasesIn(t, e.Client(t)) {
		if p != "node-1" && p != "node-2" {
			t.Fatalf("lease %s held by %s", node, p)
		}
	}
}

// TestPermissions: under etcd auth as berth sets it up (agent/cluster
// auth.go: nodes root, ops read-only on /berth/v1/, tenants only their
// grants), a node leases, ops reads the leases but cannot write them, and
// a tenant can do neither.
func TestPermissions(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{Auth: true})
	root := e.Client(t)
	ctx := context.Background()
	for _, u := range []string{"ops", "tenant:acme"} {
		if _, err := root.RoleAdd(ctx, u); err != nil {
			t.Fatal(err)
		}
		if _, err := root.UserAddWithOptions(ctx, u, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := root.UserGrantRole(ctx, u, u); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.RoleGrantPermission(ctx, "ops", nodedoc.Prefix, clientv3.GetPrefixRangeEnd(nodedoc.Prefix), clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	r, err := EnsureRanges(ctx, root, testRanges("10.88.0.0/16", 24))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Acquire(ctx, root, "node-1", r, Want{IPv4: true, IPv6: true}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	opsCert, opsKey := e.Issue(t, "ops", false)
	ops := e.ClientAs(t, opsCert, opsKey)
	if got := leasesIn(t, ops); got[rec.IPv4] != "node-1" {
		t.Fatalf("ops reads %v", got)
	}
	if _, err := Acquire(ctx, ops, "intruder", r, Want{IPv4: true}, time.Now()); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("ops leased a subnet: %v", err)
	}
	tenantCert, tenantKey := e.Issue(t, "tenant:acme", false)
	tenant := e.ClientAs(t, tenantCert, tenantKey)
	if _, err := tenant.Get(ctx, LeaseKey(rec.IPv4)); err == nil {
		t.Fatal("a tenant reads the leases")
	}
	if _, err := tenant.Put(ctx, LeaseKey(pfx("10.88.200.0/24")), "{}"); err == nil {
		t.Fatal("a tenant wrote a lease")
	}
}
