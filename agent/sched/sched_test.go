package sched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The node documents in these tests are simulated: the test writes them
// the way an agent's publisher would (schema, cpu, memory, labels, ready),
// and deletes them the way lease expiry would. No agent runs.

func putNode(t testing.TB, cli *clientv3.Client, name string, cores int, memGiB uint64, labels map[string]string) {
	t.Helper()
	doc := nodedoc.Node{Schema: nodedoc.Schema, Name: name, Role: nodedoc.RoleClient, CPU: nodedoc.CPU{Cores: cores},
		Memory: nodedoc.Memory{TotalBytes: memGiB << 30}, Ready: true, Labels: labels, Heartbeat: time.Now()}
	data, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), nodedoc.NodeKey(name), string(data)); err != nil {
		t.Fatal(err)
	}
}

func deleteKey(t testing.TB, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Delete(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func newJob(tenant, name string, replicas int, cpuMillis, memBytes int64) jobs.Job {
	return jobs.Job{Name: name, Tenant: tenant, Image: "reg.local/" + name + ":1", Replicas: replicas,
		Resources: jobs.Resources{CPUMillis: cpuMillis, MemoryBytes: memBytes}}.WithDefaults()
}

func putJob(t testing.TB, cli *clientv3.Client, j jobs.Job) int64 {
	t.Helper()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	data, err := j.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), jobs.JobKey(j.Tenant, j.Name), string(data))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startScheduler runs a scheduler until the test ends.
func startScheduler(t testing.TB, cli *clientv3.Client, o Options) *Scheduler {
	t.Helper()
	s, _ := runScheduler(t, cli, o)
	return s
}

// runScheduler runs a scheduler until stop is called or the test ends.
func runScheduler(t testing.TB, cli *clientv3.Client, o Options) (s *Scheduler, stop func()) {
	t.Helper()
	if o.Log == nil {
		o.Log = quietLog()
	}
	if o.SessionTTL == 0 {
		o.SessionTTL = 2
	}
	s = New(cli, o)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stop = func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return s, stop
}

func assignments(t testing.TB, cli *clientv3.Client) map[string]jobs.Assignment {
	t.Helper()
	resp, err := cli.Get(context.Background(), jobs.AssignPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]jobs.Assignment{}
	for _, kv := range resp.Kvs {
		a, err := jobs.DecodeAssignment(kv.Value)
		if err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		if a.Key() != string(kv.Key) {
			t.Fatalf("assignment %s stored at %s", a.Key(), kv.Key)
		}
		out[string(kv.Key)] = a
	}
	return out
}

func placement(t testing.TB, cli *clientv3.Client, tenant, job string) (jobs.JobPlacement, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), jobs.PlacementKey(tenant, job))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return jobs.JobPlacement{}, false
	}
	var p jobs.JobPlacement
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		t.Fatal(err)
	}
	return p, true
}

func perNode(as map[string]jobs.Assignment, job string) map[string]int {
	out := map[string]int{}
	for _, a := range as {
		if a.Job == job {
			out[a.Node]++
		}
	}
	return out
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; last state: %s", timeout, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitPlaced(t testing.TB, cli *clientv3.Client, tenant, job, message string) jobs.JobPlacement {
	t.Helper()
	var p jobs.JobPlacement
	eventually(t, 10*time.Second, fmt.Sprintf("placement of %s/%s says %q", tenant, job, message), func() (bool, string) {
		var ok bool
		p, ok = placement(t, cli, tenant, job)
		return ok && strings.Contains(p.Message, message), p.Message
	})
	return p
}

func TestSpreadAndFit(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		putNode(t, cli, n, 2, 4, nil)
	}
	s := startScheduler(t, cli, Options{Name: "s1"})
	rev := putJob(t, cli, newJob("acme", "web", 6, 250, 256<<20))
	p := waitPlaced(t, cli, "acme", "web", "placed 6/6")
	if p.Placed != 6 || p.Desired != 6 || p.JobRevision != rev {
		t.Fatalf("placement %+v", p)
	}
	as := assignments(t, cli)
	if got := perNode(as, "web"); len(got) != 3 || got["n1"] != 2 || got["n2"] != 2 || got["n3"] != 2 {
		t.Fatalf("replicas per node %v, want 2 on each of 3", got)
	}
	if !s.IsLeader() {
		t.Fatal("the only scheduler is not leader")
	}
	for _, a := range as {
		if a.Generation != 1 || a.JobRevision != rev || a.Epoch == 0 || a.Spec.Image != "reg.local/web:1" {
			t.Fatalf("assignment %+v", a)
		}
	}

	// Capacity: each node has 2000m; web takes 500m per node. A job needing
	// 1600m per replica fits on no node with web on it.
	putJob(t, cli, newJob("acme", "big", 1, 1600, 64<<20))
	p = waitPlaced(t, cli, "acme", "big", "no node fits")
	if p.Placed != 0 || !strings.Contains(p.Message, "needs 1600m cpu, 64Mi memory; largest free 1500m cpu") {
		t.Fatalf("placement message %q", p.Message)
	}
	// Retried when capacity appears.
	putNode(t, cli, "n4", 2, 4, nil)
	waitPlaced(t, cli, "acme", "big", "placed 1/1")
	if got := perNode(assignments(t, cli), "big"); got["n4"] != 1 {
		t.Fatalf("big placed on %v, want n4", got)
	}
	// The sum on each node never exceeds its capacity.
	used := map[string]int64{}
	for _, a := range assignments(t, cli) {
		used[a.Node] += a.Spec.Resources.CPUMillis
	}
	for n, u := range used {
		if u > 2000 {
			t.Fatalf("node %s has %dm cpu assigned, capacity 2000m", n, u)
		}
	}
}

