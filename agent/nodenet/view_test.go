package nodenet

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/internal/etcdview"
)

// TestViewFollowsEtcd: the node network's view of a real etcd holds the
// leases, the nodes' addresses and the valid replica statuses, and drops
// what is deleted; a lease whose body names another subnet than its key,
// and a status under another tenant's key, are left out.
func TestViewFollowsEtcd(t *testing.T) {
	cli := etcdtest.Start(t, etcdtest.Options{}).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(k string, v any) {
		data, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, k, string(data)); err != nil {
			t.Fatal(err)
		}
	}
	l1 := subnet.Lease{Subnet: mp("10.88.1.0/24"), Node: "n1"}
	put(subnet.LeaseKey(l1.Subnet), l1)
	put(subnet.LeaseKey(mp("10.88.9.0/24")), subnet.Lease{Subnet: mp("10.88.2.0/24"), Node: "n9"}) // key and body disagree
	put(nodedoc.NodeKey("n1"), nodedoc.Node{Addresses: []string{"10.240.0.11"}})
	st := jobs.ReplicaStatus{Schema: jobs.ReplicaSchema, Tenant: "acme", Job: "web", Replica: 0, State: jobs.StateRunning, IPv4: "10.88.1.2"}
	put(jobs.StatusKey("acme", "web", 0), st)
	put(jobs.StatusKey("beta", "web", 0), st) // acme's status under beta's key

	v := newClusterView(slog.New(slog.DiscardHandler))
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	go etcdview.Follow(fctx, cli, Prefixes, v, slog.New(slog.DiscardHandler))
	waitView(t, v, func(s snapshot) bool {
		return len(s.Leases) == 1 && s.Leases[0] == l1 && len(s.Nodes["n1"]) == 1 && s.Nodes["n1"][0] == ma("10.240.0.11") &&
			len(s.Statuses) == 1 && s.Statuses[0].Tenant == "acme"
	})

	l2 := subnet.Lease{Subnet: mp("10.88.2.0/24"), Node: "n2"}
	put(subnet.LeaseKey(l2.Subnet), l2)
	put(nodedoc.NodeKey("n2"), nodedoc.Node{Addresses: []string{"10.240.0.12", "not-an-ip"}})
	if _, err := cli.Delete(ctx, nodedoc.NodeKey("n1")); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, jobs.StatusKey("acme", "web", 0)); err != nil {
		t.Fatal(err)
	}
	// n1's document went (its lease lapsed) but n1 still holds its
	// subnet: its last address stays, so its route does not flap.
	waitView(t, v, func(s snapshot) bool {
		return len(s.Leases) == 2 && len(s.Nodes["n1"]) == 1 && s.Nodes["n1"][0] == ma("10.240.0.11") &&
			len(s.Nodes["n2"]) == 1 && len(s.Statuses) == 0
	})
	// Once n1's subnet lease is gone too (the node was removed), so is n1.
	if _, err := cli.Delete(ctx, subnet.LeaseKey(l1.Subnet)); err != nil {
		t.Fatal(err)
	}
	waitView(t, v, func(s snapshot) bool {
		_, n1 := s.Nodes["n1"]
		return len(s.Leases) == 1 && !n1 && len(s.Nodes["n2"]) == 1
	})
}

func waitView(t *testing.T, v *clusterView, ok func(snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := v.snapshot()
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("view never matched: %+v", s)
		}
		select {
		case <-v.changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}
