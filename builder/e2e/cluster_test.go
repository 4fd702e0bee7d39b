package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/builder/qemu"
)

// The clusters of these tests live at fixed places, so that a run killed
// half way is cleaned up by the next one.
func freshCluster(t *testing.T, cfg qemu.ClusterConfig) *qemu.Cluster {
	t.Helper()
	cfg.Dir = filepath.Join(qemu.DefaultClusterRoot, cfg.Name)
	if err := qemu.DestroyCluster(cfg.Name, cfg.Dir); err != nil {
		t.Fatalf("remove a cluster %s left by an earlier run: %v", cfg.Name, err)
	}
	c, err := qemu.CreateCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Rollouts reboot nodes: a new qemu per boot saves a minute or two of
	// firmware each under emulation (see SetColdReboot).
	c.SetColdReboot(true)
	t.Cleanup(func() {
		if t.Failed() {
			for i, n := range c.Nodes {
				t.Logf("--- %s console, last lines of this boot ---\n%s", n.Name, c.Tail(i+1, 60))
			}
		}
		if os.Getenv("BERTH_E2E_KEEP") != "" {
			t.Logf("kept cluster %s in %s (berth-build cluster down --name %s --dir %s)", c.Name, c.Dir, c.Name, c.Dir)
			return
		}
		if err := c.Down(); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	return c
}

// TestE2EClusterHarness checks the harness itself with firmware only (a
// blank disk, nothing to boot): qemu runs daemonized in the namespace on
// its tap, the serial log and console socket carry the firmware's output,
// Kill and Start work and WaitForLine sees only the current boot.
func TestE2EClusterHarness(t *testing.T) {
	requireE2E(t)
	blank := filepath.Join(t.TempDir(), "blank.raw")
	if err := os.WriteFile(blank, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 64<<20); err != nil {
		t.Fatal(err)
	}
	c := freshCluster(t, qemu.ClusterConfig{Name: "e2e-harness", Image: blank, Nodes: 1, DiskBytes: 64 << 20})
	n := c.Nodes[0]
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	pid := c.Running(1)
	if pid == 0 {
		t.Fatal("qemu not running after Start")
	}
	if err := c.Start(1); err == nil {
		t.Error("a second Start of a running node succeeded")
	}
	// Connected to the console socket while the firmware runs: the log
	// must be written all the same.
	sock, err := net.Dial("unix", n.ConsoleSocket())
	if err != nil {
		t.Fatalf("console socket: %v", err)
	}
	defer sock.Close()
	// OVMF finds nothing to boot on the blank disk and says so.
	firmware := regexp.MustCompile(`BdsDxe: (failed to load|loading) Boot`)
	line, err := c.WaitForLine(1, firmware, 3*time.Minute)
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, c.Console(1))
	}
	t.Logf("firmware on the console after %.1f s: %s", time.Since(n.Started()).Seconds(), line)
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	if k, err := sock.Read(buf); err != nil || k == 0 {
		t.Errorf("console socket gave nothing: %v", err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	for _, want := range []string{"ifname=" + n.Tap, "mac=" + n.MAC, "-smp\x001\x00", "-m\x00768\x00"} {
		if !strings.Contains(string(cmdline), want) {
			t.Errorf("qemu command line lacks %q: %q", want, cmdline)
		}
	}
	// qemu runs in the cluster's namespace, not the host's.
	hostNS, _ := os.Readlink("/proc/self/ns/net")
	qemuNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if qemuNS == "" || qemuNS == hostNS {
		t.Errorf("qemu's network namespace %q, the host's %q", qemuNS, hostNS)
	}
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	if c.Running(1) != 0 {
		t.Fatal("qemu still running after Kill")
	}
	if _, err := c.WaitForLine(1, regexp.MustCompile(`never printed`), time.Minute); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("WaitForLine on a killed node: %v, want a quick 'not running'", err)
	}
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(c.Console(1), "BdsDxe") {
		t.Error("the restarted node's console shows the previous boot's output")
	}
	if _, err := c.WaitForLine(1, firmware, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	pid = c.Running(1)
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	// A zombie has an empty command line; a reused pid another one.
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmdline), c.Dir) {
		t.Errorf("qemu pid %d still running after Down", pid)
	}
	if _, err := os.Stat("/var/run/netns/" + c.Netns); err == nil {
		t.Error("namespace left after Down")
	}
}

