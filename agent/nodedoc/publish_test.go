package nodedoc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func fixedDoc(role *atomic.Value) func() nodedoc.Node {
	return func() nodedoc.Node {
		return nodedoc.Node{Role: role.Load().(string), Addresses: []string{"127.0.0.1"}, Ready: true,
			CPU: nodedoc.CPU{Cores: 2}, Agent: nodedoc.Agent{Version: "test"}}
	}
}

// startPublisher runs p until the test ends or stop is called; stop waits
// for Run to return.
func startPublisher(t *testing.T, p *nodedoc.Publisher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	select {
	case <-p.Published():
	case err := <-done:
		t.Fatalf("Run ended before publishing: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("document not published within 10s")
	}
	return stop
}

func getKV(t *testing.T, cli *clientv3.Client, key string) (value []byte, lease int64, found bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, false
	}
	return resp.Kvs[0].Value, resp.Kvs[0].Lease, true
}

// waitFor polls cond every 50ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

func TestPublisherKeepAliveKeepsKeyThenCancelRemovesIt(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	p := nodedoc.NewPublisher(cli, "node-1", fixedDoc(&role), 2*time.Second)
	p.Interval = 1500 * time.Millisecond
	p.Log = quiet
	stop := startPublisher(t, p)

	_, lease, found := getKV(t, cli, nodedoc.NodeKey("node-1"))
	if !found || lease == 0 {
		t.Fatalf("document missing or without lease right after publishing (lease %x)", lease)
	}
	// Two TTLs later the key must still be there under the same lease:
	// a put does not renew a lease, so only KeepAlive explains that.
	for i := 0; i < 9; i++ {
		time.Sleep(500 * time.Millisecond)
		_, l, ok := getKV(t, cli, nodedoc.NodeKey("node-1"))
		if !ok {
			t.Fatalf("document vanished after %v", time.Duration(i+1)*500*time.Millisecond)
		}
		if l != lease {
			t.Fatalf("lease changed from %x to %x: the publisher re-granted instead of keeping alive", lease, l)
		}
	}
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(lease))
	if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 2 {
		t.Fatalf("lease TimeToLive = %+v, %v", ttl, err)
	}

	stop()
	if !waitFor(2*time.Second, func() bool { _, _, ok := getKV(t, cli, nodedoc.NodeKey("node-1")); return !ok }) {
		t.Fatal("document still present 2s (the TTL) after the publisher stopped")
	}
}

// TestPublisherLingers: a clean stop whose Linger says 3 s leaves the
// document, not ready, under a new 3 s lease (an agent restart must not
// make the node look gone); a new publisher takes the key over; without a
// new one it expires with that lease.
func TestPublisherLingers(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	newPub := func() *nodedoc.Publisher {
		p := nodedoc.NewPublisher(cli, "node-1", fixedDoc(&role), 2*time.Second)
		p.Log, p.Linger = quiet, func() time.Duration { return 3 * time.Second }
		return p
	}
	stop := startPublisher(t, newPub())
	_, first, _ := getKV(t, cli, nodedoc.NodeKey("node-1"))
	stop()
	v, lease, found := getKV(t, cli, nodedoc.NodeKey("node-1"))
	if !found || lease == first {
		t.Fatalf("after a lingering stop: found %v, lease %x (the running one was %x)", found, lease, first)
	}
	doc, err := nodedoc.ParseNode(v)
	if err != nil || doc.Ready {
		t.Fatalf("lingering document %+v, %v: want ready false", doc, err)
	}
	if ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(lease)); err != nil || ttl.GrantedTTL != 3 {
		t.Fatalf("lingering lease %+v, %v: want a 3 s lease", ttl, err)
	}
	// The next agent takes the document over at once.
	stop = startPublisher(t, newPub())
	v, again, _ := getKV(t, cli, nodedoc.NodeKey("node-1"))
	if doc, _ := nodedoc.ParseNode(v); again == lease || !doc.Ready {
		t.Fatalf("the restarted publisher did not take the document over (lease %x, ready %v)", again, doc.Ready)
	}
	// Stopped for good: the lingering document expires with its lease.
	stop()
	if !waitFor(6*time.Second, func() bool { _, _, ok := getKV(t, cli, nodedoc.NodeKey("node-1")); return !ok }) {
		t.Fatal("the lingering document outlived its 3 s lease")
	}
}

func TestPublisherDocumentDiesWithItsClient(t *testing.T) {
	// A crashed agent revokes nothing: the lease must expire on its own.
	e := etcdtest.Start(t, etcdtest.Options{})
	observer := e.Client(t)
	agentCli := e.Client(t)
	var role atomic.Value
	role.Store("client")
	p := nodedoc.NewPublisher(agentCli, "node-2", fixedDoc(&role), 2*time.Second)
	p.Interval = time.Second
	p.Log = quiet
	startPublisher(t, p)
	agentCli.Close() // keepalives stop, revoke is impossible
	start := time.Now()
	gone := waitFor(4*time.Second, func() bool { _, _, ok := getKV(t, observer, nodedoc.NodeKey("node-2")); return !ok })
	if !gone {
		t.Fatal("document outlived its client by more than 4s with a 2s lease")
	}
	t.Logf("document gone %v after the client closed", time.Since(start).Round(10*time.Millisecond))
}

