package main

// The container scenario of issue 5 with real processes: three agents
// (embedded etcd, scheduler, workload manager, cluster registry) run real
// containers through berth-shim and libcontainer. All three live in one
// network namespace made by the test (their bridges and container
// networks never touch the host's), talking over its loopback.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/images/imagetest"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
)

// testGrace is the scheduler's grace before re-placing a lost node's
// replicas: long enough for an agent restart to come back first.
const testGrace = 5 * time.Second

// containerEnv is the namespace, binaries and identities of the scenario.
type containerEnv struct {
	t       *testing.T
	c       *testCluster
	ns      string
	berthct string
	certDir string
}

func newContainerEnv(t *testing.T) *containerEnv {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("containers need root")
	}
	ns := fmt.Sprintf("berth-ct-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot create network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	c := &testCluster{t: t, bin: buildAgent(t), root: t.TempDir(), nodes: map[string]*testNode{}}
	binDir := filepath.Dir(c.bin)
	// berth-shim next to berth-agent, where the agent looks for it.
	if out, err := exec.Command("go", "build", "-tags", "seccomp", "-o", filepath.Join(binDir, "berth-shim"), "../berth-shim").CombinedOutput(); err != nil {
		t.Fatalf("build berth-shim: %v\n%s", err, out)
	}
	berthctl := filepath.Join(binDir, "berthctl")
	if out, err := exec.Command("go", "build", "-o", berthctl, "../berthctl").CombinedOutput(); err != nil {
		t.Fatalf("build berthctl: %v\n%s", err, out)
	}
	e := &containerEnv{t: t, c: c, ns: ns, berthct: berthctl, certDir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		c.stopAll()
		e.removeContainers()
	})
	return e
}

// node adds a node with containers on, its own bridge, subnet, cgroup
// and state directory, so three agents share one namespace and one host.
func (e *containerEnv) node(i int) (*testNode, []string) {
	name, args := e.nodeArgs(i)
	n := e.c.addNode(name, fmt.Sprintf("127.0.0.%d", 50+i), e.ns, [4]int{2380, 2379, 7480, 7481})
	n.netOnly = true
	return n, args
}

// runtimeOf reads node n's containers as its agent does (the test's view
// of what really runs, independent of etcd).
func (e *containerEnv) runtimeOf(n *testNode) (*runtime.Shim, error) {
	return runtime.NewShim(runtime.ShimOptions{
		Root:     filepath.Join(e.stateDir(n), "containers"),
		ShimPath: filepath.Join(filepath.Dir(e.c.bin), "berth-shim"),
	})
}

// stateDir is where node n keeps containers (as the harness sets --state-dir).
func (e *containerEnv) stateDir(n *testNode) string {
	return filepath.Join(e.c.root, n.name+"-state")
}

// removeContainers stops every container the test left (their monitors
// outlive the agents by design).
func (e *containerEnv) removeContainers() {
	for _, n := range e.c.nodes {
		rt, err := e.runtimeOf(n)
		if err != nil {
			continue
		}
		ctx, cancel := ctxT(30 * time.Second)
		states, _ := rt.List(ctx)
		for _, st := range states {
			if err := rt.Remove(ctx, st.ID); err != nil {
				e.t.Logf("cleanup: remove %s: %v", st.ID, err)
			}
		}
		cancel()
	}
	// Container roots and pinned network namespaces, deepest first.
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var points []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if fields := strings.Fields(line); len(fields) > 1 && strings.HasPrefix(fields[1], e.c.root+"/") {
			points = append(points, fields[1])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
			e.t.Logf("cleanup: unmount %s: %v", p, err)
		}
	}
}