// buildBerthctl builds the CLI the test drives the cluster with.
func buildBerthctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berthctl")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "../../agent/cmd/berthctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build berthctl: %v: %s", err, out)
	}
	return bin
}

// The cluster suite boots one 3-node cluster of images/minimal.yaml once
// and runs every cluster scenario on it, in order: booting nodes under
// emulation is the expensive part of these tests, so a new scenario is a
// function added to clusterScenarios, not a new cluster.
//
// The contract: a scenario starts with three Ready nodes and leaves three
// Ready nodes (it may reboot, upgrade or reconfigure them, and says so),
// unless it is marked consumes, which only the last ones may be. One
// exception saves a boot: a scenario may leave one node killed (e.down)
// for a scenario marked takesDown that runs next; when the next one is
// not, the suite starts the node again and waits for three Ready nodes.
type clusterScenario struct {
	name      string
	consumes  bool // leaves the cluster unusable for the scenarios after it
	takesDown bool // starts with e.down killed when the scenario before left it so
	run       func(t *testing.T, e *clusterEnv)
}

var clusterScenarios = []clusterScenario{
	{name: "ready", run: scenarioReady},
	{name: "containers-cgroup", run: scenarioContainersCgroup},
	{name: "container-network", run: scenarioContainerNetwork},
	{name: "node-loss-and-config", takesDown: true, run: scenarioNodeLoss},
	{name: "replicated-volume", run: scenarioReplicatedVolume},
	{name: "rollout", run: scenarioRollout},
	{name: "canary-rollback", run: scenarioCanaryRollback},
	{name: "dead-reboot-holder", consumes: true, run: scenarioDeadHolder},
}

// clusterEnv is what the scenarios share: the cluster, the CLI and the
// releases (0.1.0 booted; 0.2.0, and 0.4.0 whose health check fails, for
// rollouts; all signed by one key).
type clusterEnv struct {
	c        *qemu.Cluster
	berthctl string
	ctx      context.Context
	cli      *clientv3.Client
	versions map[string]builtVersion
	netcheck string // the container scenarios' image, once pushed
	// Measured while booting: admin certificate and all Ready, from the
	// first qemu start.
	certAt, readyAt time.Duration
	// A node a scenario killed and left down for the next one, and when.
	down   int
	downAt time.Time
}

