package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/rollout"
)

// Settings of TestEtcdSpace: a small quota and fast compaction and
// defragmentation, so that minutes show what weeks would.
const (
	spaceQuota     = 16 << 20
	spaceRetention = 5 * time.Second
	spaceDefrag    = 20 * time.Second
	idleWindow     = 30 * time.Second
	soakTime       = 60 * time.Second
	soakNodes      = 200
)

// TestEtcdSpace runs three real agents with a 16 MiB etcd quota, 5 s
// compaction retention and a 20 s defrag interval, in three phases:
//
//   - idle: for 30 s nothing writes but the agents; each node's document
//     is written at most once (bound: 24 an hour = twice per 5 min refresh);
//     the revision rate per idle node is logged;
//   - soak: 200 simulated nodes publish through nodedoc.Publisher with a 1 s
//     refresh (200 puts/s, 2 KB documents: the quota's worth in about 2 minutes);
//     the database size of every member levels off below the quota, and
//     the leader's agent defragments;
//   - NOSPACE: one key rewritten with 512 KiB values until etcd refuses
//     writes; every agent reports the alarm (log, metric), writes fail with
//     the hint; then the leader's agent compacts, defragments and disarms
//     by itself: writes work again and no node document, job or rollout
//     record is lost.
func TestEtcdSpace(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	total := time.Now()
	step := stepTimer(t)
	c := newLoopbackCluster(t, "127.0.0.71")
	n := make([]*testNode, 3)
	for i := range n {
		n[i] = c.newNode(fmt.Sprintf("space-%d", i+1), fmt.Sprintf("127.0.0.%d", 71+i))
	}
	space := []string{"--etcd-quota", "16MiB", "--compaction-retention", spaceRetention.String(), "--defrag-interval", spaceDefrag.String()}
	done := step("three voters")
	c.start(n[0], append(space, "--voters", "3")...)
	c.waitReady(n[0], 30*time.Second)
	join := append(space, "--join", n[0].api, "--token", c.token(n[0]))
	c.start(n[1], join...)
	c.start(n[2], join...)
	urls := []string{n[0].client, n[1].client, n[2].client}
	admin := nodeClient(t, n[0], urls)
	eventually(t, 60*time.Second, "three voters, documents say voter", func() error {
		docs, err := nodeDocs(admin)
		if err != nil {
			return err
		}
		for _, x := range n {
			if d, ok := docs[x.name]; !ok || d.Role != nodedoc.RoleVoter || !d.Ready {
				return fmt.Errorf("%s: %+v", x.name, d)
			}
		}
		return nil
	})
	done()

	// Idle: count every write under /berth/v1/ for the window.
	done = step("idle writes")
	time.Sleep(3 * time.Second) // the last role changes settle
	before := revision(t, admin, n[0].client)
	ctx, cancel := context.WithCancel(context.Background())
	writes := map[string]int{}
	var wmu sync.Mutex
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for wr := range admin.Watch(ctx, nodedoc.Prefix, clientv3.WithPrefix(), clientv3.WithRev(before+1)) {
			wmu.Lock()
			for _, ev := range wr.Events {
				writes[string(ev.Kv.Key)]++
			}
			wmu.Unlock()
		}
	}()
	time.Sleep(idleWindow)
	wmu.Lock()
	idleWrites := fmt.Sprint(writes)
	wmu.Unlock()
	after := revision(t, admin, n[0].client)
	cancel()
	<-watchDone
	perHour := float64(after-before) / idleWindow.Hours()
	t.Logf("idle: %d revisions in %s from 3 agents: %.1f revisions/hour per idle node (before: 1,200: a re-put every 3 s); writes by key: %v",
		after-before, idleWindow, perHour/3, idleWrites)
	for _, x := range n {
		// The bound for the default 5 min refresh is 24 an hour, at most
		// one per 150 s: one in the window at most.
		if w := writes[nodedoc.NodeKey(x.name)]; w > 1 {
			t.Errorf("%s wrote its document %d times in %s while idle; bound 1 (24/hour)", x.name, w, idleWindow)
		}
	}
	done()

	// Soak: simulated nodes publishing fast.
	done = step("soak")
	simCli := nodeClient(t, n[1], urls)
	soakCtx, soakCancel := context.WithCancel(context.Background())
	defer soakCancel()
	var wg sync.WaitGroup
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var puts sync.Map
	for i := range soakNodes {
		name := fmt.Sprintf("sim-%03d", i)
		doc := nodedoc.Node{Role: nodedoc.RoleClient, Ready: true, Addresses: []string{"127.0.0.1"}, Kernel: strings.Repeat("k", 2000)}
		p := nodedoc.NewPublisher(simCli, name, func() nodedoc.Node { return doc }, 0)
		p.Interval, p.Poll, p.Log = time.Second, 500*time.Millisecond, quiet
		p.OnWrite = func(string) { v, _ := puts.LoadOrStore(name, new(int)); *v.(*int)++ }
		wg.Go(func() { p.Run(soakCtx) })
	}
	type sample struct {
		at    time.Duration
		sizes [3]int64
	}
	var samples []sample
	start := time.Now()
	for time.Since(start) < soakTime {
		time.Sleep(5 * time.Second)
		s := sample{at: time.Since(start).Round(time.Second)}
		for i, x := range n {
			cctx, ccancel := ctxT(3 * time.Second)
			st, err := admin.Status(cctx, x.client)
			ccancel()
			if err != nil {
				t.Fatalf("status of %s: %v", x.name, err)
			}
			if hasAlarm(st.Errors) {
				t.Fatalf("NOSPACE alarm during the soak at %s: compaction did not keep up", s.at)
			}
			s.sizes[i] = st.DbSize
		}
		samples = append(samples, s)
	}
	soakCancel()
	wg.Wait()
	putCount := 0
	puts.Range(func(_, v any) bool { putCount += *v.(*int); return true })
	soakRev := revision(t, admin, n[0].client)
	var table strings.Builder
	for _, s := range samples {
		fmt.Fprintf(&table, "\n  %4s  %s", s.at, strings.Join([]string{mib(s.sizes[0]), mib(s.sizes[1]), mib(s.sizes[2])}, "  "))
	}
	t.Logf("soak: %d simulated nodes, %d puts in %s (%.0f/s, about %s written); member database sizes:%s",
		soakNodes, putCount, soakTime, float64(putCount)/soakTime.Seconds(), mib(int64(putCount)*2200), table.String())
	if int64(putCount)*2200 < spaceQuota/2 {
		t.Fatalf("only %d puts in the soak: less than half the quota written, the soak shows nothing", putCount)
	}
	// Levelled off: the largest file in the last third is not above the
	// largest in the middle third by more than a quarter (plus 1 MiB of
	// bbolt growth granularity), and everything stayed under the quota.
	third := len(samples) / 3
	peak := func(ss []sample) int64 {
		var m int64
		for _, s := range ss {
			m = max(m, s.sizes[0], s.sizes[1], s.sizes[2])
		}
		return m
	}
	mid, last := peak(samples[third:2*third]), peak(samples[2*third:])
	if last > mid*5/4+1<<20 || last >= spaceQuota {
		t.Errorf("database still growing: peak %s in the middle third, %s in the last (quota %s)", mib(mid), mib(last), mib(spaceQuota))
	}
	// Once the load stops, compaction frees the history and the leader's
	// agent defragments the members (one at a time), giving the files back.
	defrags := 0
	eventually(t, 45*time.Second, "members defragmented after the load", func() error {
		defrags = 0
		for _, x := range n {
			defrags += metric(t, x, `berth_agent_etcd_space_actions_total{action="defrag",outcome="ok"}`)
		}
		if defrags < 3 {
			return fmt.Errorf("%d defragmentations", defrags)
		}
		return nil
	})
	var shrunk []string
	for _, x := range n {
		cctx, ccancel := ctxT(3 * time.Second)
		st, err := admin.Status(cctx, x.client)
		ccancel()
		if err != nil {
			t.Fatal(err)
		}
		shrunk = append(shrunk, x.name+" "+mib(st.DbSize))
	}
	t.Logf("after the defragmentations: %s", strings.Join(shrunk, ", "))
	t.Logf("defragmentations: %d; revision %d after the soak", defrags, soakRev)
	done()

	// NOSPACE.
	done = step("nospace and recovery")
	job := `{"tenant":"acme","name":"web"}`
	status := `{"schema":"berth.rollout-status.v1","node":"ghost","phase":"done"}`
	mustPut(t, admin, jobs.JobKey("acme", "web"), job)
	mustPut(t, admin, rollout.StatusKey("ghost"), status)
	docsBefore, err := nodeDocs(admin)
	if err != nil {
		t.Fatal(err)
	}
	leaderBefore := leaderOf(t, admin, n)
	big := strings.Repeat("x", 512<<10)
	var fillErr error
	for i := 0; i < 200 && fillErr == nil; i++ {
		cctx, ccancel := ctxT(5 * time.Second)
		_, fillErr = admin.Put(cctx, nodedoc.Prefix+"filler", big)
		ccancel()
	}
	if !nodedoc.IsNoSpace(fillErr) {
		t.Fatalf("filling ended with %v, want etcd's NOSPACE refusal", fillErr)
	}
	full := time.Now()
	t.Logf("NOSPACE: %v", fillErr)
	for _, x := range n {
		eventually(t, 15*time.Second, x.name+" reports the alarm", func() error {
			if !logHas(x, "etcd NOSPACE alarm: the cluster refuses writes") {
				return fmt.Errorf("not in its log")
			}
			return nil
		})
	}
	// A new etcd leader's agent waits one defrag timeout before its first
	// defrag (never two at once: the old leader's may still run), so a
	// leader change under the fill's load (seen on a busy 2-core CI host)
	// adds that wait to the bound.
	recovery := 90 * time.Second
	if leaderAfter := leaderOf(t, admin, n); leaderAfter != leaderBefore {
		t.Logf("the etcd leader changed during the fill (%x to %x): the new leader's agent waits %s before defragmenting", leaderBefore, leaderAfter, cluster.DefragTakeoverWait)
		recovery += cluster.DefragTakeoverWait
	}
	eventually(t, recovery, "writes accepted again", func() error {
		cctx, ccancel := ctxT(2 * time.Second)
		defer ccancel()
		_, err := admin.Put(cctx, nodedoc.Prefix+"probe", "ok")
		return err
	})
	t.Logf("NOSPACE to writes accepted again: %s", time.Since(full).Round(time.Millisecond))
	joined := ""
	for _, x := range n {
		data, _ := os.ReadFile(x.logPath)
		joined += string(data)
	}
	for _, want := range []string{"compacted etcd history", "defragmented etcd member", "disarmed etcd NOSPACE alarm"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no %q in the agents' logs", want)
		}
	}
	for _, x := range n {
		eventually(t, 15*time.Second, x.name+" sees the alarm gone", func() error {
			if v := metric(t, x, "berth_agent_etcd_nospace_alarm"); v != 0 || !logHas(x, "etcd NOSPACE alarm cleared") {
				return fmt.Errorf("berth_agent_etcd_nospace_alarm %d", v)
			}
			return nil
		})
	}
	if !strings.Contains(joined, "raise etcd_quota") {
		t.Errorf("no agent log line names the remedy (raise etcd_quota)")
	}
	for key, want := range map[string]string{jobs.JobKey("acme", "web"): job, rollout.StatusKey("ghost"): status} {
		cctx, ccancel := ctxT(3 * time.Second)
		got, err := admin.Get(cctx, key)
		ccancel()
		if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != want {
			t.Errorf("%s after recovery: %v %v, want %s", key, got, err, want)
		}
	}
	eventually(t, 20*time.Second, "every node document back, none full", func() error {
		docs, err := nodeDocs(admin)
		if err != nil {
			return err
		}
		for name := range docsBefore {
			d, ok := docs[name]
			if !ok {
				return fmt.Errorf("%s lost", name)
			}
			if d.EtcdSpace == nodedoc.SpaceFull {
				return fmt.Errorf("%s still says etcd_space full", name)
			}
		}
		return nil
	})
	done()
	t.Logf("TestEtcdSpace took %s", time.Since(total).Round(time.Second))
}