func TestPublisherRegrantsAfterLeaseLoss(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	admin := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	p := nodedoc.NewPublisher(cli, "node-3", fixedDoc(&role), 3*time.Second)
	p.Interval = 2 * time.Second
	p.Log = quiet
	startPublisher(t, p)
	_, lease, _ := getKV(t, admin, nodedoc.NodeKey("node-3"))
	if _, err := admin.Revoke(context.Background(), clientv3.LeaseID(lease)); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	var newLease int64
	back := waitFor(5*time.Second, func() bool {
		_, l, ok := getKV(t, admin, nodedoc.NodeKey("node-3"))
		newLease = l
		return ok && l != lease
	})
	if !back {
		t.Fatal("document not re-published under a new lease within 5s of losing the lease")
	}
	if newLease == 0 {
		t.Fatal("re-published without a lease")
	}
}

func TestPublisherPublishesChangesBeforeHeartbeat(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var role atomic.Value
	role.Store("learner")
	p := nodedoc.NewPublisher(cli, "node-4", fixedDoc(&role), 10*time.Second)
	p.Interval = 9 * time.Second
	p.Poll = 100 * time.Millisecond
	p.Log = quiet
	startPublisher(t, p)
	role.Store("voter")
	ok := waitFor(2*time.Second, func() bool {
		v, _, _ := getKV(t, cli, nodedoc.NodeKey("node-4"))
		n, err := nodedoc.ParseNode(v)
		return err == nil && n.Role == "voter"
	})
	if !ok {
		t.Fatal("role change not published within 2s (heartbeat is 9s)")
	}
}

// The stored document's field names are the contract of berth.node.v1.
func TestPublishedDocumentMatchesSchema(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	c := &nodedoc.Collector{Name: "ignored", Role: "voter", Addresses: []string{"127.0.0.11"},
		ClientURL: "https://127.0.0.11:2379", Log: quiet}
	p := nodedoc.NewPublisher(cli, "node-5", c.Collect, 0)
	p.Log = quiet
	startPublisher(t, p)
	raw, _, _ := getKV(t, cli, nodedoc.NodeKey("node-5"))

	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("stored value is not JSON: %v\n%s", err, raw)
	}
	wantKeys := map[string][]string{
		"":           {"addresses", "agent", "boot_time", "client_url", "containers", "cpu", "heartbeat", "kernel", "memory", "name", "os", "ready", "role", "schema", "uptime_seconds"},
		"os":         {"name", "slot", "version"}, // off a berth node: no other_slot_state, no last_update
		"cpu":        {"cores", "load1"},
		"memory":     {"available_bytes", "total_bytes"},
		"agent":      {"started", "version"},
		"containers": {"running", "total"},
	}
	for field, want := range wantKeys {
		obj := doc
		if field != "" {
			obj, _ = doc[field].(map[string]any)
		}
		var got []string
		for k := range obj {
			got = append(got, k)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("keys of %q = %v, want %v", field, got, want)
		}
	}
	if doc["schema"] != "berth.node.v1" || doc["name"] != "node-5" || doc["os"].(map[string]any)["slot"] != "" {
		t.Errorf("schema/name/slot wrong: %s", raw)
	}
	for _, k := range []string{"boot_time", "heartbeat"} {
		s, _ := doc[k].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("%s = %q is not RFC3339: %v", k, s, err)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var n nodedoc.Node
	if err := dec.Decode(&n); err != nil {
		t.Fatalf("strict decode: %v", err)
	}
	if time.Since(n.Heartbeat) > 5*time.Second {
		t.Errorf("heartbeat %v is not the publish time", n.Heartbeat)
	}
}

func TestPublisherRejectsBadArguments(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	doc := func() nodedoc.Node { return nodedoc.Node{} }
	for name, p := range map[string]*nodedoc.Publisher{
		"bad name":       nodedoc.NewPublisher(cli, "Node/1", doc, 0),
		"nil collect":    nodedoc.NewPublisher(cli, "n", nil, 0),
		"fractional ttl": nodedoc.NewPublisher(cli, "n", doc, 2500*time.Millisecond),
		"tiny ttl":       nodedoc.NewPublisher(cli, "n", doc, time.Second),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := p.Run(ctx)
		cancel()
		if err == nil {
			t.Errorf("%s: Run returned nil", name)
		}
	}
}

