package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Settings of BenchmarkEtcdSpace1000.
const (
	esSims        = 1000
	esSample      = 30 * time.Second
	esIdle        = 2 * time.Minute // 3 agents, nothing else
	esLoaded      = 5 * time.Minute // 3 agents and 1,000 simulated nodes
	esRetention   = time.Minute     // "after": shorter than the 5m default, said in the output
	esOldInterval = 2500 * time.Millisecond
)

// BenchmarkEtcdSpace1000 measures etcd's database size and revision rate
// over time, before and after issue 13, on two clusters of 3 real
// berth-agent processes on loopback (one after the other; --containers=false:
// no berth-shim, scheduler or usage writer here):
//
//   - before: the agents run with --compaction-retention 24h (etcd's
//     periodic compactor first compacts after 24 h: off for this run, as
//     the old code, which never set it), --etcd-quota 8GiB and
//     --defrag-interval 168h (no defragmentation can be due: it needs
//     quota/64 = 128 MiB free), and --node-refresh 2.5s: with the
//     publisher's 1 s poll each document is re-put every 3 s, the old
//     heartbeat. The 1,000 simulated nodes are nodedoc.Publishers with the
//     same 2.5 s refresh: a re-put every 3 s each.
//   - after: the agents' defaults (5 min node refresh, 2 GiB quota, 1 h
//     defrag interval) except --compaction-retention 1m, so compaction
//     shows within minutes; the 1,000 simulated nodes are nodedoc.Publishers
//     with the default refresh (nodedoc.DefaultRefresh) and write policy
//     (nodedoc.WriteReason).
//
// Each simulated node publishes the same idle document in both modes
// (2 cores, load1 0-0.3, free memory 60% +-2%, uptime counting), with its
// own lease and KeepAlive, from this one process; its document changes
// once (a container starts) at a moment spread evenly over the first
// 5 minutes, so that the refreshes that follow are spread as on nodes that
// booted at different times. Every 30 s each member's Status is sampled
// (revision, DbSize, DbSizeInUse): 2 minutes with the 3 agents alone, then
// 5 minutes with the 1,000 simulated nodes. A watch on /berth/ counts the
// agents' own writes (every key but the simulated nodes').
//
// It prints numbers and asserts none. It does the whole scenario once,
// whatever b.N, in about 15 minutes:
//
//	nice -n 19 go test -run '^$' -bench EtcdSpace1000 -benchtime 1x -timeout 40m ./agent/cmd/berth-agent/
func BenchmarkEtcdSpace1000(b *testing.B) {
	if testing.Short() {
		b.Skip("multi-process measurement")
	}
	ln, err := net.Listen("tcp", "127.0.0.91:0")
	if err != nil {
		b.Skipf("cannot bind 127.0.0.91: %v", err)
	}
	ln.Close()
	root := b.TempDir()
	bin := filepath.Join(root, "bin")
	if out, err := exec.Command("go", "build", "-o", bin+"/", ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\netcd space, before/after issue 13 (3 berth-agent processes on loopback; 1,000 SIMULATED nodes: state.Publishers in one process, each with its own lease)\n")
	before := runSpaceMode(b, spaceMode{
		name: "before", ip: 91, bin: filepath.Join(bin, "berth-agent"), root: filepath.Join(root, "before"),
		flags:    []string{"--compaction-retention", "24h", "--etcd-quota", "8GiB", "--defrag-interval", "168h", "--node-refresh", esOldInterval.String()},
		interval: esOldInterval,
	}, &report)
	after := runSpaceMode(b, spaceMode{
		name: "after", ip: 94, bin: filepath.Join(bin, "berth-agent"), root: filepath.Join(root, "after"),
		flags:    []string{"--compaction-retention", esRetention.String()},
		interval: nodedoc.DefaultRefresh,
	}, &report)

	fmt.Fprintf(&report, "\nsummary (growth = linear, last sample minus first over the window; a rate per hour extrapolated from minutes)\n")
	fmt.Fprintf(&report, "%-8s %-16s %10s %14s %14s %14s %12s\n", "mode", "phase", "rev/s", "rev/node/hour", "DbSize MiB/h", "InUse MiB/h", "DbSize end")
	for _, m := range []*spaceResult{before, after} {
		for _, ph := range []struct {
			name  string
			nodes int
			s     []spaceSample
		}{{"3 agents idle", 3, m.idle}, {"+1,000 sim.", 3 + esSims, m.loaded}} {
			g := growth(ph.s)
			fmt.Fprintf(&report, "%-8s %-16s %10.2f %14.1f %14.2f %14.2f %9.2f MiB\n", m.name, ph.name, g.revPerSec,
				g.revPerSec*3600/float64(ph.nodes), g.dbPerHour/(1<<20), g.inUsePerHour/(1<<20), float64(ph.s[len(ph.s)-1].dbMax)/(1<<20))
		}
	}
	gb, ga := growth(before.loaded), growth(after.loaded)
	ratio := func(x, y float64) string {
		if y <= 0 {
			return fmt.Sprintf("inf (after: %.3g)", y)
		}
		return fmt.Sprintf("%.0f", x/y)
	}
	fmt.Fprintf(&report, "1,000 sim. nodes, before/after: revision rate %s, DbSize growth %s, DbSizeInUse growth %s\n",
		ratio(gb.revPerSec, ga.revPerSec), ratio(gb.dbPerHour, ga.dbPerHour), ratio(gb.inUsePerHour, ga.inUsePerHour))
	if gb.dbPerHour > 0 {
		fmt.Fprintf(&report, "before, 1,000 sim. nodes: 2 GiB quota reached after about %.1f hours at this rate\n",
			float64(2<<30-before.loaded[len(before.loaded)-1].dbMax)/gb.dbPerHour)
	}
	ib, ia := growth(before.idle), growth(after.idle)
	fmt.Fprintf(&report, "3 idle agents: before %.2f rev/s (%.0f per node per hour), after %.3f rev/s (%.1f per node per hour) in the %s idle window; agents' own writes in after's whole run: %s\n",
		ib.revPerSec, ib.revPerSec*3600/3, ia.revPerSec, ia.revPerSec*3600/3, esIdle, after.agentWrites)
	b.ReportMetric(gb.dbPerHour/(1<<20), "MiB/h-before-1000")
	b.ReportMetric(ga.dbPerHour/(1<<20), "MiB/h-after-1000")
	b.ReportMetric(ia.revPerSec*3600/3, "rev/node/h-idle-after")
	b.Log(report.String())
	fmt.Print(report.String())
}

type spaceMode struct {
	name      string
	ip        int // first of three 127.0.0.x
	bin, root string
	flags     []string
	interval  time.Duration // the simulated nodes' refresh
}

type spaceResult struct {
	name         string
	idle, loaded []spaceSample
	agentWrites  string
}

type spaceSample struct {
	at           time.Duration // since the phase started
	rev          int64
	dbMin, dbMax int64 // over the members
	inUseMax     int64
}

type spaceGrowth struct{ revPerSec, dbPerHour, inUsePerHour float64 }

func growth(s []spaceSample) spaceGrowth {
	first, last := s[0], s[len(s)-1]
	d := (last.at - first.at).Seconds()
	if d <= 0 {
		return spaceGrowth{}
	}
	return spaceGrowth{
		revPerSec:    float64(last.rev-first.rev) / d,
		dbPerHour:    float64(last.dbMax-first.dbMax) / d * 3600,
		inUsePerHour: float64(last.inUseMax-first.inUseMax) / d * 3600,
	}
}

// runSpaceMode starts a 3-agent cluster with the mode's flags, samples it
// idle, then with 1,000 simulated nodes, and stops it.
func runSpaceMode(b *testing.B, m spaceMode, report *strings.Builder) *spaceResult {
	if err := os.MkdirAll(m.root, 0o755); err != nil {
		b.Fatal(err)
	}
	mc := &measureCluster{tb: b, bin: m.bin, root: m.root}
	defer mc.stopAll()
	defer func() {
		if b.Failed() {
			mc.dumpLogs()
		}
	}()
	for i := 0; i < 3; i++ {
		mc.add(fmt.Sprintf("%s-%d", m.name, i+1), fmt.Sprintf("127.0.0.%d", m.ip+i))
	}
	n := mc.nodes
	// No containers (no berth-shim here), state never in /var/lib/berth.
	own := func(x *measureNode, extra ...string) []string {
		return append(append([]string{"--containers=false", "--state-dir", x.dir + "-state"}, m.flags...), extra...)
	}
	mc.start(n[0], own(n[0], "--voters", "3")...)
	mc.waitReady(n[0], 60*time.Second)
	token, err := os.ReadFile(filepath.Join(n[0].dir, "token"))
	if err != nil {
		b.Fatal(err)
	}
	join := []string{"--join", n[0].api, "--token", strings.TrimSpace(string(token))}
	mc.start(n[1], own(n[1], join...)...)
	mc.start(n[2], own(n[2], join...)...)
	mc.waitReady(n[1], 90*time.Second)
	mc.waitReady(n[2], 90*time.Second)
	admin := mc.client(n[0], mc.clientURLs())
	mc.waitVoters(admin, 3, 90*time.Second)
	mc.waitHealthy(admin, 60*time.Second)
	time.Sleep(15 * time.Second) // joins, role entries and first documents settle

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The agents' own writes: every revision of a key that is not a
	// simulated node's document.
	var agentMu sync.Mutex
	agentRevs := map[int64]bool{}
	agentKeys := map[string]int{}
	var watchErr atomic.Value
	watchStart := time.Now()
	go func() {
		for wr := range admin.Watch(ctx, nodedoc.Prefix, clientv3.WithPrefix()) {
			if err := wr.Err(); err != nil {
				watchErr.Store(err.Error())
				return
			}
			agentMu.Lock()
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				if strings.HasPrefix(k, nodedoc.NodesPrefix+"sim-") {
					continue
				}
				agentRevs[ev.Kv.ModRevision] = true
				if ev.Type == clientv3.EventTypeDelete {
					k = "delete " + k
				}
				agentKeys[k]++
			}
			agentMu.Unlock()
		}
	}()

	res := &spaceResult{name: m.name}
	fmt.Fprintf(report, "\n== %s: agents with %s; simulated nodes refresh %s\n", m.name, strings.Join(m.flags, " "), m.interval)
	fmt.Fprintf(report, "%-8s %-12s %6s %10s %8s %22s %12s\n", "mode", "phase", "t(s)", "revision", "rev/s", "DbSize MiB (min-max)", "InUse MiB")
	res.idle = sampleSpace(b, admin, mc.clientURLs(), m.name, "3 idle", esIdle, report)

	// 1,000 simulated nodes.
	simCli := mc.client(n[0], mc.clientURLs())
	pubLog, err := os.Create(filepath.Join(m.root, "publishers.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer pubLog.Close()
	quiet := slog.New(slog.NewTextHandler(pubLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var reasonsMu sync.Mutex
	reasons := map[string]int{}
	simCtx, simCancel := context.WithCancel(ctx)
	var simWG sync.WaitGroup
	t0 := time.Now()
	pubs := make([]*nodedoc.Publisher, esSims)
	for i := range pubs {
		p := nodedoc.NewPublisher(simCli, fmt.Sprintf("sim-%04d", i), idleSimDoc(i, t0), 0)
		p.Interval = m.interval
		p.Log = quiet
		p.OnWrite = func(r string) {
			reasonsMu.Lock()
			reasons[r]++
			reasonsMu.Unlock()
		}
		pubs[i] = p
		simWG.Add(1)
		go func() { defer simWG.Done(); _ = p.Run(simCtx) }()
	}
	for _, p := range pubs {
		select {
		case <-p.Published():
		case <-time.After(3 * time.Minute):
			b.Fatal("not all 1,000 simulated documents published within 3 min")
		}
	}
	fmt.Fprintf(report, "(all 1,000 simulated documents published in %s)\n", time.Since(t0).Round(time.Millisecond))
	res.loaded = sampleSpace(b, admin, mc.clientURLs(), m.name, "+1,000 sim.", esLoaded, report)
	simCancel()
	stopped := make(chan struct{})
	go func() { simWG.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
	}
	reasonsMu.Lock()
	fmt.Fprintf(report, "simulated nodes' writes by reason (whole phase, incl. the first publish): %v\n", reasons)
	reasonsMu.Unlock()
	warnings, _ := os.ReadFile(filepath.Join(m.root, "publishers.log"))
	fmt.Fprintf(report, "publisher warnings: %d (first: %s)\n", strings.Count(string(warnings), "\n"), firstLine(string(warnings)))

	agentMu.Lock()
	res.agentWrites = fmt.Sprintf("%d revisions in %s (%v)", len(agentRevs), time.Since(watchStart).Round(time.Second), agentKeys)
	agentMu.Unlock()
	if e := watchErr.Load(); e != nil {
		res.agentWrites += " watch ended: " + e.(string)
	}
	fmt.Fprintf(report, "agents' own writes over the whole run: %s\n", res.agentWrites)
	for _, x := range n {
		fmt.Fprintf(report, "%s metrics: %s\n", x.name, scrapeSpaceMetrics(x.metrics))
	}
	return res
}

// idleSimDoc is an idle node's collector: figures that move a little
// (below WriteReason's thresholds) and one container started at a moment
// spread over the first 5 minutes after t0.
func idleSimDoc(i int, t0 time.Time) func() nodedoc.Node {
	rng := rand.New(rand.NewPCG(uint64(i), 13))
	boot := t0.Add(-time.Hour)
	changeAt := t0.Add(time.Duration(i) * nodedoc.DefaultRefresh / esSims)
	const total = 2 << 30
	return func() nodedoc.Node {
		now := time.Now()
		d := nodedoc.Node{Role: nodedoc.RoleClient, Ready: true, Addresses: []string{"10.0.3.1"}, Kernel: "6.1.0-50-cloud-amd64",
			ClientURL: "https://10.0.3.1:2379",
			OS:        nodedoc.OS{Name: "berth-minimal", Version: "0.2.0", Slot: "a", OtherSlotState: "good"},
			BootTime:  boot, UptimeSeconds: int64(now.Sub(boot).Seconds()),
			CPU:    nodedoc.CPU{Cores: 2, Load1: rng.Float64() * 0.3},
			Memory: nodedoc.Memory{TotalBytes: total, AvailableBytes: uint64(total * (0.6 + 0.02*(2*rng.Float64()-1)))},
			Agent:  nodedoc.Agent{Version: "dev", Started: boot.Add(5 * time.Second)},
		}
		if now.After(changeAt) {
			d.Containers = nodedoc.Containers{Running: 1, Total: 1}
		}
		return d
	}
}

// sampleSpace samples every member's Status every esSample for total and
// prints a row per sample.
func sampleSpace(b *testing.B, cli *clientv3.Client, endpoints []string, mode, phase string, total time.Duration, report *strings.Builder) []spaceSample {
	start := time.Now()
	var out []spaceSample
	for k := 0; ; k++ {
		if d := time.Until(start.Add(time.Duration(k) * esSample)); d > 0 {
			time.Sleep(d)
		}
		s := spaceSample{at: time.Since(start), dbMin: -1}
		for _, ep := range endpoints {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := cli.Status(ctx, ep)
			cancel()
			if err != nil {
				b.Logf("%s: status %s: %v", phase, ep, err)
				continue
			}
			s.rev = max(s.rev, st.Header.Revision)
			if s.dbMin < 0 || st.DbSize < s.dbMin {
				s.dbMin = st.DbSize
			}
			s.dbMax = max(s.dbMax, st.DbSize)
			s.inUseMax = max(s.inUseMax, st.DbSizeInUse)
		}
		rate := "-"
		if len(out) > 0 {
			p := out[len(out)-1]
			rate = fmt.Sprintf("%.2f", float64(s.rev-p.rev)/(s.at-p.at).Seconds())
		}
		out = append(out, s)
		row := fmt.Sprintf("%-8s %-12s %6.0f %10d %8s %22s %12.2f\n", mode, phase, s.at.Seconds(), s.rev, rate,
			fmt.Sprintf("%.2f-%.2f", float64(s.dbMin)/(1<<20), float64(s.dbMax)/(1<<20)), float64(s.inUseMax)/(1<<20))
		report.WriteString(row)
		fmt.Print(row)
		if s.at >= total-time.Second {
			return out
		}
	}
}

// scrapeSpaceMetrics returns the agent's space action and node document
// write counters.
func scrapeSpaceMetrics(base string) string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var keep []string
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "berth_agent_etcd_space_actions_total") || strings.HasPrefix(l, "berth_agent_node_document_writes_total") {
			keep = append(keep, strings.TrimPrefix(strings.TrimPrefix(l, "berth_agent_"), "etcd_"))
		}
	}
	if len(keep) == 0 {
		return "none"
	}
	return strings.Join(keep, "; ")
}
