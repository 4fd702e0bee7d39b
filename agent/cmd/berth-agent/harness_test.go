package main

// Shared harness of the multi-process tests: it builds berth-agent, starts
// real agent processes (on 127.0.0.x, or inside network namespaces) and
// talks to their etcd with the nodes' own certificates.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/pki"
)

// Timings of the multi-process test: short raft ticks and a short node TTL
// keep the whole scenario well under a minute and a half.
const (
	testTTL       = 3 * time.Second
	testDeadAfter = 60 * time.Second // longer than the test: no self-healing surprises
)

type testNode struct {
	name, ip string
	netns    string // network namespace it runs in; "" = the test's own
	// netOnly enters only netns's network namespace (nsenter --net):
	// ip netns exec also remounts /sys, which hides the cgroup mounts
	// that containers need.
	netOnly                    bool
	peer, client, api, metrics string
	dir                        string
	logPath                    string
	cmd                        *exec.Cmd
	done                       chan error
}

type testCluster struct {
	t     *testing.T
	bin   string
	root  string
	nodes map[string]*testNode
}

func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berth-agent")
	start := time.Now()
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build berth-agent: %v\n%s", err, out)
	}
	t.Logf("built berth-agent in %s", time.Since(start).Round(time.Millisecond))
	return bin
}

func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("free port on %s: %v", ip, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (c *testCluster) newNode(name, ip string) *testNode {
	var ports [4]int
	for i := range ports {
		ports[i] = freePort(c.t, ip)
	}
	return c.addNode(name, ip, "", ports)
}

// newNodeIn places a node in network namespace ns, where the node is the
// only user of ip: the standard ports are free there.
func (c *testCluster) newNodeIn(ns, name, ip string) *testNode {
	return c.addNode(name, ip, ns, [4]int{2380, 2379, 7480, 7481})
}

// addNode registers a node; ports are peer, client, api and metrics.
func (c *testCluster) addNode(name, ip, ns string, ports [4]int) *testNode {
	u := func(scheme string, port int) string {
		return scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(port))
	}
	n := &testNode{
		name: name, ip: ip, netns: ns,
		peer: u("https", ports[0]), client: u("https", ports[1]), api: u("https", ports[2]), metrics: u("http", ports[3]),
		dir:     filepath.Join(c.root, name),
		logPath: filepath.Join(c.root, name+".log"),
	}
	c.nodes[name] = n
	return n
}

func (c *testCluster) args(n *testNode, extra ...string) []string {
	return append([]string{
		"--name", n.name, "--data-dir", n.dir,
		"--peer-url", n.peer, "--client-url", n.client, "--api-url", n.api, "--metrics-url", n.metrics,
		"--heartbeat-interval", "50ms", "--election-timeout", "500ms",
		"--node-ttl", testTTL.String(), "--dead-after", testDeadAfter.String(),
		"--log-level", "debug",
		// Containers only where a test asks for them (--containers=true
		// later on the command line wins); state never in /var/lib/berth.
		"--containers=false", "--state-dir", filepath.Join(c.root, n.name+"-state"),
	}, extra...)
}

func (c *testCluster) start(n *testNode, extra ...string) {
	c.t.Helper()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.bin, c.args(n, extra...)...)
	if n.netns != "" {
		// ip netns exec execs the agent: cmd.Process is the agent itself.
		cmd = exec.Command("ip", append([]string{"netns", "exec", n.netns, c.bin}, c.args(n, extra...)...)...)
		if n.netOnly {
			cmd = exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + n.netns, "--", c.bin}, c.args(n, extra...)...)...)
		}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "JOURNAL_STREAM=") // never log to the host journal
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", n.name, err)
	}
	n.cmd, n.done = cmd, make(chan error, 1)
	go func() { n.done <- cmd.Wait(); logf.Close() }()
}

func (c *testCluster) kill(n *testNode) {
	c.t.Helper()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

func (c *testCluster) stopAll() {
	for _, n := range c.nodes {
		if n.cmd != nil {
			_ = n.cmd.Process.Signal(syscall.SIGKILL)
			<-n.done
			n.cmd = nil
		}
	}
}

func (c *testCluster) dumpLogs() {
	for _, n := range c.nodes {
		data, _ := os.ReadFile(n.logPath)
		// The agent's own lines (slog text) first: etcd's JSON warnings
		// (a refused write each, under NOSPACE) would bury them.
		var own, etcd []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "{") {
				etcd = append(etcd, l)
			} else if l != "" {
				own = append(own, l)
			}
		}
		c.t.Logf("---- %s (last agent lines)\n%s", n.name, strings.Join(lastN(own, 60), "\n"))
		c.t.Logf("---- %s (last etcd lines)\n%s", n.name, strings.Join(lastN(etcd, 10), "\n"))
	}
}