func TestNodeSelector(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	putNode(t, cli, "a1", 4, 8, map[string]string{"zone": "a"})
	putNode(t, cli, "b1", 4, 8, map[string]string{"zone": "b", "disk": "ssd"})
	putNode(t, cli, "b2", 4, 8, map[string]string{"zone": "b"})
	startScheduler(t, cli, Options{Name: "s1"})
	j := newJob("acme", "db", 3, 100, 64<<20)
	j.NodeSelector = map[string]string{"zone": "b"}
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "db", "placed 3/3")
	if got := perNode(assignments(t, cli), "db"); got["a1"] != 0 || got["b1"]+got["b2"] != 3 {
		t.Fatalf("db per node %v, want all on zone b", got)
	}
	j = newJob("acme", "nowhere", 1, 100, 64<<20)
	j.NodeSelector = map[string]string{"zone": "c"}
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "nowhere", "no live node has labels zone=c (of 3 nodes)")
}

// watchAssign records assignment events from rev on.
func watchAssign(t *testing.T, cli *clientv3.Client) func() []*clientv3.Event {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var mu sync.Mutex
	var events []*clientv3.Event
	wc := cli.Watch(ctx, jobs.AssignPrefix, clientv3.WithPrefix())
	go func() {
		for wr := range wc {
			mu.Lock()
			events = append(events, wr.Events...)
			mu.Unlock()
		}
	}()
	return func() []*clientv3.Event {
		mu.Lock()
		defer mu.Unlock()
		return append([]*clientv3.Event(nil), events...)
	}
}

func TestNodeGoneMovesAfterGrace(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	const grace = 1500 * time.Millisecond
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
	events := watchAssign(t, cli)
	gone := time.Now()
	deleteKey(t, cli, nodedoc.NodeKey("n2")) // as lease expiry would

	// Within grace nothing moves.
	time.Sleep(grace / 2)
	if _, ok := assignments(t, cli)[onN2.Key()]; !ok {
		t.Fatalf("replica left n2 %v after its document vanished, grace is %v", time.Since(gone), grace)
	}
	waitPlaced(t, cli, "acme", "web", "1 waiting for gone node(s) n2")

	var moved jobs.Assignment
	eventually(t, 10*time.Second, "replica moved off n2", func() (bool, string) {
		for _, a := range assignments(t, cli) {
			if a.Replica == onN2.Replica && a.Node != "n2" {
				moved = a
				return true, ""
			}
		}
		return false, fmt.Sprint(perNode(assignments(t, cli), "web"))
	})
	if elapsed := time.Since(gone); elapsed < grace {
		t.Fatalf("moved after %v, before grace %v", elapsed, grace)
	}
	if moved.Generation != onN2.Generation+1 {
		t.Fatalf("moved generation %d, want %d", moved.Generation, onN2.Generation+1)
	}
	if _, ok := assignments(t, cli)[onN2.Key()]; ok {
		t.Fatal("old assignment on n2 still there")
	}
	// Delete of the old key and put of the new one happened in one revision.
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
}

func TestNodeBackWithinGraceKeepsReplicas(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	const grace = 2 * time.Second
	startScheduler(t, cli, Options{Name: "s1", Grace: grace})
	putJob(t, cli, newJob("acme", "web", 2, 100, 64<<20))
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
	before := assignments(t, cli)

	deleteKey(t, cli, nodedoc.NodeKey("n2"))
	time.Sleep(grace / 3)
	putNode(t, cli, "n2", 4, 8, nil) // a slow node whose lease was renewed late
	time.Sleep(grace + grace/2)
	after := assignments(t, cli)
	if len(after) != len(before) {
		t.Fatalf("assignments changed: %v -> %v", before, after)
	}
	for k, a := range before {
		if b, ok := after[k]; !ok || b.Generation != a.Generation {
			t.Fatalf("assignment %s changed: %+v -> %+v", k, a, b)
		}
	}
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
}