func revision(t *testing.T, cli *clientv3.Client, ep string) int64 {
	t.Helper()
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	st, err := cli.Status(ctx, ep)
	if err != nil {
		t.Fatalf("status of %s: %v", ep, err)
	}
	return st.Header.Revision
}

// leaderOf is the etcd leader's member ID as the first member that answers sees it.
func leaderOf(t *testing.T, cli *clientv3.Client, n []*testNode) uint64 {
	t.Helper()
	for _, x := range n {
		ctx, cancel := ctxT(3 * time.Second)
		st, err := cli.Status(ctx, x.client)
		cancel()
		if err == nil {
			return st.Leader
		}
	}
	t.Fatal("no member answers a status request")
	return 0
}

func hasAlarm(errs []string) bool {
	for _, e := range errs {
		if strings.Contains(e, "NOSPACE") {
			return true
		}
	}
	return false
}

func mib(b int64) string { return fmt.Sprintf("%6.2f MiB", float64(b)/(1<<20)) }

func mustPut(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func logHas(n *testNode, s string) bool {
	data, _ := os.ReadFile(n.logPath)
	return strings.Contains(string(data), s)
}

// metric reads one sample of an agent's /metrics (0 when absent).
func metric(t *testing.T, n *testNode, series string) int {
	t.Helper()
	resp, err := httpClient(n).Get(n.metrics + "/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", n.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics of %s: %s", n.name, resp.Status)
	}
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %q", series, line)
			}
			return int(f)
		}
	}
	return 0
}
