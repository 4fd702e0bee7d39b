package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/images/imagetest"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
)

// The container scenarios run jobs of netcheck (testdata/netcheck), a
// static Go program built here, packed with busybox (its forkbomb children
// are busybox's single-threaded sleep) into an image that is pushed into
// the cluster registry as the shared library/netcheck: every tenant's job
// names it berth.local/library/netcheck:e2e. Nothing is pulled from the
// internet.
const netcheckRepo = "library/netcheck:e2e"

// netcheckImage builds, packs and pushes the image once per cluster and
// returns the reference jobs use.
func (e *clusterEnv) netcheckImage(t *testing.T) string {
	t.Helper()
	if e.netcheck != "" {
		return e.netcheck
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "netcheck")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./testdata/netcheck")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build netcheck: %v: %s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Image(t, imagetest.BusyboxLayer(t),
		imagetest.FilesLayer(t, map[string]string{"/bin/netcheck": string(data)}, imagetest.Mode("/bin/netcheck", 0o755)))
	tarball := filepath.Join(dir, "netcheck.tar")
	imagetest.WriteTarball(t, img, tarball, "berth.local/"+netcheckRepo)
	start := time.Now()
	out := e.ctl(t, "image", "push", tarball, netcheckRepo)
	t.Logf("measured: netcheck image (%.1f MiB binary) pushed in %.1f s: %s", float64(len(data))/(1<<20), time.Since(start).Seconds(), strings.TrimSpace(out))
	digest := mustDigest(t, img)
	if !strings.Contains(out, digest) {
		t.Fatalf("image push printed %q, want the image's digest %s", out, digest)
	}
	e.netcheck = "berth.local/" + netcheckRepo
	return e.netcheck
}

func mustDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// testJob is the part of a job file the scenarios vary.
type testJob struct {
	name, tenant string
	args         []string // netcheck's arguments
	replicas     int
	memory       string // default 64Mi
	cpu          string // default 50m
	pids         int    // 0: the runtime's default
	restart      string // default always
	ports        []jobs.Port
	volumes      []jobs.Volume
}