func lastN(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// waitReady polls /readyz until it answers 200 or the node's process ends.
func (c *testCluster) waitReady(n *testNode, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-n.done:
			n.done <- err
			c.t.Fatalf("%s exited before ready: %v", n.name, err)
		default:
		}
		resp, err := httpClient(n).Get(n.metrics + "/readyz")
		if err == nil {
			body := make([]byte, 64)
			k, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return strings.TrimSpace(string(body[:k]))
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("%s not ready within %s", n.name, timeout)
	return ""
}

// token reads the join token a bootstrapped node saved in its data dir.
func (c *testCluster) token(n *testNode) string {
	c.t.Helper()
	text, err := os.ReadFile(filepath.Join(n.dir, "token"))
	if err != nil {
		c.t.Fatal(err)
	}
	token := strings.TrimSpace(string(text))
	if _, err := pki.ParseToken(token); err != nil {
		c.t.Fatalf("token file: %v", err)
	}
	return token
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < timeout {
		if last = cond(); last == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, last)
	return 0
}

func client(t *testing.T, endpoints []string, certFile, keyFile, caFile string, opts ...grpc.DialOption) *clientv3.Client {
	t.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 3 * time.Second, Logger: zap.NewNop(), DialOptions: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// nodeClient is an etcd client with n's certificate that, like n itself,
// reaches the endpoints from n's network namespace.
func nodeClient(t *testing.T, n *testNode, endpoints []string) *clientv3.Client {
	p := filepath.Join(n.dir, "pki")
	var opts []grpc.DialOption
	if n.netns != "" {
		dial := netnsDialer(n.netns)
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}))
	}
	return client(t, endpoints, filepath.Join(p, "node.crt"), filepath.Join(p, "node.key"), filepath.Join(p, "ca.crt"), opts...)
}

// httpClient reaches n's HTTP endpoints from n's network namespace.
func httpClient(n *testNode) *http.Client {
	if n.netns == "" {
		return http.DefaultClient
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: netnsDialer(n.netns)}}
}

// netnsDialer dials from network namespace ns (a name under /var/run/netns)
// while the test process itself stays in its own namespace: the socket is
// created on a thread moved into ns, and a socket keeps its namespace.
func netnsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		res := make(chan result, 1)
		go func() {
			// Never unlocked: the thread, now in ns, ends with this
			// goroutine instead of going back to the scheduler.
			runtime.LockOSThread()
			f, err := os.Open(filepath.Join("/var/run/netns", ns))
			if err != nil {
				res <- result{err: fmt.Errorf("open netns %s: %w", ns, err)}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				res <- result{err: fmt.Errorf("enter netns %s: %w", ns, err)}
				return
			}
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			res <- result{conn, err}
		}()
		r := <-res
		return r.conn, r.err
	}
}

func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

type members struct {
	voters, learners map[string]uint64
}

func memberList(cli *clientv3.Client) (members, error) {
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return members{}, err
	}
	m := members{voters: map[string]uint64{}, learners: map[string]uint64{}}
	for _, mem := range resp.Members {
		if mem.IsLearner {
			m.learners[mem.Name] = mem.ID
		} else {
			m.voters[mem.Name] = mem.ID
		}
	}
	return m, nil
}

func nodeDocs(cli *clientv3.Client) (map[string]nodedoc.Node, error) {
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	docs := map[string]nodedoc.Node{}
	for _, kv := range resp.Kvs {
		n, err := nodedoc.ParseNode(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		docs[n.Name] = n
	}
	return docs, nil
}

// newLoopbackCluster starts a test cluster whose nodes live on loopback
// addresses beginning at firstIP. It skips the test when that address
// cannot be bound, and stops every agent when the test ends, printing
// their logs when it failed.
func newLoopbackCluster(t *testing.T, firstIP string) *testCluster {
	t.Helper()
	ln, err := net.Listen("tcp", firstIP+":0")
	if err != nil {
		t.Skipf("cannot bind %s (needed for the multi-process cluster test): %v", firstIP, err)
	}
	ln.Close()
	c := &testCluster{t: t, bin: buildAgent(t), root: t.TempDir(), nodes: map[string]*testNode{}}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		c.stopAll()
	})
	return c
}

// stepTimer returns step(name), which returns a func that logs how long
// the step took.
func stepTimer(t *testing.T) func(string) func() {
	return func(name string) func() {
		start := time.Now()
		return func() { t.Logf("step %-28s %s", name, time.Since(start).Round(time.Millisecond)) }
	}
}