func TestJobChanges(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	startScheduler(t, cli, Options{Name: "s1"})
	j := newJob("acme", "web", 4, 100, 64<<20)
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "web", "placed 4/4")
	first := assignments(t, cli)

	// Changed job: same nodes, same generations, new revision and spec.
	j.Env = map[string]string{"MODE": "v2"}
	rev := putJob(t, cli, j)
	eventually(t, 10*time.Second, "assignments updated in place", func() (bool, string) {
		now := assignments(t, cli)
		if len(now) != len(first) {
			return false, fmt.Sprint(len(now))
		}
		for k, a := range now {
			old, ok := first[k]
			if !ok || a.Generation != old.Generation || a.JobRevision != rev || a.Spec.Env["MODE"] != "v2" {
				return false, fmt.Sprintf("%s: %+v", k, a)
			}
		}
		return true, ""
	})

	// Fewer replicas: the highest indexes go.
	j.Replicas = 2
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
	eventually(t, 5*time.Second, "replicas 2 and 3 removed", func() (bool, string) {
		var idx []int
		for _, a := range assignments(t, cli) {
			idx = append(idx, a.Replica)
		}
		sort.Ints(idx)
		return fmt.Sprint(idx) == "[0 1]", fmt.Sprint(idx)
	})

	// Stopped: nothing runs, the job stays.
	j.Stopped = true
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "web", "stopped")
	eventually(t, 5*time.Second, "stopped job has no assignments", func() (bool, string) {
		n := len(assignments(t, cli))
		return n == 0, fmt.Sprint(n)
	})

	// Deleted: assignments and placement summary go.
	j.Stopped = false
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
	deleteKey(t, cli, jobs.JobKey("acme", "web"))
	eventually(t, 5*time.Second, "deleted job has no assignments and no placement", func() (bool, string) {
		_, hasPlacement := placement(t, cli, "acme", "web")
		n := len(assignments(t, cli))
		return n == 0 && !hasPlacement, fmt.Sprint(n, hasPlacement)
	})
}

func TestVolumePinning(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	// Four nodes: with two of them gone later, most are still there (with
	// more than half gone the scheduler holds every move, lostNodes).
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	// Replica 0's volume already lives on n3 (an agent wrote this when it
	// first created it): the replica goes there although spread alone
	// would pick n1 for replica 0.
	if _, err := cli.Put(context.Background(), jobs.VolumeHomeKey("acme", "db", 0), `{"node":"n3"}`); err != nil {
		t.Fatal(err)
	}
	const grace = time.Second
	startScheduler(t, cli, Options{Name: "s1", Grace: grace})
	j := newJob("acme", "db", 2, 100, 64<<20)
	j.Volumes = []jobs.Volume{{Name: "data", Path: "/data"}}
	putJob(t, cli, j)
	waitPlaced(t, cli, "acme", "db", "placed 2/2")
	if got := assignments(t, cli)[jobs.AssignKey("n3", "acme", "db", 0)]; got.Node != "n3" {
		t.Fatalf("replica 0 not on its volume's node n3: %v", assignments(t, cli))
	}
	// Its node vanishes: replica 0 waits for it, well past grace.
	deleteKey(t, cli, nodedoc.NodeKey("n3"))
	time.Sleep(grace * 2)
	if _, ok := assignments(t, cli)[jobs.AssignKey("n3", "acme", "db", 0)]; !ok {
		t.Fatalf("pinned replica moved off n3: %v", assignments(t, cli))
	}
	waitPlaced(t, cli, "acme", "db", "1 waiting for gone node(s) n3")
	// A replica with volumes but no volume home yet moves like any other.
	var r1 jobs.Assignment
	for _, a := range assignments(t, cli) {
		if a.Replica == 1 {
			r1 = a
		}
	}
	deleteKey(t, cli, nodedoc.NodeKey(r1.Node))
	eventually(t, 10*time.Second, "unpinned replica 1 moved", func() (bool, string) {
		for _, a := range assignments(t, cli) {
			if a.Replica == 1 && a.Node != r1.Node {
				return a.Generation == r1.Generation+1, fmt.Sprintf("%+v", a)
			}
		}
		return false, ""
	})
	// n3 returns: replica 0 is simply still there.
	putNode(t, cli, "n3", 4, 8, nil)
	waitPlaced(t, cli, "acme", "db", "placed 2/2")
}