func (j testJob) yaml(image string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nimage: %s\ncommand: [/bin/netcheck", j.name, image)
	for _, a := range j.args {
		fmt.Fprintf(&b, ", %q", a)
	}
	b.WriteString("]\n")
	replicas, memory, restart, cpu := j.replicas, j.memory, j.restart, j.cpu
	if cpu == "" {
		cpu = "50m"
	}
	if replicas == 0 {
		replicas = 1
	}
	if memory == "" {
		memory = "64Mi"
	}
	if restart == "" {
		restart = "always"
	}
	fmt.Fprintf(&b, "replicas: %d\nrestart: %s\nstop_timeout_seconds: 2\nresources: {cpu: %s, memory: %s", replicas, restart, cpu, memory)
	if j.pids > 0 {
		fmt.Fprintf(&b, ", pids: %d", j.pids)
	}
	b.WriteString("}\n")
	if len(j.volumes) > 0 {
		b.WriteString("volumes:\n")
		for _, v := range j.volumes {
			fmt.Fprintf(&b, "  - {name: %s, path: %s", v.Name, v.Path)
			if v.Replicas > 0 {
				fmt.Fprintf(&b, ", replicas: %d, size: %d", v.Replicas, v.SizeBytes)
			}
			b.WriteString("}\n")
		}
	}
	if len(j.ports) > 0 {
		b.WriteString("ports:\n")
		for _, p := range j.ports {
			fmt.Fprintf(&b, "  - {container: %d, host: %d, protocol: %s}\n", p.Container, p.Host, p.Protocol)
		}
	}
	return b.String()
}

// submit runs the job as its tenant (the admin certificate with --tenant)
// and removes it when the scenario ends, so the scenarios after this one
// (rollouts drain nodes) find no containers of it.
func (e *clusterEnv) submit(t *testing.T, j testJob) {
	t.Helper()
	file := filepath.Join(t.TempDir(), j.name+".yaml")
	if err := os.WriteFile(file, []byte(j.yaml(e.netcheckImage(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	out := e.ctl(t, "--tenant", j.tenant, "run", file)
	t.Logf("%s", strings.TrimSpace(out))
	t.Cleanup(func() {
		if _, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", j.tenant, "rm", j.name); err != nil {
			t.Errorf("remove job %s/%s: %v", j.tenant, j.name, err)
		}
	})
}

// addTenant adds a tenant (admin); adding an existing one only resets its
// quota, so a rerun on a kept cluster works.
func (e *clusterEnv) addTenant(t *testing.T, name string) {
	t.Helper()
	e.ctl(t, "tenant", "add", name)
}

// replicas lists a job's replica statuses (berthctl ps -o json).
func (e *clusterEnv) replicas(tenant, job string) ([]jobs.ReplicaStatus, error) {
	out, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", tenant, "ps", job, "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []jobs.ReplicaStatus `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("berthctl ps -o json: %w", err)
	}
	return list.Items, nil
}

// waitReplicas polls the job's replicas every second until cond accepts
// them or timeout passes; it fails the test then, with the last list.
func (e *clusterEnv) waitReplicas(t *testing.T, tenant, job string, timeout time.Duration, cond func([]jobs.ReplicaStatus) error) []jobs.ReplicaStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		list, err := e.replicas(tenant, job)
		if err == nil {
			if err = cond(list); err == nil {
				return list
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s/%s after %s: %v\nreplicas: %s", tenant, job, timeout, err, replicaSummary(list))
		}
		select {
		case <-e.ctx.Done():
			t.Fatalf("job %s/%s: %v (last: %v)", tenant, job, e.ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

func replicaSummary(list []jobs.ReplicaStatus) string {
	var parts []string
	for _, r := range list {
		exit := "-"
		if r.ExitCode != nil {
			exit = strconv.Itoa(*r.ExitCode)
		}
		parts = append(parts, fmt.Sprintf("[%d %s %s id=%s ip=%s restarts=%d exit=%s reason=%q]", r.Replica, r.Node, r.State, r.ContainerID, r.IPv4, r.Restarts, exit, r.Reason))
	}
	return strings.Join(parts, " ")
}

// allRunning accepts n replicas, each running with an address.
func allRunning(n int) func([]jobs.ReplicaStatus) error {
	return func(list []jobs.ReplicaStatus) error {
		if len(list) != n {
			return fmt.Errorf("%d replicas listed, want %d", len(list), n)
		}
		for _, r := range list {
			if r.State != jobs.StateRunning || r.ContainerID == "" {
				return fmt.Errorf("replica %d is %s (%s)", r.Replica, r.State, r.Reason)
			}
		}
		return nil
	}
}

// finished accepts one replica that ran and ended (restart: never).
func finished(list []jobs.ReplicaStatus) error {
	if len(list) != 1 {
		return fmt.Errorf("%d replicas listed, want 1", len(list))
	}
	if r := list[0]; r.ExitCode == nil || (r.State != jobs.StateExited && r.State != jobs.StateFailed) {
		return fmt.Errorf("replica 0 is %s (%s), not ended", r.State, r.Reason)
	}
	return nil
}

// nodeIndex is the harness's index of node-N.
func nodeIndex(t *testing.T, name string) int {
	t.Helper()
	i, err := strconv.Atoi(strings.TrimPrefix(name, "node-"))
	if err != nil || !strings.HasPrefix(name, "node-") {
		t.Fatalf("node name %q is not node-N", name)
	}
	return i
}

// shellQuote quotes s for the node's sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// containerPidScript prints the pid of container id's init as its shim
// recorded it in state.json.
func containerPidScript(id string) string {
	return fmt.Sprintf(`sed -n 's/^ *"pid": *\([0-9][0-9]*\).*/\1/p' /var/lib/berth/containers/%s/state.json`, id)
}

// inContainer runs netcheck with args inside a running container on node
// (its mount, UTS, network and pid namespaces, entered with the node's
// nsenter: the image has no shell for an exec API berth does not have
// anyway). It returns netcheck's output and its error, whose text holds
// netcheck's stderr.
func (e *clusterEnv) inContainer(ctx context.Context, node int, id string, args ...string) (string, error) {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	script := fmt.Sprintf(`pid=$(%s); [ -n "$pid" ] || { echo "no pid for %s" >&2; exit 125; }; exec nsenter -t "$pid" -m -u -n -p -r -w /bin/netcheck %s`,
		containerPidScript(id), id, strings.Join(quoted, " "))
	out, err := e.c.SSH(ctx, node, script)
	if err != nil {
		// The ssh error repeats the script; netcheck's own line says it.
		msg := err.Error()
		if i := strings.LastIndex(msg, "netcheck "+args[0]+": "); i >= 0 {
			msg = msg[i:]
		}
		return string(out), fmt.Errorf("in %s on node-%d: %s", id, node, msg)
	}
	return string(out), nil
}

// keyValues reads netcheck's "k=v k=v" answer.
func keyValues(s string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

// hostOf is the address part of "ip:port".
func hostOf(addr string) string {
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}

// ---- containers-cgroup ----

// statsItem is one row of berthctl stats -o json.
type statsItem struct {
	Node        string  `json:"node"`
	ID          string  `json:"id"`
	Job         string  `json:"job"`
	CPUCores    float64 `json:"cpu_cores"`
	MemoryBytes uint64  `json:"memory_bytes"`
	MemoryLimit uint64  `json:"memory_limit_bytes"`
	Pids        uint64  `json:"pids"`
}

// usageReport is berthctl usage -o json.
type usageReport struct {
	Nodes []struct {
		Node string `json:"node"`
		jobs.Usage
	} `json:"nodes"`
	Total jobs.Usage `json:"total"`
}

func (e *clusterEnv) usage(tenant string) (usageReport, error) {
	var u usageReport
	out, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", tenant, "usage", "-o", "json")
	if err != nil {
		return u, err
	}
	return u, json.Unmarshal(out, &u)
}

// poll calls check every second until it returns nil or timeout passes,
// and returns the last error (nil on success).
func (e *clusterEnv) poll(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			return err
		}
		select {
		case <-e.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// scenarioContainersCgroup: containers on berth nodes under cgroup v2 and
// systemd. A job over its memory is OOM-killed and berthctl ps says so; a
// fork bomb stops at its pids limit and the node stays fine; stats and
// usage show real figures; an agent restart adopts a running container
// (same process, same container, one replica). It leaves no job behind.
func scenarioContainersCgroup(t *testing.T, e *clusterEnv) {
	const tenant = "cg"
	e.addTenant(t, tenant)
	e.netcheckImage(t)

	// A server to measure, first: its tenant's usage is then written at
	// once (the first figure), and again when the memory figure leaves zero.
	// The three jobs go in together: their pulls and starts overlap
	// (each takes 20-60 s under emulation).
	const pidsLimit = 48
	start := time.Now()
	e.submit(t, testJob{name: "srv", tenant: tenant, args: []string{"serve"}})
	e.submit(t, testJob{name: "hog", tenant: tenant, args: []string{"hog"}, memory: "48Mi", restart: jobs.RestartNever})
	e.submit(t, testJob{name: "forkbomb", tenant: tenant, args: []string{"forkbomb"}, memory: "128Mi", pids: pidsLimit, restart: jobs.RestartNever})
	srv := e.waitReplicas(t, tenant, "srv", 5*time.Minute, allRunning(1))[0]
	t.Logf("measured: srv running on %s %.1f s after berthctl run (pull and start)", srv.Node, time.Since(start).Seconds())
	srvNode := nodeIndex(t, srv.Node)

	var first usageReport
	if err := e.poll(2*time.Minute, func() (err error) {
		if first, err = e.usage(tenant); err == nil && len(first.Nodes) == 0 {
			err = fmt.Errorf("no usage published yet")
		}
		return err
	}); err != nil {
		t.Fatalf("usage of tenant %s: %v", tenant, err)
	}
	t.Logf("usage, first reading: %+v", first)

	// stats: CPU needs load in its one-second window, so a loop of
	// requests runs inside the container meanwhile (the server's CPU is
	// what is measured: nsenter does not join the container's cgroup).
	loadCtx, stopLoad := context.WithCancel(e.ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		out, err := e.inContainer(loadCtx, srvNode, srv.ContainerID, "get", "-n", "20000", "http://127.0.0.1:8080/")
		if loadCtx.Err() == nil {
			t.Logf("load on srv ended early: %v: %s", err, out)
		}
	}()
	var row statsItem
	err := e.poll(90*time.Second, func() error {
		out, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", tenant, "stats", "-o", "json")
		if err != nil {
			return err
		}
		var list struct{ Items []statsItem }
		if err := json.Unmarshal(out, &list); err != nil {
			return err
		}
		for _, r := range list.Items {
			if r.ID == srv.ContainerID {
				row = r
				if r.CPUCores > 0 && r.MemoryBytes > 0 && r.Pids > 0 {
					return nil
				}
				return fmt.Errorf("stats of srv: %+v", r)
			}
		}
		return fmt.Errorf("srv (%s) not in berthctl stats: %s", srv.ContainerID, out)
	})
	stopLoad()
	<-loadDone
	if err != nil {
		t.Errorf("berthctl stats shows no real figures for a running server: %v", err)
	} else {
		t.Logf("measured: stats of srv under load: cpu %.3f cores, memory %d KiB of %d KiB, %d pids", row.CPUCores, row.MemoryBytes>>10, row.MemoryLimit>>10, row.Pids)
		if row.MemoryLimit != 64<<20 {
			t.Errorf("stats memory limit %d, want the job's 64Mi (%d)", row.MemoryLimit, 64<<20)
		}
		if row.Node != srv.Node {
			t.Errorf("stats says srv runs on %s, ps says %s", row.Node, srv.Node)
		}
	}

	// Out of memory: the kernel kills it inside its own limit, and the
	// replica says why.
	hog := e.waitReplicas(t, tenant, "hog", 5*time.Minute, finished)[0]
	t.Logf("measured: hog ended %.1f s after berthctl run: %s", time.Since(start).Seconds(), replicaSummary([]jobs.ReplicaStatus{hog}))
	if *hog.ExitCode != 137 || hog.Reason != "killed: out of memory (raise resources.memory)" {
		t.Errorf("hog: exit %d, reason %q; want 137 and %q", *hog.ExitCode, hog.Reason, "killed: out of memory (raise resources.memory)")
	}
	if table := e.ctl(t, "--tenant", tenant, "ps", "hog"); !regexp.MustCompile(`(?m)^hog\s+0\s+\S+\s+\S+\s+0\s+137\s.*killed: out of memory \(raise resources\.memory\)`).MatchString(table) {
		t.Errorf("berthctl ps does not show the OOM kill:\n%s", table)
	}
	if logs, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", tenant, "logs", "hog", "--tail", "3"); err == nil {
		t.Logf("hog's last lines:\n%s", logs)
	}

	// A fork bomb stops at its pids limit; the node stays usable.
	fb := e.waitReplicas(t, tenant, "forkbomb", 5*time.Minute, finished)[0]
	logs, err := e.c.Berthctl(e.ctx, e.berthctl, "--tenant", tenant, "logs", "forkbomb")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`forked=(\d+) err="([^"]*)" pids.current=(\S+) pids.max=(\S+)`).FindStringSubmatch(string(logs))
	if m == nil {
		t.Fatalf("forkbomb printed no count (exit %d, %s):\n%s", *fb.ExitCode, fb.Reason, logs)
	}
	forked, _ := strconv.Atoi(m[1])
	t.Logf("measured: forkbomb on %s started %d children before %q (pids.current %s, pids.max %s), %.1f s after berthctl run", fb.Node, forked, m[2], m[3], m[4], time.Since(start).Seconds())
	if *fb.ExitCode != 0 || forked == 0 || forked >= pidsLimit || !strings.Contains(m[2], "resource temporarily unavailable") {
		t.Errorf("forkbomb: exit %d, %d children, error %q; want exit 0, 1..%d children, EAGAIN", *fb.ExitCode, forked, m[2], pidsLimit-1)
	}
	if m[4] != "-" && m[4] != strconv.Itoa(pidsLimit) {
		t.Errorf("the container's pids.max is %s, want the job's %d", m[4], pidsLimit)
	}
	if out, err := e.c.SSH(e.ctx, nodeIndex(t, fb.Node), "systemctl is-system-running || true; cat /proc/loadavg"); err != nil {
		t.Errorf("%s after the fork bomb: %v: %s", fb.Node, err, out)
	} else {
		t.Logf("%s after the fork bomb: %s", fb.Node, strings.Join(strings.Fields(string(out)), " "))
	}
	if _, err := e.c.WaitNodes(e.ctx, e.berthctl, e.c.AllReady); err != nil {
		t.Fatal(err)
	}

	// Agent restart: the container keeps its process and is adopted.
	e.agentRestartKeepsContainer(t, tenant, "srv")

	// Usage grows: the restarted agent writes its figures again at once,
	// and another write is due when a figure leaves zero; a longer wait
	// would be the 5-minute rewrite.
	var second usageReport
	if err := e.poll(6*time.Minute, func() (err error) {
		if second, err = e.usage(tenant); err == nil && !(second.Total.CPUSeconds > first.Total.CPUSeconds && second.Total.MemoryGiBHours > first.Total.MemoryGiBHours) {
			err = fmt.Errorf("usage did not grow: first %+v, now %+v", first.Total, second.Total)
		}
		return err
	}); err != nil {
		t.Errorf("berthctl usage: %v", err)
	} else {
		t.Logf("measured: usage of tenant %s grew from %.3f CPU-s, %.6f GiB-h to %.3f CPU-s, %.6f GiB-h", tenant,
			first.Total.CPUSeconds, first.Total.MemoryGiBHours, second.Total.CPUSeconds, second.Total.MemoryGiBHours)
	}
}

// containerProcs reads, on the node, what identifies container id's
// process beyond doubt: init's pid and start time (a reused pid has
// another), the shim's pid, init's cgroup and every pid in that cgroup,
// and how many container directories the replica has there.
func (e *clusterEnv) containerProcs(node int, id, replicaPrefix string) (map[string]string, error) {
	script := fmt.Sprintf(`set -e
pid=$(%s)
echo "pid=$pid"
echo "start=$(cut -d' ' -f22 /proc/$pid/stat)"
echo "shim=$(cat /var/lib/berth/containers/%s/shim.pid)"
cg=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
echo "cgroup=$cg"
echo "procs=$(sort -n /sys/fs/cgroup$cg/cgroup.procs | tr '\n' ,)"
echo "dirs=$(ls /var/lib/berth/containers | grep -c '^%s' || true)"
`, containerPidScript(id), id, regexp.QuoteMeta(replicaPrefix))
	out, err := e.c.SSH(e.ctx, node, script)
	if err != nil {
		return nil, fmt.Errorf("container %s on node-%d: %w: %s", id, node, err, out)
	}
	kv := keyValues(string(out))
	if kv["pid"] == "" || !strings.HasSuffix(kv["cgroup"], "/"+id) || !strings.Contains(","+kv["procs"], ","+kv["pid"]+",") {
		return nil, fmt.Errorf("container %s on node-%d: init not found in its own cgroup: %s", id, node, out)
	}
	return kv, nil
}

// etcdTimeline records, from now until stop is called, when keys under
// the given prefixes were put or deleted, relative to its start: what
// the scheduler saw of a node while something happened to it.
func (e *clusterEnv) etcdTimeline(prefixes ...string) (stop func() []string) {
	ctx, cancel := context.WithCancel(e.ctx)
	start := time.Now()
	var mu sync.Mutex
	var lines []string
	var wg sync.WaitGroup
	for _, p := range prefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for resp := range e.cli.Watch(ctx, p, clientv3.WithPrefix()) {
				for _, ev := range resp.Events {
					mu.Lock()
					lines = append(lines, fmt.Sprintf("%6.1f s %s %s", time.Since(start).Seconds(), ev.Type, ev.Kv.Key))
					mu.Unlock()
				}
			}
		}()
	}
	return func() []string {
		cancel()
		wg.Wait()
		return lines
	}
}

