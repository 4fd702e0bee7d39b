package servicedns

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/internal/syncbuf"
)

func putJSON(t *testing.T, cli *clientv3.Client, key string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), key, string(data)); err != nil {
		t.Fatal(err)
	}
}

func putJob(t *testing.T, cli *clientv3.Client, j jobs.Job) {
	t.Helper()
	j.Image = "registry.example/app:1"
	j.Resources = jobs.Resources{CPUMillis: 100, MemoryBytes: 64 << 20}
	j = j.WithDefaults()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	putJSON(t, cli, jobs.JobKey(j.Tenant, j.Name), j)
}

func putStatus(t *testing.T, cli *clientv3.Client, st jobs.ReplicaStatus) {
	t.Helper()
	st.Schema = jobs.ReplicaSchema
	putJSON(t, cli, jobs.StatusKey(st.Tenant, st.Job, st.Replica), st)
}

// waitAnswer polls (as acme's container) until name's A records are want,
// and returns how long that took.
func waitAnswer(t *testing.T, s *Server, name string, within time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	var got []string
	for time.Since(start) < within {
		got = addrsOf(ask(t, s.Addrs()[0], "127.0.0.2", "udp", name, dns.TypeA, false))
		slices.Sort(got)
		if slices.Equal(got, want) {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s answered %v after %s, want %v", name, got, within, want)
	return 0
}

func TestWatchFollowsEtcd(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	putJob(t, cli, job("acme", "web", 2, jobs.Port{Container: 8080}))
	putStatus(t, cli, running("acme", "web", 0, "10.88.3.2", ""))
	putStatus(t, cli, running("acme", "web", 1, "10.88.3.3", ""))
	putJob(t, cli, job("globex", "web", 1))
	putStatus(t, cli, running("globex", "web", 0, "10.88.4.2", ""))
	putJSON(t, cli, jobs.UsageKey("acme", "node-1"), jobs.Usage{CPUSeconds: 1}) // not a name
	if _, err := cli.Put(context.Background(), jobs.JobKey("acme", "bad"), `{"name":"bad"}`); err != nil {
		t.Fatal(err)
	}
	putStatus(t, cli, running("acme", "bad", 0, "10.88.3.9", ""))

	s := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	update := func(v *View) {
		// A write between Watch's read and its watch must not be lost:
		// the watch starts at the read's revision + 1.
		once.Do(func() {
			putJob(t, cli, job("acme", "late", 1))
			putStatus(t, cli, running("acme", "late", 0, "10.88.3.20", ""))
		})
		s.Update(v)
	}
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, cli, update, s.log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})

	waitAnswer(t, s, "web.acme.berth.", 10*time.Second, "10.88.3.2", "10.88.3.3")
	waitAnswer(t, s, "late.acme.berth.", 5*time.Second, "10.88.3.20")
	if r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "web.globex.berth.", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("globex's job from acme: %s", dns.RcodeToString[r.Rcode])
	}
	if r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "bad.acme.berth.", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("an invalid job document has a name: %s", dns.RcodeToString[r.Rcode])
	}

	// A replica that stops leaves the answer within 2 s (the TTL is 1 s).
	st := running("acme", "web", 1, "10.88.3.3", "")
	st.State = jobs.StateStopped
	putStatus(t, cli, st)
	took := waitAnswer(t, s, "web.acme.berth.", 5*time.Second, "10.88.3.2")
	t.Logf("a stopped replica left the answer %s after its status was written", took)
	if took > 2*time.Second {
		t.Errorf("a stopped replica was answered for %s, want under 2 s", took)
	}

	// A moved replica answers its new address.
	putStatus(t, cli, running("acme", "web", 0, "10.88.5.2", ""))
	waitAnswer(t, s, "web.acme.berth.", 2*time.Second, "10.88.5.2")

	// A removed job's name is gone.
	if _, err := cli.Delete(context.Background(), jobs.JobKey("acme", "web")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for ask(t, s.Addrs()[0], "127.0.0.2", "udp", "web.acme.berth.", dns.TypeA, false).Rcode != dns.RcodeNameError {
		if time.Now().After(deadline) {
			t.Fatal("a deleted job still has a name after 2 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// After a compaction past the watch's revision, Watch reads everything
// again instead of missing changes.
func TestWatchRecoversFromCompaction(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	putJob(t, cli, job("acme", "web", 1))
	putStatus(t, cli, running("acme", "web", 0, "10.88.3.2", ""))
	s := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))

	// The first update stalls the watch until a later revision is compacted.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var once sync.Once
	update := func(v *View) {
		once.Do(func() {
			putStatus(t, cli, running("acme", "web", 0, "10.88.3.7", ""))
			resp, err := cli.Put(context.Background(), "/berth/v1/unrelated", "x")
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := cli.Compact(context.Background(), resp.Header.Revision); err != nil {
				t.Error(err)
			}
		})
		s.Update(v)
	}
	go Watch(ctx, cli, update, s.log)
	waitAnswer(t, s, "web.acme.berth.", 10*time.Second, "10.88.3.7")
}
