package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/agent/state"
)

// Timings of the multi-process test: short raft ticks and a short node TTL
// keep the whole scenario well under a minute and a half.
const (
	testTTL       = 3 * time.Second
	testDeadAfter = 60 * time.Second // longer than the test: no self-healing surprises
)

type testNode struct {
	name, ip                   string
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
	u := func(scheme string) string {
		return scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(freePort(c.t, ip)))
	}
	n := &testNode{
		name: name, ip: ip,
		peer: u("https"), client: u("https"), api: u("https"), metrics: u("http"),
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
		lines := strings.Split(string(data), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		c.t.Logf("---- %s (last lines)\n%s", n.name, strings.Join(lines, "\n"))
	}
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
		resp, err := http.Get(n.metrics + "/readyz")
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

func client(t *testing.T, endpoints []string, certFile, keyFile, caFile string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func nodeClient(t *testing.T, n *testNode, endpoints []string) *clientv3.Client {
	p := filepath.Join(n.dir, "pki")
	return client(t, endpoints, filepath.Join(p, "node.crt"), filepath.Join(p, "node.key"), filepath.Join(p, "ca.crt"))
}

// handshakeAlert connects with a client certificate and returns the error
// of the first read: a TLS alert when the server refuses the certificate
// (TLS 1.3 reports it after the handshake), a timeout when it accepts it.
func handshakeAlert(t *testing.T, rawURL, certFile, keyFile string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(rawURL, "https://")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", host,
		&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}) // the server is not under test here
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	if err == nil {
		return ""
	}
	return err.Error()
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

func nodeDocs(cli *clientv3.Client) (map[string]state.Node, error) {
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, state.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	docs := map[string]state.Node{}
	for _, kv := range resp.Kvs {
		n, err := state.ParseNode(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		docs[n.Name] = n
	}
	return docs, nil
}

func TestClusterLifecycle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.11:0")
	if err != nil {
		t.Skipf("cannot bind 127.0.0.11 (needed for the multi-process cluster test): %v", err)
	}
	ln.Close()
	total := time.Now()
	c := &testCluster{t: t, bin: buildAgent(t), root: t.TempDir(), nodes: map[string]*testNode{}}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		c.stopAll()
	})
	n := make([]*testNode, 7)
	for i := 1; i <= 6; i++ {
		n[i] = c.newNode(fmt.Sprintf("node-%d", i), fmt.Sprintf("127.0.0.%d", 10+i))
	}
	step := func(name string) func() {
		start := time.Now()
		return func() { t.Logf("step %-28s %s", name, time.Since(start).Round(time.Millisecond)) }
	}

	// Bootstrap: one voter, auth on, token written.
	done := step("bootstrap")
	c.start(n[1], "--voters", "3")
	if got := c.waitReady(n[1], 20*time.Second); got != "ok voter" {
		t.Fatalf("node-1 readyz = %q, want ok voter", got)
	}
	tokenText, err := os.ReadFile(filepath.Join(n[1].dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenText))
	if _, err := pki.ParseToken(token); err != nil {
		t.Fatalf("token file: %v", err)
	}
	done()
	joinArgs := func(via ...*testNode) []string {
		var urls []string
		for _, v := range via {
			urls = append(urls, v.api)
		}
		return []string{"--join", strings.Join(urls, ","), "--token", token}
	}

	// Join to three voters: both join as learners and get promoted.
	done = step("join to 3 voters")
	c.start(n[2], joinArgs(n[1])...)
	c.start(n[3], joinArgs(n[1])...)
	c.waitReady(n[2], 40*time.Second)
	c.waitReady(n[3], 40*time.Second)
	admin := nodeClient(t, n[1], []string{n[1].client, n[2].client, n[3].client})
	eventually(t, 30*time.Second, "three voters", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if len(m.voters) != 3 || len(m.learners) != 0 {
			return fmt.Errorf("voters %v learners %v", m.voters, m.learners)
		}
		return nil
	})
	done()

	// Beyond the voter target: clients.
	done = step("join 2 clients")
	c.start(n[4], joinArgs(n[2], n[1])...)
	c.start(n[5], joinArgs(n[3])...)
	for _, x := range []*testNode{n[4], n[5]} {
		if got := c.waitReady(x, 40*time.Second); got != "ok client" {
			t.Fatalf("%s readyz = %q, want ok client", x.name, got)
		}
	}
	m, err := memberList(admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.voters) != 3 || len(m.learners) != 0 {
		t.Fatalf("clients changed membership: voters %v learners %v", m.voters, m.learners)
	}
	eventually(t, 10*time.Second, "five node documents", func() error {
		docs, err := nodeDocs(admin)
		if err != nil {
			return err
		}
		for i := 1; i <= 5; i++ {
			d, ok := docs[n[i].name]
			if !ok {
				return fmt.Errorf("no document for %s (have %d)", n[i].name, len(docs))
			}
			want := state.RoleVoter
			if i > 3 {
				want = state.RoleClient
			}
			if d.Role != want || d.ClientURL != n[i].client || !d.Ready {
				return fmt.Errorf("%s: role %q client_url %q ready %v", n[i].name, d.Role, d.ClientURL, d.Ready)
			}
		}
		if len(docs) != 5 {
			return fmt.Errorf("%d documents, want 5", len(docs))
		}
		return nil
	})
	done()

	// A wrong token secret (right CA hash) is refused: clear error, exit
	// non-zero, no member and no role added.
	done = step("wrong token refused")
	parsed, _ := pki.ParseToken(token)
	wrong := pki.Token{Secret: strings.Repeat("0", 32), CAHash: parsed.CAHash}
	bad := exec.Command(c.bin, c.args(n[6], "--join", n[1].api, "--token", wrong.String())...)
	out, err := bad.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Fatalf("join with a wrong token: err %v, want non-zero exit\n%s", err, out)
	}
	if !strings.Contains(string(out), "join refused") || !strings.Contains(string(out), "token secret does not match") {
		t.Fatalf("wrong-token error is not clear:\n%s", out)
	}
	if m, _ := memberList(admin); len(m.voters)+len(m.learners) != 3 {
		t.Fatalf("refused join changed membership: %+v", m)
	}
	ctx, cancel := ctxT(3 * time.Second)
	got, err := admin.Get(ctx, state.RoleKey(n[6].name))
	cancel()
	if err != nil || len(got.Kvs) != 0 {
		t.Fatalf("refused node has a role entry (err %v)", err)
	}
	// A token pinning another CA: the joining node refuses the server.
	otherCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	pinned := pki.Token{Secret: parsed.Secret, CAHash: pki.CAHash(otherCA.Cert)}
	out, err = exec.Command(c.bin, c.args(n[6], "--join", n[1].api, "--token", pinned.String())...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not match the token's CA hash") {
		t.Fatalf("join with another CA's hash: err %v\n%s", err, out)
	}
	done()

	// A client certificate from another CA is refused by etcd itself.
	done = step("foreign CA refused")
	foreignCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	fdir := t.TempDir()
	fc, fk, err := foreignCA.Issue(n[1].name, pki.ClientOnly, nil, nil) // even with a real node's CN
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePair(fdir, "foreign", fc, fk); err != nil {
		t.Fatal(err)
	}
	foreign := client(t, []string{n[1].client}, filepath.Join(fdir, "foreign.crt"), filepath.Join(fdir, "foreign.key"), filepath.Join(n[1].dir, "pki", "ca.crt"))
	ctx, cancel = ctxT(3 * time.Second)
	_, err = foreign.Get(ctx, state.NodesPrefix, clientv3.WithPrefix())
	cancel()
	if err == nil {
		t.Fatal("etcd accepted a client certificate from another CA")
	}
	// The client error above is only a timeout; the handshake shows why.
	if alert := handshakeAlert(t, n[1].client, filepath.Join(fdir, "foreign.crt"), filepath.Join(fdir, "foreign.key")); !strings.Contains(alert, "certificate") {
		t.Fatalf("foreign certificate: server answered %q, want a certificate alert", alert)
	}
	pk := filepath.Join(n[1].dir, "pki")
	if alert := handshakeAlert(t, n[1].client, filepath.Join(pk, "node.crt"), filepath.Join(pk, "node.key")); strings.Contains(alert, "certificate") {
		t.Fatalf("control: the cluster's own certificate was refused: %q", alert)
	}
	done()

	// The ops certificate reads /berth/v1/ but cannot write.
	done = step("ops read-only")
	opsDir := t.TempDir()
	if out, err := exec.Command(c.bin, "issue-ops-cert", "--data-dir", n[1].dir, "--out", opsDir).CombinedOutput(); err != nil {
		t.Fatalf("issue-ops-cert: %v\n%s", err, out)
	}
	ops := client(t, []string{n[1].client, n[2].client}, filepath.Join(opsDir, "ops.crt"), filepath.Join(opsDir, "ops.key"), filepath.Join(opsDir, "ca.crt"))
	docs, err := nodeDocs(ops)
	if err != nil || len(docs) != 5 {
		t.Fatalf("ops read: %d documents, err %v", len(docs), err)
	}
	ctx, cancel = ctxT(3 * time.Second)
	_, err = ops.Put(ctx, state.Prefix+"ops-was-here", "x")
	cancel()
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("ops put: err %v, want permission denied", err)
	}
	ctx, cancel = ctxT(3 * time.Second)
	_, err = ops.Get(ctx, "/outside")
	cancel()
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("ops read outside /berth/v1/: err %v, want permission denied", err)
	}
	done()

	// SIGKILL the etcd leader's agent: a new leader, writes continue, its
	// document expires with its lease.
	done = step("kill leader")
	voters := []*testNode{n[1], n[2], n[3]}
	var leader *testNode
	var leaderID uint64
	for _, v := range voters {
		ctx, cancel := ctxT(3 * time.Second)
		st, err := admin.Status(ctx, v.client)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			leader, leaderID = v, st.Leader
		}
	}
	if leader == nil {
		t.Fatal("no leader found")
	}
	c.kill(leader)
	killedAt := time.Now()
	var survivors []string
	for _, v := range voters {
		if v != leader {
			survivors = append(survivors, v.client)
		}
	}
	other := nodeClient(t, n[4], survivors)
	elected := eventually(t, 5*time.Second, "new leader", func() error {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		st, err := other.Status(ctx, survivors[0])
		if err != nil {
			return err
		}
		if st.Leader == 0 || st.Leader == leaderID {
			return fmt.Errorf("leader %x", st.Leader)
		}
		return nil
	})
	t.Logf("new leader after %s", elected.Round(time.Millisecond))
	eventually(t, 5*time.Second, "write after leader loss", func() error {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		_, err := other.Put(ctx, state.Prefix+"test/after-failover", "ok")
		return err
	})
	eventually(t, testTTL+3*time.Second, "dead leader's document gone", func() error {
		docs, err := nodeDocs(other)
		if err != nil {
			return err
		}
		if _, ok := docs[leader.name]; ok {
			return errors.New("still present")
		}
		return nil
	})
	t.Logf("document of %s gone %s after the kill", leader.name, time.Since(killedAt).Round(time.Millisecond))
	done()

	// Restart it from its data dir: same member, document back.
	done = step("restart from data dir")
	c.start(leader)
	c.waitReady(leader, 30*time.Second)
	eventually(t, 10*time.Second, "restarted node back", func() error {
		m, err := memberList(other)
		if err != nil {
			return err
		}
		if m.voters[leader.name] != leaderID || len(m.voters) != 3 {
			return fmt.Errorf("voters %v", m.voters)
		}
		docs, err := nodeDocs(other)
		if err != nil {
			return err
		}
		if _, ok := docs[leader.name]; !ok {
			return errors.New("no document yet")
		}
		return nil
	})
	done()

	// Wipe a voter's data dir and rejoin: a new member replaces the stale one.
	done = step("wipe and rejoin voter")
	wiped := n[2]
	before, err := memberList(other)
	if err != nil {
		t.Fatal(err)
	}
	oldID := before.voters[wiped.name]
	c.kill(wiped)
	if err := os.RemoveAll(wiped.dir); err != nil {
		t.Fatal(err)
	}
	var via []*testNode
	for _, v := range voters {
		if v != wiped {
			via = append(via, v)
		}
	}
	c.start(wiped, joinArgs(via...)...)
	c.waitReady(wiped, 40*time.Second)
	eventually(t, 30*time.Second, "three voters after rejoin", func() error {
		m, err := memberList(other)
		if err != nil {
			return err
		}
		id, ok := m.voters[wiped.name]
		if !ok || id == oldID || len(m.voters) != 3 || len(m.learners) != 0 {
			return fmt.Errorf("voters %v learners %v (old id %x)", m.voters, m.learners, oldID)
		}
		return nil
	})
	done()
	t.Logf("whole scenario %s", time.Since(total).Round(time.Millisecond))
}