// agentRestartKeepsContainer restarts berth-agent on the node running the
// job's replica 0 and checks that the container outlives it: same
// processes in the same cgroup, same container ID, restarts unchanged,
// still one replica; and that the new agent took it over (it rewrites the
// replica's status once it has read the assignments).
func (e *clusterEnv) agentRestartKeepsContainer(t *testing.T, tenant, job string) {
	t.Helper()
	before := e.waitReplicas(t, tenant, job, time.Minute, allRunning(1))[0]
	node := nodeIndex(t, before.Node)
	// Every generation of replica 0 is named TENANT.JOB.0.gN.
	prefix := fmt.Sprintf("%s.%s.0.g", tenant, job)
	procs, err := e.containerProcs(node, before.ContainerID, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if procs["dirs"] != "1" {
		t.Errorf("%s container directories of %s/%s on node-%d before the restart, want 1", procs["dirs"], tenant, job, node)
	}
	statusKey := jobs.StatusKey(tenant, job, 0)
	resp, err := e.cli.Get(e.ctx, statusKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("status of %s/%s/0: %v", tenant, job, err)
	}
	statusRev := resp.Kvs[0].ModRevision
	mainPID := func() string {
		out, err := e.c.SSH(e.ctx, node, "systemctl show -p MainPID --value berth-agent")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	agentBefore := mainPID()
	timeline := e.etcdTimeline(nodedoc.NodeKey(before.Node), jobs.AssignPrefix)
	start := time.Now()
	// Type=notify: restart returns once the new agent said READY=1.
	out, err := e.c.SSH(e.ctx, node, "systemctl restart berth-agent")
	if err != nil {
		timeline()
		t.Fatalf("restart berth-agent on node-%d: %v: %s", node, err, out)
	}
	t.Logf("measured: systemctl restart berth-agent on node-%d took %.1f s", node, time.Since(start).Seconds())
	if agentAfter := mainPID(); agentAfter == agentBefore || agentAfter == "0" {
		timeline()
		t.Fatalf("berth-agent's main pid %s before, %s after the restart", agentBefore, agentAfter)
	}
	// The new agent's status write proves it reconciled this replica.
	var after jobs.ReplicaStatus
	err = e.poll(2*time.Minute, func() error {
		resp, err := e.cli.Get(e.ctx, statusKey)
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision == statusRev {
			return fmt.Errorf("the replica's status was not written again after the agent restart")
		}
		return json.Unmarshal(resp.Kvs[0].Value, &after)
	})
	events := timeline()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: the replica's status written again %.1f s after the restart began", time.Since(start).Seconds())
	list := e.waitReplicas(t, tenant, job, time.Minute, allRunning(1))
	if got := list[0]; got.ContainerID != before.ContainerID || got.Restarts != before.Restarts || got.Node != before.Node || after.ContainerID != before.ContainerID {
		t.Errorf("the replica was not adopted by the restarted agent: now %s; before %s\netcd during the restart (node document, assignments):\n%s",
			replicaSummary(list), replicaSummary([]jobs.ReplicaStatus{before}), strings.Join(events, "\n"))
		return
	}
	again, err := e.containerProcs(node, before.ContainerID, prefix)
	if err != nil {
		t.Errorf("after the agent restart: %v", err)
		return
	}
	for _, k := range []string{"pid", "start", "shim", "cgroup", "procs", "dirs"} {
		if again[k] != procs[k] {
			t.Errorf("container %s: %s was %q before the agent restart, %q after", before.ContainerID, k, procs[k], again[k])
		}
	}
	t.Logf("container %s kept pid %s (shim %s, cgroup %s) across the agent restart", before.ContainerID, procs["pid"], procs["shim"], procs["cgroup"])
}