// ctl runs berthctl in the cluster with the admin certificate.
//
// A one-shot command (run, tenant add, image push) gets 30 s to reach
// etcd instead of berthctl's default 5 s: under emulation, with three
// nodes pulling and starting containers, the cluster has been seen not
// answering for a few seconds (an election), and such a blip is not what
// the scenarios test. A later --timeout in args still wins.
func (e *clusterEnv) ctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.c.Berthctl(e.ctx, e.berthctl, append([]string{"--timeout", "30s"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestE2ECluster boots the cluster and runs the scenarios on it; each
// scenario's time is its subtest's. It does not run in parallel with the
// single-VM tests: tried, an overloaded host starved a node serving the
// rollout payload to its peers until its node lease lapsed.
//
// BERTH_E2E_SCENARIOS=name,name runs only those scenarios (in the order
// of clusterScenarios) on a fresh cluster, to work on one without the
// others' 40 minutes, e.g.
//
//	BERTH_E2E=1 BERTH_E2E_SCENARIOS=containers-cgroup go test -count=1 -run TestE2ECluster -timeout 60m ./builder/e2e/
func TestE2ECluster(t *testing.T) {
	requireE2E(t)
	for i, s := range clusterScenarios {
		if s.consumes && i != len(clusterScenarios)-1 && !clusterScenarios[i+1].consumes {
			t.Fatalf("scenario %s consumes the cluster but %s runs after it", s.name, clusterScenarios[i+1].name)
		}
	}
	scenarios, err := selectScenarios(clusterScenarios, os.Getenv("BERTH_E2E_SCENARIOS"))
	if err != nil {
		t.Fatal(err)
	}
	e := bootCluster(t)
	for _, s := range scenarios {
		if e.down != 0 && !s.takesDown {
			e.startDown(t)
		}
		if !t.Run(s.name, func(t *testing.T) { s.run(t, e) }) {
			t.Fatalf("scenario %s failed: the cluster is in an unknown state, so the scenarios after it do not run", s.name)
		}
	}
}

// startDown starts the node a scenario left down and waits for three
// Ready nodes.
func (e *clusterEnv) startDown(t *testing.T) {
	t.Helper()
	if err := e.c.Start(e.down); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if _, err := e.c.WaitNodes(e.ctx, e.berthctl, e.c.AllReady); err != nil {
		t.Fatalf("node-%d Ready again: %v", e.down, err)
	}
	t.Logf("measured: node-%d Ready again %.1f s after its qemu started", e.down, time.Since(started).Seconds())
	e.down = 0
}

// selectScenarios keeps the scenarios named in the comma-separated list
// (all of them when it is empty); an unknown name is an error, not a
// silently empty run.
func selectScenarios(all []clusterScenario, list string) ([]clusterScenario, error) {
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	var out []clusterScenario
	var names []string
	for _, s := range all {
		names = append(names, s.name)
		if want[s.name] {
			out = append(out, s)
			delete(want, s.name)
		}
	}
	if len(want) > 0 {
		var unknown []string
		for n := range want {
			unknown = append(unknown, n)
		}
		slices.Sort(unknown)
		return nil, fmt.Errorf("BERTH_E2E_SCENARIOS names unknown scenarios %s; known: %s", strings.Join(unknown, ", "), strings.Join(names, ", "))
	}
	return out, nil
}

// bootCluster boots three nodes of release 0.1.0 (built once for this and
// TestE2EUpdate) on the cluster network and waits for three Ready nodes:
// node-1 bootstraps with the harness's secret, the others join.
func bootCluster(t *testing.T) *clusterEnv {
	t.Helper()
	e := &clusterEnv{versions: releases(t).versions}
	e.berthctl = buildBerthctl(t)
	e.c = freshCluster(t, qemu.ClusterConfig{Name: "e2e", Image: e.versions["0.1.0"].res.Raw, Nodes: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Minute)
	t.Cleanup(cancel)
	e.ctx = ctx
	start := time.Now()
	if err := e.c.StartAll(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.FetchAdminCert(ctx); err != nil {
		t.Fatal(err)
	}
	e.certAt = time.Since(start)
	if _, err := e.c.WaitNodes(ctx, e.berthctl, e.c.AllReady); err != nil {
		t.Fatalf("3 Ready nodes: %v", err)
	}
	e.readyAt = time.Since(start)
	cli, err := e.c.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	e.cli = cli
	return e
}

// scenarioReady: berthctl lists three Ready voters with OS version and
// slot, and the boot is measured.
func scenarioReady(t *testing.T, e *clusterEnv) {
	c, version := e.c, e.versions["0.1.0"].res.Manifest.Version
	nodes, err := c.ListNodes(e.ctx, e.berthctl)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Document == nil || n.Document.OS.Version != version || n.Document.OS.Slot != "a" {
			t.Errorf("%s: document %+v: want OS version %s, slot a", n.Name, n.Document, version)
		}
	}
	table := e.ctl(t, "nodes")
	for _, n := range c.Nodes {
		if !regexp.MustCompile(`(?m)^` + n.Name + `\s+\S+\s+Ready\s+` + regexp.QuoteMeta(version) + `\s+a\s`).MatchString(table) {
			t.Errorf("berthctl nodes has no Ready row for %s at version %s, slot a:\n%s", n.Name, version, table)
		}
	}
	t.Logf("berthctl nodes:\n%s", table)
	t.Logf("measured: admin certificate from node-1 %.1f s, 3 nodes Ready %.1f s after the first qemu started", e.certAt.Seconds(), e.readyAt.Seconds())
	for i, n := range c.Nodes {
		d, err := c.AgentReadyAfter(e.ctx, i+1)
		if err != nil {
			t.Errorf("%s: boot to agent ready: %v", n.Name, err)
			continue
		}
		t.Logf("measured: %s boot to agent ready %.1f s (firmware and loader %.1f s of it)", n.Name, d.Seconds(), n.KernelAt().Sub(n.Started()).Seconds())
	}
}

// scenarioNodeLoss: a node loses power (the one container-network killed,
// or node-3) and turns NotReady; while it is down its node.yaml gets a
// label (a setting for the next boot) and a host name no system accepts;
// it boots, reports the wrong setting on the console, and is Ready again
// with the label and its host name. It leaves that node with label
// zone=b and the refused host name in its node.yaml (reported again at
// each boot, changing nothing).
func scenarioNodeLoss(t *testing.T, e *clusterEnv) {
	c, ctx := e.c, e.ctx
	if e.down == 0 {
		if err := c.Kill(3); err != nil {
			t.Fatal(err)
		}
		e.down, e.downAt = 3, time.Now()
	}
	idx := e.down
	name := c.Nodes[idx-1].Name
	want := map[string]string{}
	for _, n := range c.Nodes {
		want[n.Name] = "Ready"
	}
	want[name] = "NotReady"
	if _, err := c.WaitNodes(ctx, e.berthctl, func(nodes []ctl.NodeRow) error { return statuses(nodes, want) }); err != nil {
		t.Fatalf("%s NotReady after SIGKILL: %v", name, err)
	}
	t.Logf("measured: %s NotReady %.1f s after SIGKILL", name, time.Since(e.downAt).Seconds())

	nc, err := c.NodeConfig(idx)
	if err != nil {
		t.Fatal(err)
	}
	nc.Agent.Labels = map[string]string{"zone": "b"}
	nc.Hostname = "not a hostname!"
	nodeYAML, err := nc.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteNodeConfig(idx, nodeYAML); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(idx); err != nil {
		t.Fatal(err)
	}
	e.down = 0
	restarted := time.Now()
	if line, err := c.WaitForLine(idx, regexp.MustCompile(`berth-node-config: ERROR [^\r\n]*hostname[^\r\n]*`), 10*time.Minute); err != nil {
		t.Errorf("the wrong host name was not reported on the console: %v", err)
	} else {
		t.Logf("%s console: %s", name, line)
	}
	_, err = c.WaitNodes(ctx, e.berthctl, func(nodes []ctl.NodeRow) error {
		if err := c.AllReady(nodes); err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Name == name && (n.Document == nil || n.Document.Labels["zone"] != "b") {
				return fmt.Errorf("%s is Ready without label zone=b", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s Ready again with its new label: %v", name, err)
	}
	t.Logf("measured: %s Ready again %.1f s after its qemu started", name, time.Since(restarted).Seconds())
	if d, err := c.AgentReadyAfter(ctx, idx); err == nil {
		t.Logf("measured: %s (restarted, rejoining with its data) boot to agent ready %.1f s", name, d.Seconds())
	} else {
		t.Errorf("%s: boot to agent ready: %v", name, err)
	}
	// An agent that had to be restarted to come up after the power loss
	// says why in its journal: shown here, so a run tells it.
	if out, err := c.SSH(ctx, idx, `n=$(systemctl show -P NRestarts berth-agent); echo "restarts=$n"; [ "$n" = 0 ] || journalctl -b -u berth-agent -o cat --no-pager | grep -v '^{' | grep -i -B2 -A2 'error\|fail\|exit' | head -n 25`); err == nil && !strings.HasPrefix(string(out), "restarts=0") {
		t.Logf("%s: berth-agent was restarted by systemd during this boot:\n%s", name, out)
	}
	// Reachable, and the wrong host name changed nothing.
	out, err := c.SSH(ctx, idx, "hostname")
	if err != nil {
		t.Fatalf("%s unreachable after a wrong setting: %v", name, err)
	}
	if got := strings.TrimSpace(string(out)); got != name {
		t.Errorf("%s's host name is %q after a refused one, want %s kept", name, got, name)
	}
}

// statuses checks the READY column of the listed nodes.
func statuses(nodes []ctl.NodeRow, want map[string]string) error {
	got := map[string]string{}
	for _, n := range nodes {
		got[n.Name] = n.Status
	}
	for name, status := range want {
		if got[name] != status {
			return fmt.Errorf("%s is %q, want %s (all: %v)", name, got[name], status, got)
		}
	}
	return nil
}

func TestSelectScenarios(t *testing.T) {
	all := []clusterScenario{{name: "a"}, {name: "b"}, {name: "c"}}
	names := func(l []clusterScenario) string {
		var n []string
		for _, s := range l {
			n = append(n, s.name)
		}
		return strings.Join(n, ",")
	}
	for list, want := range map[string]string{"": "a,b,c", "c, a": "a,c", "b,": "b"} {
		got, err := selectScenarios(all, list)
		if err != nil || names(got) != want {
			t.Errorf("%q: %q, %v; want %q", list, names(got), err, want)
		}
	}
	if _, err := selectScenarios(all, "a,x"); err == nil || !strings.Contains(err.Error(), "unknown scenarios x; known: a, b, c") {
		t.Errorf("an unknown name: %v", err)
	}
}