func TestTwoSchedulersOneLeader(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cliA, cliB, cli := e.Client(t), e.Client(t), e.Client(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	a := startScheduler(t, cliA, Options{Name: "a"})
	b := startScheduler(t, cliB, Options{Name: "b"})
	var leader, follower *Scheduler
	eventually(t, 10*time.Second, "one leader", func() (bool, string) {
		switch {
		case a.IsLeader() && !b.IsLeader():
			leader, follower = a, b
		case b.IsLeader() && !a.IsLeader():
			leader, follower = b, a
		default:
			return false, fmt.Sprint(a.IsLeader(), b.IsLeader())
		}
		return true, ""
	})
	putJob(t, cli, newJob("acme", "web", 3, 100, 64<<20))
	waitPlaced(t, cli, "acme", "web", "placed 3/3")
	leader.mu.Lock()
	oldLead, oldSession := leader.current, leader.session
	leader.mu.Unlock()
	for _, as := range assignments(t, cli) {
		if as.Epoch != oldLead.rev {
			t.Fatalf("assignment epoch %d, leader's election revision %d", as.Epoch, oldLead.rev)
		}
	}
	if follower.rounds.Load() != 0 {
		t.Fatalf("follower ran %d placement rounds", follower.rounds.Load())
	}

	// The leader's session is lost (its lease revoked, as if it expired).
	if _, err := cli.Revoke(context.Background(), oldSession.Lease()); err != nil {
		t.Fatal(err)
	}
	// Fencing: a write with the old leadership fails even before the old
	// leader notices.
	w := newWorld()
	j := newJob("acme", "web", 1, 100, 64<<20)
	stale := jobs.Assignment{Schema: jobs.AssignmentSchema, Tenant: "acme", Job: "zombie", Replica: 0, Node: "n1", Generation: 1, Spec: j}
	u, err := changeUnit(Change{Put: &stale})
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.commit(context.Background(), w, oldLead, []unit{u}); !errors.Is(err, errDeposed) {
		t.Fatalf("deposed leader's write: %v, want %v", err, errDeposed)
	}
	if _, ok := assignments(t, cli)[stale.Key()]; ok {
		t.Fatal("deposed leader's write landed")
	}

	eventually(t, 15*time.Second, "the other scheduler leads", func() (bool, string) {
		return follower.IsLeader(), fmt.Sprint(a.IsLeader(), b.IsLeader())
	})
	// It continues: a new job is placed under the new epoch; old
	// assignments stay as they were.
	putJob(t, cli, newJob("acme", "api", 2, 100, 64<<20))
	waitPlaced(t, cli, "acme", "api", "placed 2/2")
	follower.mu.Lock()
	newEpoch := follower.current.rev
	follower.mu.Unlock()
	if newEpoch <= oldLead.rev {
		t.Fatalf("new epoch %d not after old %d", newEpoch, oldLead.rev)
	}
	for _, as := range assignments(t, cli) {
		want := oldLead.rev
		if as.Job == "api" {
			want = newEpoch
		}
		if as.Epoch != want || as.Generation != 1 {
			t.Fatalf("assignment %s epoch %d generation %d, want epoch %d generation 1", as.Key(), as.Epoch, as.Generation, want)
		}
	}
	// The old leader campaigns again and waits as follower.
	eventually(t, 10*time.Second, "exactly one leader again", func() (bool, string) {
		return a.IsLeader() != b.IsLeader(), fmt.Sprint(a.IsLeader(), b.IsLeader())
	})
}

// A new leader that finds a node already gone waits a full grace period
// from its own start: it cannot know how long the node has been gone.
func TestNewLeaderWaitsFullGrace(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	for _, n := range []string{"n1", "n2"} {
		putNode(t, cli, n, 4, 8, nil)
	}
	const grace = 1500 * time.Millisecond
	_, stop := runScheduler(t, cli, Options{Name: "first", Grace: grace})
	putJob(t, cli, newJob("acme", "web", 2, 100, 64<<20))
	waitPlaced(t, cli, "acme", "web", "placed 2/2")
	stop()
	deleteKey(t, cli, nodedoc.NodeKey("n2"))
	time.Sleep(grace + 200*time.Millisecond) // longer than grace with no leader

	started := time.Now()
	startScheduler(t, cli, Options{Name: "second", Grace: grace})
	waitPlaced(t, cli, "acme", "web", "1 waiting for gone node(s) n2")
	var movedAt time.Duration
	eventually(t, 10*time.Second, "replica moved off n2", func() (bool, string) {
		got := perNode(assignments(t, cli), "web")
		movedAt = time.Since(started)
		return got["n2"] == 0 && got["n1"] == 2, fmt.Sprint(got)
	})
	if movedAt < grace {
		t.Fatalf("new leader moved the replica %v after its start, before a full grace %v", movedAt, grace)
	}
}
