package sched

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// putDraining rewrites a simulated node document with draining set or
// cleared, as the node's publisher would.
func putDraining(t testing.TB, cli *clientv3.Client, name string, cores int, memGiB uint64, draining bool) {
	t.Helper()
	doc := nodedoc.Node{Schema: nodedoc.Schema, Name: name, Role: nodedoc.RoleClient, CPU: nodedoc.CPU{Cores: cores},
		Memory: nodedoc.Memory{TotalBytes: memGiB << 30}, Ready: true, Draining: draining, Heartbeat: time.Now()}
	data, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), nodedoc.NodeKey(name), string(data)); err != nil {
		t.Fatal(err)
	}
}

type drainResult struct {
	left int
	err  error
	took time.Duration
}

func waitDrainedAsync(cli *clientv3.Client, node string, timeout time.Duration) <-chan drainResult {
	out := make(chan drainResult, 1)
	started := time.Now()
	go func() {
		left, err := WaitDrained(context.Background(), cli, node, timeout)
		out <- drainResult{left, err, time.Since(started)}
	}()
	return out
}

func TestDrainMovesReplicasAtOnce(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	// A lost node's replicas would wait a minute; a draining node's must not.
	const grace = time.Minute
	startScheduler(t, cli, Options{Name: "s1", Grace: grace})
	putJob(t, cli, newJob("acme", "web", 3, 100, 64<<20))
	waitPlaced(t, cli, "acme", "web", "placed 3/3")
	var onN2 jobs.Assignment
	for _, a := range assignments(t, cli) {
		if a.Node == "n2" {
			onN2 = a
		}
	}
	if onN2.Node == "" {
		t.Fatal("no replica on n2")
	}
	if n, err := AssignedTo(context.Background(), cli, "n2"); err != nil || n != 1 {
		t.Fatalf("AssignedTo(n2) = %d, %v, want 1", n, err)
	}
	events := watchAssign(t, cli)
	waited := waitDrainedAsync(cli, "n2", 30*time.Second) // started before the drain: sees the move by watch
	started := time.Now()
	putDraining(t, cli, "n2", 4, 8, true)

	var moved jobs.Assignment
	eventually(t, 5*time.Second, "replica moved off draining n2", func() (bool, string) {
		for _, a := range assignments(t, cli) {
			if a.Replica == onN2.Replica && a.Node != "n2" {
				moved = a
				return true, ""
			}
		}
		return false, fmt.Sprint(perNode(assignments(t, cli), "web"))
	})
	if took := time.Since(started); took > grace/4 {
		t.Fatalf("move took %v, grace is %v: drain waited like a lost node", took, grace)
	}
	if moved.Generation != onN2.Generation+1 {
		t.Fatalf("moved generation %d, want %d", moved.Generation, onN2.Generation+1)
	}
	if got := perNode(assignments(t, cli), "web"); got["n2"] != 0 || got["n1"] < 1 || got["n3"] < 1 || got["n1"]+got["n3"] != 3 {
		t.Fatalf("web per node %v, want all 3 on n1 and n3", got)
	}
	select {
	case r := <-waited:
		if r.err != nil || r.left != 0 {
			t.Fatalf("WaitDrained = %d, %v, want 0", r.left, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitDrained did not return within 5s of the move")
	}
	// The old key's delete and the new key's put are one fenced write.
	var delRev, putRev int64
	eventually(t, 5*time.Second, "watch saw the move", func() (bool, string) {
		for _, ev := range events() {
			if string(ev.Kv.Key) == onN2.Key() && ev.Type == mvccpb.DELETE {
				delRev = ev.Kv.ModRevision
			}
			if string(ev.Kv.Key) == moved.Key() && ev.Type == mvccpb.PUT {
				putRev = ev.Kv.ModRevision
			}
		}
		return delRev != 0 && putRev != 0, fmt.Sprintf("delete rev %d, put rev %d", delRev, putRev)
	})
	if delRev != putRev {
		t.Fatalf("old key deleted at revision %d, new key put at %d: not one transaction", delRev, putRev)
	}
	waitPlaced(t, cli, "acme", "web", "placed 3/3")

	// A draining node gets no new replicas, although it is the emptiest.
	putJob(t, cli, newJob("acme", "api", 4, 100, 64<<20))
	waitPlaced(t, cli, "acme", "api", "placed 4/4")
	if got := perNode(assignments(t, cli), "api"); got["n2"] != 0 {
		t.Fatalf("api per node %v: replicas on draining n2", got)
	}
	if n, err := WaitDrained(context.Background(), cli, "n2", time.Second); err != nil || n != 0 {
		t.Fatalf("WaitDrained on an empty node = %d, %v, want 0", n, err)
	}

	// Back from its reboot, not draining: schedulable again, and nothing
	// moves back.
	before := assignments(t, cli)
	putDraining(t, cli, "n2", 4, 8, false)
	putJob(t, cli, newJob("acme", "batch", 3, 100, 64<<20))
	waitPlaced(t, cli, "acme", "batch", "placed 3/3")
	after := assignments(t, cli)
	if got := perNode(after, "batch"); got["n2"] != 1 {
		t.Fatalf("batch per node %v, want one on n2 again", got)
	}
	for k, a := range before {
		if b, ok := after[k]; !ok || b.Generation != a.Generation {
			t.Fatalf("assignment %s changed after n2 stopped draining: %+v -> %+v", k, a, b)
		}
	}
}

func TestDrainNowhereToGoAndVolumePinned(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	// db's volume lives on n2: it runs there and cannot leave.
	if _, err := cli.Put(context.Background(), jobs.VolumeHomeKey("acme", "db", 0), `{"node":"n2"}`); err != nil {
		t.Fatal(err)
	}
	startScheduler(t, cli, Options{Name: "s1", Grace: time.Minute})
	db := newJob("acme", "db", 1, 100, 64<<20)
	db.Volumes = []jobs.Volume{{Name: "data", Path: "/data"}}
	putJob(t, cli, db)
	// big takes 3 of each node's 4 cpus: its replica on n2 fits nowhere else.
	putJob(t, cli, newJob("acme", "big", 2, 3000, 64<<20))
	putJob(t, cli, newJob("acme", "web", 2, 100, 64<<20))
	for _, j := range []string{"db", "big", "web"} {
		waitPlaced(t, cli, "acme", j, "placed")
	}
	eventually(t, 5*time.Second, "one big and one web on each node, db on n2", func() (bool, string) {
		as := assignments(t, cli)
		big, web, db := perNode(as, "big"), perNode(as, "web"), perNode(as, "db")
		return big["n1"] == 1 && big["n2"] == 1 && web["n1"] == 1 && web["n2"] == 1 && db["n2"] == 1,
			fmt.Sprint(big, web, db)
	})

	putDraining(t, cli, "n2", 4, 8, true)
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
	eventually(t, 5*time.Second, "web moved off n2", func() (bool, string) {
		got := perNode(assignments(t, cli), "web")
		return got["n1"] == 2, fmt.Sprint(got)
	})
	p := waitPlaced(t, cli, "acme", "big", "1 left on draining n2")
	if p.Placed != 2 || !strings.Contains(p.Message, "placed 2/2; 1 left on draining n2: no node fits: needs 3 cpu") {
		t.Fatalf("big placement %+v", p)
	}
	p = waitPlaced(t, cli, "acme", "db", "1 left on draining n2, which holds its volumes")
	if p.Placed != 1 {
		t.Fatalf("db placement %+v", p)
	}
	as := assignments(t, cli)
	if got := perNode(as, "big"); got["n2"] != 1 {
		t.Fatalf("big per node %v, want its replica kept on n2", got)
	}
	if got := perNode(as, "db"); got["n2"] != 1 {
		t.Fatalf("db per node %v, want it kept on n2 with its volume", got)
	}

	// The driver's wait runs out: two replicas are left.
	r := <-waitDrainedAsync(cli, "n2", time.Second)
	if r.err != nil || r.left != 2 {
		t.Fatalf("WaitDrained = %d, %v, want 2 left", r.left, r.err)
	}
	if r.took < time.Second || r.took > 5*time.Second {
		t.Fatalf("WaitDrained returned after %v, timeout 1s", r.took)
	}

	// Room appears: the stuck replica moves at once; the pinned one stays,
	// and a wait under way counts the move.
	waited := waitDrainedAsync(cli, "n2", 3*time.Second)
	putNode(t, cli, "n3", 4, 8, nil)
	eventually(t, 5*time.Second, "big moved to n3", func() (bool, string) {
		got := perNode(assignments(t, cli), "big")
		return got["n3"] == 1 && got["n2"] == 0, fmt.Sprint(got)
	})
	if r := <-waited; r.err != nil || r.left != 1 {
		t.Fatalf("WaitDrained = %d, %v, want 1 left (db, pinned by its volume)", r.left, r.err)
	}
	if n, err := AssignedTo(context.Background(), cli, "n2"); err != nil || n != 1 {
		t.Fatalf("AssignedTo(n2) = %d, %v, want 1 (db)", n, err)
	}
	waitPlaced(t, cli, "acme", "big", "placed 2/2")
	if p, _ := placement(t, cli, "acme", "big"); p.Message != "placed 2/2" {
		t.Fatalf("big placement message %q after its move", p.Message)
	}
}

func TestWaitDrainedArguments(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	if _, err := AssignedTo(context.Background(), cli, ""); err == nil {
		t.Fatal("AssignedTo accepted an empty node name")
	}
	if _, err := WaitDrained(context.Background(), cli, "n/1", time.Second); err == nil {
		t.Fatal("WaitDrained accepted a node name with a slash")
	}
	// A key of another node sharing the name as prefix is not counted.
	j := newJob("acme", "web", 1, 100, 64<<20)
	a := jobs.Assignment{Schema: jobs.AssignmentSchema, Tenant: "acme", Job: "web", Node: "n10", Generation: 1, Spec: j}
	if _, err := cli.Put(context.Background(), a.Key(), "{}"); err != nil {
		t.Fatal(err)
	}
	if n, err := WaitDrained(context.Background(), cli, "n1", 0); err != nil || n != 0 {
		t.Fatalf("WaitDrained(n1) = %d, %v, want 0 (only n10 has one)", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := WaitDrained(ctx, cli, "n10", time.Minute); err == nil {
		t.Fatalf("WaitDrained with a canceled context = %d, nil", n)
	}
}
