package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-os/berth/agent/nodedoc"
)

// BenchmarkClusterMeasures measures a real 3-voter cluster of berth-agent
// processes on loopback, with the agents' default raft timing (heartbeat
// 100 ms, election timeout 1 s) and node TTL (10 s):
//
//   - leader failover: SIGKILL the etcd leader's agent and time until a put
//     through a surviving member succeeds (3 rounds; the killed agent is
//     restarted from its data dir between rounds);
//   - resident memory (VmRSS) of each agent after 10 s idle, and again with
//     1,000 simulated nodes;
//   - 1,000 simulated nodes: ONE process (this benchmark) publishes 1,000
//     node documents, each with its own lease and KeepAlive, through
//     nodedoc.Publisher as agent/ctl's BenchmarkNodes1000 does, but against
//     the 3-member cluster; reported are the heartbeat throughput (puts/s
//     while all 1,000 publish at once, 5 rounds) and the latency of the
//     built berthctl binary's `berthctl nodes` with the ops certificate
//     (median of 10 runs, process start included).
//
// It does the whole scenario once, whatever b.N:
//
//	go test -run '^$' -bench ClusterMeasures -benchtime 1x ./agent/cmd/berth-agent/
func BenchmarkClusterMeasures(b *testing.B) {
	if testing.Short() {
		b.Skip("multi-process measurement")
	}
	ln, err := net.Listen("tcp", "127.0.0.31:0")
	if err != nil {
		b.Skipf("cannot bind 127.0.0.31: %v", err)
	}
	ln.Close()
	root := b.TempDir()
	bins := filepath.Join(root, "bin")
	for _, pkg := range []string{".", "../berthctl"} {
		if out, err := exec.Command("go", "build", "-o", bins+"/", pkg).CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	mc := &measureCluster{tb: b, bin: filepath.Join(bins, "berth-agent"), root: root}
	defer mc.stopAll()
	defer func() {
		if b.Failed() {
			mc.dumpLogs()
		}
	}()
	for i := 1; i <= 3; i++ {
		mc.add(fmt.Sprintf("m-%d", i), fmt.Sprintf("127.0.0.%d", 30+i))
	}
	n := mc.nodes
	mc.start(n[0], "--voters", "3")
	mc.waitReady(n[0], 30*time.Second)
	tokenText, err := os.ReadFile(filepath.Join(n[0].dir, "token"))
	if err != nil {
		b.Fatal(err)
	}
	join := []string{"--join", n[0].api, "--token", strings.TrimSpace(string(tokenText))}
	mc.start(n[1], join...)
	mc.start(n[2], join...)
	mc.waitReady(n[1], 60*time.Second)
	mc.waitReady(n[2], 60*time.Second)
	admin := mc.client(n[0], mc.clientURLs())
	mc.waitVoters(admin, 3, 60*time.Second)

	// Idle memory.
	time.Sleep(10 * time.Second)
	idleRSS := mc.rss()

	// Leader failover, three rounds.
	var failovers []time.Duration
	for round := 1; round <= 3; round++ {
		leader := mc.leader(admin)
		var survivors []string
		for _, x := range n {
			if x != leader {
				survivors = append(survivors, x.client)
			}
		}
		cli := mc.client(n[0], survivors)
		mc.kill(leader)
		killed := time.Now()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
			_, err := cli.Put(ctx, nodedoc.Prefix+"bench/failover", strconv.Itoa(round))
			cancel()
			if err == nil {
				break
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatalf("round %d: no successful put 30s after killing the leader: %v", round, err)
			}
		}
		d := time.Since(killed)
		failovers = append(failovers, d)
		b.Logf("failover round %d: killed leader %s, put through a survivor after %s", round, leader.name, d.Round(time.Millisecond))
		cli.Close()
		mc.start(leader) // from its data dir
		mc.waitReady(leader, 60*time.Second)
		mc.waitVoters(admin, 3, 30*time.Second)
		mc.waitHealthy(admin, 30*time.Second)
	}

	// 1,000 simulated nodes published from this one process.
	const simulated = 1000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	simCli := mc.client(n[0], mc.clientURLs())
	var puts atomic.Int64
	go func() {
		for wr := range admin.Watch(ctx, nodedoc.NodesPrefix+"sim-", clientv3.WithPrefix()) {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					puts.Add(1)
				}
			}
		}
	}()
	// Publisher warnings (lost leases, failed puts) go to a file and are
	// counted in the summary.
	pubLogPath := filepath.Join(root, "publishers.log")
	pubLog, err := os.Create(pubLogPath)
	if err != nil {
		b.Fatal(err)
	}
	defer pubLog.Close()
	quiet := slog.New(slog.NewTextHandler(pubLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pubs := make([]*nodedoc.Publisher, simulated)
	start := time.Now()
	for i := range pubs {
		doc := nodedoc.Node{Role: nodedoc.RoleClient, Ready: true, Addresses: []string{"127.0.0.1"}, Kernel: "6.1.0-bench",
			OS: nodedoc.OS{Name: "berth-minimal", Version: "0.2.0", Slot: "a"}, BootTime: time.Now().Add(-time.Hour)}
		p := nodedoc.NewPublisher(simCli, fmt.Sprintf("sim-%04d", i), func() nodedoc.Node { return doc }, 0)
		p.Poll = time.Hour // heartbeats only
		p.Log = quiet
		pubs[i] = p
		go p.Run(ctx)
	}
	for _, p := range pubs {
		select {
		case <-p.Published():
		case <-time.After(90 * time.Second):
			b.Fatal("not all 1,000 simulated documents published within 90s")
		}
	}
	firstPublish := time.Since(start)
	const rounds = 5
	before := puts.Load()
	burst := time.Now()
	for r := 1; r <= rounds; r++ {
		for _, p := range pubs {
			p.Trigger()
		}
		for puts.Load()-before < int64(r*simulated) {
			if time.Since(burst) > 2*time.Minute {
				b.Fatalf("heartbeat round %d did not finish", r)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	burstTime := time.Since(burst)
	heartbeats := float64(puts.Load()-before) / burstTime.Seconds()

	// berthctl nodes with the ops certificate, as an operator runs it.
	opsDir := filepath.Join(root, "ops")
	if out, err := exec.Command(mc.bin, "issue-ops-cert", "--data-dir", n[0].dir, "--out", opsDir).CombinedOutput(); err != nil {
		b.Fatalf("issue-ops-cert: %v\n%s", err, out)
	}
	berthctl := []string{"--endpoints", strings.Join(mc.clientURLs(), ","), "--cacert", filepath.Join(opsDir, "ca.crt"),
		"--cert", filepath.Join(opsDir, "ops.crt"), "--key", filepath.Join(opsDir, "ops.key"), "nodes"}
	var nodesRuns []time.Duration
	var listed []int
	for i := 0; i < 10; i++ {
		cmd := exec.Command(filepath.Join(bins, "berthctl"), berthctl...)
		cmd.Env = append(os.Environ(), "HOME="+root) // no user config file
		t0 := time.Now()
		out, err := cmd.Output()
		nodesRuns = append(nodesRuns, time.Since(t0))
		if err != nil {
			b.Fatalf("berthctl nodes: %v\n%s", err, out)
		}
		// Header, the 3 agents and the 1,000 simulated nodes; a document
		// briefly missing (lease lost under load) is reported, not fatal.
		lines := strings.Count(string(out), "\n")
		if lines < 1+3+simulated*9/10 {
			b.Fatalf("berthctl nodes printed %d lines, want %d", lines, 1+3+simulated)
		}
		listed = append(listed, lines-1)
	}
	loadedRSS := mc.rss()
	cancel()

	failMed, nodesMed := median(failovers), median(nodesRuns)
	maxIdle := slices.Max(idleRSS)
	b.ReportMetric(failMed.Seconds(), "s-failover-median")
	b.ReportMetric(nodesMed.Seconds()*1000, "ms-berthctl-nodes-1000")
	b.ReportMetric(heartbeats, "heartbeats/s")
	b.ReportMetric(float64(maxIdle)/1024, "MB-rss-idle-max")

	var sb strings.Builder
	fmt.Fprintf(&sb, "\nberth cluster measures (3 berth-agent processes on 127.0.0.31-33, default raft timing; 2 cores)\n")
	fmt.Fprintf(&sb, "failover rounds: %s\n", joinDurations(failovers))
	fmt.Fprintf(&sb, "berthctl nodes runs: %s\n", joinDurations(nodesRuns))
	pubWarnings, _ := os.ReadFile(pubLogPath)
	fmt.Fprintf(&sb, "rows listed per run (want %d): %v; publisher warnings: %d (first: %s)\n", 3+simulated, listed,
		strings.Count(string(pubWarnings), "\n"), firstLine(string(pubWarnings)))
	fmt.Fprintf(&sb, "1,000 SIMULATED nodes (one process, 1,000 leases): first publish of all %s; %d heartbeats in %s\n",
		firstPublish.Round(time.Millisecond), puts.Load()-before, burstTime.Round(time.Millisecond))
	fmt.Fprintf(&sb, "%-42s %14s %10s %8s\n", "measure", "value", "goal", "ratio")
	row := func(what, value, goal string, ratio float64) {
		fmt.Fprintf(&sb, "%-42s %14s %10s %8s\n", what, value, goal, fmt.Sprintf("%.2f", ratio))
	}
	row("leader failover (median of 3)", failMed.Round(time.Millisecond).String(), "< 2s", failMed.Seconds()/2)
	row("berthctl nodes, 1,000 sim. nodes (median)", nodesMed.Round(time.Millisecond).String(), "< 200ms", nodesMed.Seconds()/0.2)
	for i, x := range n {
		row("RSS idle "+x.name, fmt.Sprintf("%.1f MB", float64(idleRSS[i])/1024), "< 80 MB", float64(idleRSS[i])/1024/80)
	}
	for i, x := range n {
		row("RSS with 1,000 sim. nodes "+x.name, fmt.Sprintf("%.1f MB", float64(loadedRSS[i])/1024), "< 80 MB", float64(loadedRSS[i])/1024/80)
	}
	fmt.Fprintf(&sb, "%-42s %14s %10s %8s\n", "heartbeat throughput, 1,000 sim. nodes", fmt.Sprintf("%.0f puts/s", heartbeats), "-", "-")
	fmt.Fprintf(&sb, "(ratio = value / goal; below 1 meets the goal)\n")
	b.Log(sb.String())
	fmt.Print(sb.String())
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if line == "" {
		return "-"
	}
	return line
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func joinDurations(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.Round(time.Millisecond).String())
	}
	return strings.Join(parts, " ")
}

// measureCluster is a small testing.TB version of the test harness (which
// takes *testing.T): berth-agent processes on 127.0.0.x with default timing.
type measureCluster struct {
	tb    testing.TB
	bin   string
	root  string
	nodes []*measureNode
}

type measureNode struct {
	name, dir, logPath         string
	peer, client, api, metrics string
	cmd                        *exec.Cmd
	done                       chan error
}

func (mc *measureCluster) add(name, ip string) {
	port := func() string {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			mc.tb.Fatal(err)
		}
		defer l.Close()
		return net.JoinHostPort(ip, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	mc.nodes = append(mc.nodes, &measureNode{
		name: name, dir: filepath.Join(mc.root, name), logPath: filepath.Join(mc.root, name+".log"),
		peer: "https://" + port(), client: "https://" + port(), api: "https://" + port(), metrics: "http://" + port(),
	})
}

func (mc *measureCluster) clientURLs() []string {
	var urls []string
	for _, n := range mc.nodes {
		urls = append(urls, n.client)
	}
	return urls
}

func (mc *measureCluster) start(n *measureNode, extra ...string) {
	mc.tb.Helper()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		mc.tb.Fatal(err)
	}
	args := append([]string{"--name", n.name, "--data-dir", n.dir, "--peer-url", n.peer, "--client-url", n.client,
		"--api-url", n.api, "--metrics-url", n.metrics, "--log-level", "warn",
		// Etcd and node documents only: no berth-shim in the test binary dir.
		"--containers=false", "--state-dir", n.dir + "-state"}, extra...)
	cmd := exec.Command(mc.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "JOURNAL_STREAM=")
	if err := cmd.Start(); err != nil {
		mc.tb.Fatalf("start %s: %v", n.name, err)
	}
	n.cmd, n.done = cmd, make(chan error, 1)
	go func() { n.done <- cmd.Wait(); logf.Close() }()
}

func (mc *measureCluster) kill(n *measureNode) {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

func (mc *measureCluster) stopAll() {
	for _, n := range mc.nodes {
		mc.kill(n)
	}
}

func (mc *measureCluster) dumpLogs() {
	for _, n := range mc.nodes {
		data, _ := os.ReadFile(n.logPath)
		lines := strings.Split(string(data), "\n")
		mc.tb.Logf("---- %s\n%s", n.name, strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
}

func (mc *measureCluster) waitReady(n *measureNode, timeout time.Duration) {
	mc.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-n.done:
			n.done <- err
			mc.tb.Fatalf("%s exited: %v", n.name, err)
		default:
		}
		if resp, err := http.Get(n.metrics + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	mc.tb.Fatalf("%s not ready within %s", n.name, timeout)
}

func (mc *measureCluster) client(n *measureNode, endpoints []string) *clientv3.Client {
	mc.tb.Helper()
	p := filepath.Join(n.dir, "pki")
	tlsCfg, err := transport.TLSInfo{CertFile: filepath.Join(p, "node.crt"), KeyFile: filepath.Join(p, "node.key"),
		TrustedCAFile: filepath.Join(p, "ca.crt")}.ClientConfig()
	if err != nil {
		mc.tb.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		mc.tb.Fatal(err)
	}
	mc.tb.Cleanup(func() { cli.Close() })
	return cli
}

func (mc *measureCluster) waitVoters(cli *clientv3.Client, want int, timeout time.Duration) {
	mc.tb.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cli.MemberList(ctx)
		cancel()
		if err == nil {
			voters := 0
			for _, m := range resp.Members {
				if !m.IsLearner && m.Name != "" {
					voters++
				}
			}
			if voters == want && len(resp.Members) == want {
				return
			}
			last = fmt.Sprintf("%d voters of %d members", voters, len(resp.Members))
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	mc.tb.Fatalf("not %d voters within %s: %s", want, timeout, last)
}

// waitHealthy waits until every member answers Status with the same
// leader, so the next failover round starts from a settled cluster.
func (mc *measureCluster) waitHealthy(cli *clientv3.Client, timeout time.Duration) {
	mc.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		leaders := map[uint64]bool{}
		for _, n := range mc.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, n.client)
			cancel()
			if err != nil || st.Leader == 0 {
				leaders[0] = true
				continue
			}
			leaders[st.Leader] = true
		}
		if len(leaders) == 1 && !leaders[0] {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	mc.tb.Fatalf("cluster not settled within %s", timeout)
}

func (mc *measureCluster) leader(cli *clientv3.Client) *measureNode {
	mc.tb.Helper()
	for _, n := range mc.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, n.client)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return n
		}
	}
	mc.tb.Fatal("no leader found")
	return nil
}

// rss returns each agent's VmRSS in KiB (RssAnon, the heap and stacks, is
// logged next to it: the rest is mostly etcd's mmapped bbolt file).
func (mc *measureCluster) rss() []int64 {
	mc.tb.Helper()
	var out []int64
	for _, n := range mc.nodes {
		anon := procStatusKB(mc.tb, n.cmd.Process.Pid, "RssAnon:")
		kb := procStatusKB(mc.tb, n.cmd.Process.Pid, "VmRSS:")
		mc.tb.Logf("%s: VmRSS %d kB, RssAnon %d kB", n.name, kb, anon)
		out = append(out, kb)
	}
	return out
}

func procStatusKB(tb testing.TB, pid int, field string) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("/proc/%d/status %s %q: %v", pid, field, rest, err)
			}
			return kb
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