// Draining is published at the next poll, long before the heartbeat: the
// scheduler reads it to empty the node.
func TestPublisherPublishesDraining(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var draining atomic.Bool
	c := &nodedoc.Collector{Name: "node-6", Addresses: []string{"127.0.0.1"}, Draining: draining.Load, Log: quiet}
	p := nodedoc.NewPublisher(cli, "node-6", c.Collect, 10*time.Second)
	p.Interval = 9 * time.Second
	p.Poll = 100 * time.Millisecond
	p.Log = quiet
	startPublisher(t, p)
	published := func() nodedoc.Node {
		v, _, _ := getKV(t, cli, nodedoc.NodeKey("node-6"))
		n, err := nodedoc.ParseNode(v)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if published().Draining {
		t.Fatal("published draining before Draining returned true")
	}
	draining.Store(true)
	if !waitFor(2*time.Second, func() bool { return published().Draining }) {
		t.Fatal("draining not published within 2s (heartbeat is 9s)")
	}
	v, _, _ := getKV(t, cli, nodedoc.NodeKey("node-6"))
	if !strings.Contains(string(v), `"draining":true`) {
		t.Fatalf("stored document lacks \"draining\":true: %s", v)
	}

	draining.Store(false)
	if !waitFor(2*time.Second, func() bool { return !published().Draining }) {
		t.Fatal("end of draining not published within 2s")
	}
}

// An idle node writes nothing between refreshes: its document lives on
// the lease's keep-alive alone, across several TTLs.
func TestPublisherIdleWritesNothing(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	var writes atomic.Int64
	p := nodedoc.NewPublisher(cli, "node-7", fixedDoc(&role), 2*time.Second)
	p.Poll = 50 * time.Millisecond
	p.OnWrite = func(string) { writes.Add(1) }
	p.Log = quiet
	startPublisher(t, p)
	_, lease, _ := getKV(t, cli, nodedoc.NodeKey("node-7"))
	first, err := cli.Get(context.Background(), nodedoc.NodeKey("node-7"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second) // 2.5 TTLs, 100 polls
	got, err := cli.Get(context.Background(), nodedoc.NodeKey("node-7"))
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("document gone after 2.5 TTLs without writes: %v", err)
	}
	if got.Kvs[0].Lease != lease {
		t.Fatalf("lease changed from %x to %x", lease, got.Kvs[0].Lease)
	}
	if mod := got.Kvs[0].ModRevision; mod != first.Kvs[0].ModRevision || writes.Load() != 1 {
		t.Fatalf("idle publisher wrote: mod revision %d -> %d, %d writes (want the first only)", first.Kvs[0].ModRevision, mod, writes.Load())
	}
	// A change is still written at the next poll.
	role.Store("learner")
	if !waitFor(time.Second, func() bool { return writes.Load() == 2 }) {
		t.Fatalf("role change not written within a second (%d writes)", writes.Load())
	}
}

// The slow refresh rewrites an unchanged document every Interval.
func TestPublisherRefreshes(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	var reasons []string
	var mu sync.Mutex
	p := nodedoc.NewPublisher(cli, "node-8", fixedDoc(&role), 2*time.Second)
	p.Poll, p.Interval = 50*time.Millisecond, time.Second
	p.OnWrite = func(r string) { mu.Lock(); reasons = append(reasons, r); mu.Unlock() }
	p.Log = quiet
	startPublisher(t, p)
	time.Sleep(3500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) < 3 || len(reasons) > 5 || reasons[0] != "start" || reasons[1] != "refresh" {
		t.Fatalf("writes in 3.5s with a 1s refresh: %v, want start then 3 refreshes", reasons)
	}
}

// A client whose keepalive answers come later than the TTL (etcd's leader
// changed, the node was starved) while the server still holds the lease:
// the publisher keeps that lease, so the document never vanishes and the
// scheduler never sees a live node as gone.
func TestPublisherKeepsLeaseAfterLateKeepalive(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli, stall := e.StalledClient(t)
	admin := e.Client(t)
	var role atomic.Value
	role.Store("voter")
	p := nodedoc.NewPublisher(cli, "node-4", fixedDoc(&role), 3*time.Second)
	p.Interval = time.Hour
	p.Log = quiet
	startPublisher(t, p)
	_, lease, _ := getKV(t, admin, nodedoc.NodeKey("node-4"))

	// The server-side lease lives on (as a new leader's extension would
	// keep it) while the publisher's client hears nothing for 5 s.
	stall.Hold()
	for i := 0; i < 10; i++ {
		if _, err := admin.KeepAliveOnce(context.Background(), clientv3.LeaseID(lease)); err != nil {
			t.Fatalf("admin keepalive: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	stall.Release()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_, l, ok := getKV(t, admin, nodedoc.NodeKey("node-4"))
		if !ok || l != lease {
			t.Fatalf("after a late keepalive the document went or changed lease (%x -> %x, present %v): a live node looked gone", lease, l, ok)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// And the lease is kept alive from the publisher again, not by admin.
	time.Sleep(4 * time.Second)
	if _, l, ok := getKV(t, admin, nodedoc.NodeKey("node-4")); !ok || l != lease {
		t.Fatalf("lease %x not kept alive after the stall (now %x, present %v)", lease, l, ok)
	}
}