// ctl runs berthctl inside the namespace with the given identity.
func (e *containerEnv) ctl(identity string, args ...string) (string, error) {
	n1 := e.c.nodes["node-1"]
	if identity != "admin" && identity != "ops" {
		identity = "tenant-" + identity // as issue-cert --tenant names the files
	}
	full := append([]string{"netns", "exec", e.ns, e.berthct,
		"--endpoints", n1.client, "--cacert", filepath.Join(e.certDir, "ca.crt"),
		"--cert", filepath.Join(e.certDir, identity+".crt"), "--key", filepath.Join(e.certDir, identity+".key"),
		"--timeout", "5s"}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	return string(out), err
}

func (e *containerEnv) mustCtl(identity string, args ...string) string {
	e.t.Helper()
	out, err := e.ctl(identity, args...)
	if err != nil {
		e.t.Fatalf("berthctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *containerEnv) issue(n *testNode, args ...string) {
	e.t.Helper()
	full := append([]string{"issue-cert", "--data-dir", n.dir, "--out", e.certDir}, args...)
	if out, err := exec.Command(e.c.bin, full...).CombinedOutput(); err != nil {
		e.t.Fatalf("issue-cert %v: %v\n%s", args, err, out)
	}
}

// replicas reads `berthctl ps -o json` for a tenant.
func (e *containerEnv) replicas(identity, tenant, job string) ([]jobs.ReplicaStatus, error) {
	args := []string{"ps", "-o", "json", "--tenant", tenant}
	if job != "" {
		args = append(args, job)
	}
	out, err := e.ctl(identity, args...)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var list struct {
		Items []jobs.ReplicaStatus `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("ps output: %v: %s", err, out)
	}
	return list.Items, nil
}

// running lists, from the nodes' own container state (not etcd), every
// running container of a job: node -> container IDs.
func (e *containerEnv) running(tenant, job string) map[string][]string {
	out := map[string][]string{}
	for _, n := range e.c.nodes {
		rt, err := e.runtimeOf(n)
		if err != nil {
			e.t.Fatalf("runtime of %s: %v", n.name, err)
		}
		ctx, cancel := ctxT(5 * time.Second)
		states, _ := rt.List(ctx)
		cancel()
		for _, st := range states {
			if st.Status == runtime.StatusRunning && st.Labels["berth.tenant"] == tenant && st.Labels["berth.job"] == job {
				out[n.name] = append(out[n.name], st.ID)
			}
		}
	}
	return out
}

// checkTenantQuota reads the tenant's cgroup limits on a node (the test's
// --cgroup-parent puts them under berth-test-PID/NODE/tenants/TENANT).
func checkTenantQuota(node, tenant string, memBytes, cpuMillis int64) error {
	rel := fmt.Sprintf("berth-test-%d/%s/tenants/%s", os.Getpid(), node, tenant)
	type probe struct{ file, want string }
	var probes []probe
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil { // v1
		probes = []probe{
			{filepath.Join("/sys/fs/cgroup/memory", rel, "memory.limit_in_bytes"), fmt.Sprint(memBytes)},
			{filepath.Join("/sys/fs/cgroup/cpu", rel, "cpu.cfs_quota_us"), fmt.Sprint(cpuMillis * 100)},
		}
	} else {
		probes = []probe{
			{filepath.Join("/sys/fs/cgroup", rel, "memory.max"), fmt.Sprint(memBytes)},
			{filepath.Join("/sys/fs/cgroup", rel, "cpu.max"), fmt.Sprintf("%d 100000", cpuMillis*100)},
		}
	}
	for _, p := range probes {
		data, err := os.ReadFile(p.file)
		if err != nil {
			return fmt.Errorf("tenant quota on %s: %w", node, err)
		}
		if got := strings.TrimSpace(string(data)); got != p.want {
			return fmt.Errorf("tenant quota on %s: %s = %q, want %q", node, p.file, got, p.want)
		}
	}
	return nil
}

// pids maps node n's running containers to their process IDs.
func (e *containerEnv) pids(n *testNode) map[string]int {
	rt, err := e.runtimeOf(n)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := ctxT(5 * time.Second)
	defer cancel()
	states, err := rt.List(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, st := range states {
		if st.Status == runtime.StatusRunning {
			out[st.ID] = st.Pid
		}
	}
	return out
}

// duplicates reports replicas with more than one running container.
func duplicates(running map[string][]string) []string {
	seen := map[string]int{}
	for _, ids := range running {
		for _, id := range ids {
			r, _, err := jobs.ParseContainerID(id)
			if err == nil {
				seen[r.String()]++
			}
		}
	}
	var dups []string
	for r, n := range seen {
		if n > 1 {
			dups = append(dups, r)
		}
	}
	slices.Sort(dups)
	return dups
}

func count(running map[string][]string) int {
	total := 0
	for _, ids := range running {
		total += len(ids)
	}
	return total
}

func TestContainersAcrossCluster(t *testing.T) {
	e := newContainerEnv(t)
	c := e.c
	step := stepTimer(t)

	done := step("3 agents")
	n1, a1 := e.node(1)
	n2, a2 := e.node(2)
	n3, a3 := e.node(3)
	c.start(n1, append(a1, "--voters", "3")...)
	c.waitReady(n1, 30*time.Second)
	token := c.token(n1)
	join := []string{"--join", n1.api, "--token", token}
	c.start(n2, append(a2, join...)...)
	c.start(n3, append(a3, join...)...)
	c.waitReady(n2, 60*time.Second)
	c.waitReady(n3, 60*time.Second)
	e.issue(n1, "--admin")
	e.issue(n1, "--tenant", "acme")
	e.issue(n1, "--tenant", "globex")
	done()

	done = step("tenants and image push")
	e.mustCtl("admin", "tenant", "add", "acme", "--cpu", "2", "--memory", "1Gi")
	e.mustCtl("admin", "tenant", "add", "globex")
	// globex stands for a tenant added before the registry grants existed:
	// the agent restart below completes its role (issue 14, library/).
	e.makeOldTenant(t, n1, "globex")
	tarball := filepath.Join(t.TempDir(), "busybox.tar")
	imagetest.WriteTarball(t, imagetest.BusyboxImage(t, map[string]string{"/etc/motd": "berth test image\n"}), tarball, "busybox:test")
	out := e.mustCtl("acme", "image", "push", tarball, "busybox:test")
	if !strings.Contains(out, "berth.local/busybox@sha256:") {
		t.Fatalf("image push said %q", out)
	}
	done()

	done = step("jobs spread and running")
	// web publishes a host port, so its 2 replicas need 2 different
	// nodes; spread has 3 replicas and no port: one per node.
	webFile := filepath.Join(t.TempDir(), "web.yaml")
	writeFile(t, webFile, `name: web
image: berth.local/busybox:test
command: ["sh", "-c", "echo started $HOSTNAME; cat /etc/motd; exec httpd -f -p 8080 -h /etc"]
replicas: 2
stop_timeout_seconds: 2
resources:
  cpu: 100m
  memory: 64Mi
ports:
  - container: 8080
    host: 18080
`)
	spreadFile := filepath.Join(t.TempDir(), "spread.yaml")
	writeFile(t, spreadFile, "name: spread\nimage: berth.local/busybox:test\ncommand: [sleep, '100000']\nreplicas: 3\nstop_timeout_seconds: 1\nresources: {cpu: 50m, memory: 16Mi}\n")
	e.mustCtl("acme", "run", "-f", webFile)
	e.mustCtl("acme", "run", "-f", spreadFile)
	waitSpread := func(job string, replicas, nodes int) []jobs.ReplicaStatus {
		var placed []jobs.ReplicaStatus
		eventually(t, 90*time.Second, fmt.Sprintf("%s: %d replicas running on %d nodes", job, replicas, nodes), func() error {
			list, err := e.replicas("acme", "acme", job)
			if err != nil {
				return err
			}
			seen := map[string]bool{}
			for _, r := range list {
				if r.State != jobs.StateRunning {
					return fmt.Errorf("replica %d on %s: %s %s", r.Replica, r.Node, r.State, r.Reason)
				}
				seen[r.Node] = true
			}
			if len(list) != replicas || len(seen) != nodes {
				return fmt.Errorf("%d replicas on %d nodes", len(list), len(seen))
			}
			placed = list
			return nil
		})
		return placed
	}
	web := waitSpread("web", 2, 2)
	for _, r := range web {
		if !strings.HasPrefix(r.IPv4, "10.231.") || !strings.HasPrefix(r.IPv6, "fd00:231:") {
			t.Fatalf("replica %d addresses: IPv4 %q IPv6 %q", r.Replica, r.IPv4, r.IPv6)
		}
	}
	waitSpread("spread", 3, 3)
	done()

	// The port mapping answers on the address of each node running web.
	for _, r := range web {
		n := c.nodes[r.Node]
		hc := httpClient(n)
		var body string
		eventually(t, 20*time.Second, "port 18080 on "+n.name, func() error {
			resp, err := hc.Get("http://" + n.ip + ":18080/motd")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			body = string(data)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s", resp.Status)
			}
			return nil
		})
		if body != "berth test image\n" {
			t.Fatalf("%s:18080/motd = %q", n.name, body)
		}
	}
	logs := e.mustCtl("acme", "logs", "web/1")
	if !strings.Contains(logs, "stdout started web-1") || !strings.Contains(logs, "berth test image") {
		t.Fatalf("logs web/1 = %q", logs)
	}

	// Tenants: globex sees none of acme's jobs and cannot touch them.
	if out, err := e.ctl("globex", "ps", "--tenant", "acme"); err == nil || !strings.Contains(out, "lacks permission") {
		t.Fatalf("globex reading acme's replicas: err=%v out=%q", err, out)
	}
	if out, err := e.ctl("globex", "rm", "web", "--tenant", "acme"); err == nil || !strings.Contains(out, "lacks permission") {
		t.Fatalf("globex removing acme's job: err=%v out=%q", err, out)
	}
	if out, err := e.ctl("globex", "logs", "web/0", "--tenant", "acme"); err == nil {
		t.Fatalf("globex reading acme's logs succeeded: %q", out)
	}
	if out := e.mustCtl("globex", "jobs"); strings.Contains(out, "web") {
		t.Fatalf("globex's jobs list shows acme's job:\n%s", out)
	}

	// The tenant's quota is on its cgroup subtree on every node running
	// its containers (cgroup v1 here: memory.limit_in_bytes and the CFS
	// quota; v2: memory.max and cpu.max).
	for _, r := range web {
		if err := checkTenantQuota(r.Node, "acme", 1<<30, 2000); err != nil {
			t.Fatal(err)
		}
	}

	// Impossible resources: the job says why.
	bigFile := filepath.Join(t.TempDir(), "big.yaml")
	writeFile(t, bigFile, "name: big\nimage: berth.local/busybox:test\ncommand: [sleep, '1000']\nresources: {cpu: 100m, memory: 900Gi}\n")
	e.mustCtl("acme", "run", "-f", bigFile)
	eventually(t, 20*time.Second, "big job unplaceable", func() error {
		out, err := e.ctl("acme", "jobs")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "no node fits") {
			return fmt.Errorf("jobs:\n%s", out)
		}
		return nil
	})
	e.mustCtl("acme", "rm", "big")

	// SIGKILL the agent of a node running a replica: that node's
	// containers go on (their monitors do not need the agent); after the
	// grace period the replica runs elsewhere too; when the agent comes
	// back it stops its now-foreign copy: no duplicates remain.
	// Malformed spec and unknown image: one clear line, or a replica
	// status saying what is wrong.
	badFile := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, badFile, "name: bad\nimage: berth.local/busybox:test\nreplicas: many\n")
	if out, err := e.ctl("acme", "run", "-f", badFile); err == nil || !strings.Contains(out, "bad.yaml:3: replicas") || strings.Count(strings.TrimSpace(out), "\n") > 1 {
		t.Fatalf("malformed job: err=%v out=%q", err, out)
	}
	// A tag that does not exist cannot be pinned: refused at submission.
	ghostFile := filepath.Join(t.TempDir(), "ghost.yaml")
	writeFile(t, ghostFile, "name: ghost\nimage: berth.local/nope:1\ncommand: [sh]\nresources: {cpu: 10m, memory: 8Mi}\n")
	if out, err := e.ctl("acme", "run", "-f", ghostFile); err == nil || !strings.Contains(out, "berth.local/nope:1 not found") {
		t.Fatalf("job with an unknown tag: err=%v out=%q", err, out)
	}
	// A digest nobody has is taken as it is and fails on the node.
	writeFile(t, ghostFile, "name: ghost\nimage: berth.local/nope@sha256:"+strings.Repeat("0", 64)+"\ncommand: [sh]\nresources: {cpu: 10m, memory: 8Mi}\n")
	e.mustCtl("acme", "run", "-f", ghostFile)
	eventually(t, 30*time.Second, "unknown image reported", func() error {
		list, err := e.replicas("acme", "acme", "ghost")
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].State != jobs.StateFailed || !strings.Contains(list[0].Reason, "not found") {
			return fmt.Errorf("ghost replicas: %+v", list)
		}
		return nil
	})
	e.mustCtl("acme", "rm", "ghost")

	// Stats read from the nodes: every running container shows memory.
	var stats struct {
		Items []struct {
			Job         string `json:"job"`
			MemoryBytes uint64 `json:"memory_bytes"`
			Pids        uint64 `json:"pids"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(e.mustCtl("acme", "stats", "-o", "json")), &stats); err != nil {
		t.Fatal(err)
	}
	if len(stats.Items) != 5 {
		t.Fatalf("stats shows %d containers, want 5 (2 web + 3 spread): %+v", len(stats.Items), stats.Items)
	}
	for _, it := range stats.Items {
		if it.MemoryBytes == 0 || it.Pids == 0 {
			t.Fatalf("stats of %s: %+v", it.Job, it)
		}
	}

	// The victim runs a web replica and is not node-1 (berthctl's endpoint).
	victim := c.nodes[web[0].Node]
	if victim == n1 {
		victim = c.nodes[web[1].Node]
	}
	// An agent restart within the grace period adopts its containers:
	// the same processes go on, nothing is started twice.
	var other *testNode
	for _, n := range []*testNode{n2, n3} {
		if n != victim {
			other = n
		}
	}
	done = step("agent restart adopts")
	before := e.pids(other)
	c.kill(other)
	c.start(other, e.argsOf(other)...)
	c.waitReady(other, 60*time.Second)
	time.Sleep(3 * time.Second) // several reconcile rounds
	if after := e.pids(other); !maps.Equal(before, after) || len(after) == 0 {
		t.Fatalf("containers of %s across an agent restart: before %v, after %v", other.name, before, after)
	}
	e.waitTenantRole(t, n1, "globex")
	done()

	done = step("kill an agent; re-placed")
	killed := time.Now()
	c.kill(victim)
	for _, job := range []string{"web", "spread"} {
		if got := e.running("acme", job)[victim.name]; len(got) != 1 {
			rt, _ := e.runtimeOf(victim)
			states, err := rt.List(t.Context())
			for _, st := range states {
				data, _ := os.ReadFile(rt.LogPath(st.ID))
				t.Logf("log of %s:\n%s", st.ID, data)
			}
			t.Fatalf("after SIGKILL of its agent, %s runs %v of %s, want its 1 container still running; states %+v %v", victim.name, got, job, states, err)
		}
	}
	eventually(t, 60*time.Second, "replicas of "+victim.name+" running elsewhere", func() error {
		for _, job := range []string{"web", "spread"} {
			list, err := e.replicas("acme", "acme", job)
			if err != nil {
				return err
			}
			for _, r := range list {
				if r.Node == victim.name || r.State != jobs.StateRunning {
					return fmt.Errorf("%s replica %d on %s: %s", job, r.Replica, r.Node, r.State)
				}
			}
		}
		return nil
	})
	t.Logf("replicas of the killed node running elsewhere %s after SIGKILL (grace %s, node TTL %s)", time.Since(killed).Round(10*time.Millisecond), testGrace, testTTL)
	done()

	done = step("agent back; no duplicates")
	c.start(victim, append(e.argsOf(victim), "--containers=true")...)
	c.waitReady(victim, 60*time.Second)
	eventually(t, 30*time.Second, "no duplicate replicas", func() error {
		for job, want := range map[string]int{"web": 2, "spread": 3} {
			r := e.running("acme", job)
			if d := duplicates(r); len(d) > 0 {
				return fmt.Errorf("%s: duplicates %v in %v", job, d, r)
			}
			if count(r) != want {
				return fmt.Errorf("%s: %d running, want %d: %v", job, count(r), want, r)
			}
		}
		return nil
	})
	done()

	// Usage: the tenant's CPU-seconds and memory GiB-hours from cgroup
	// accounting, summed over the nodes.
	eventually(t, 40*time.Second, "usage accounted", func() error {
		var u struct {
			Total jobs.Usage `json:"total"`
		}
		out, err := e.ctl("acme", "usage", "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &u); err != nil {
			return err
		}
		if u.Total.CPUSeconds <= 0 || u.Total.MemoryGiBHours <= 0 {
			return fmt.Errorf("usage %+v", u.Total)
		}
		return nil
	})

	done = step("stop, rm")
	e.mustCtl("acme", "stop", "web")
	e.mustCtl("acme", "rm", "spread")
	eventually(t, 30*time.Second, "stopped and removed jobs have no containers", func() error {
		for _, job := range []string{"web", "spread"} {
			if r := e.running("acme", job); count(r) != 0 {
				return fmt.Errorf("%s still running: %v", job, r)
			}
		}
		return nil
	})
	e.mustCtl("acme", "rm", "web")
	done()

	e.registryScenario(t)
}

// argsOf rebuilds the container flags of a node (for a restart).
func (e *containerEnv) argsOf(n *testNode) []string {
	var i int
	fmt.Sscanf(n.name, "node-%d", &i)
	_, args := e.nodeArgs(i)
	return args
}

func (e *containerEnv) nodeArgs(i int) (string, []string) {
	name := fmt.Sprintf("node-%d", i)
	ip := fmt.Sprintf("127.0.0.%d", 50+i)
	return name, []string{
		"--containers=true", "--labels", fmt.Sprintf("zone=z%d", i),
		"--bridge", fmt.Sprintf("bt%d", i), "--bridge-subnet", fmt.Sprintf("10.231.%d.0/24", 50+i),
		"--bridge-subnet6", fmt.Sprintf("fd00:231:%d::/64", 50+i), "--port-bind-ip", ip,
		"--cgroup-parent", fmt.Sprintf("berth-test-%d/%s", os.Getpid(), name),
		"--reschedule-grace", testGrace.String(),
		"--netns-dir", filepath.Join(e.c.root, name+"-netns"),
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
