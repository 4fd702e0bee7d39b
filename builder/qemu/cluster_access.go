package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/internal/atomicfile"
)

// DialContext connects from inside the cluster's namespace (where the
// nodes are reachable) while this process stays in its own: the socket is
// made on a thread moved into the namespace, and a socket keeps the
// namespace it was made in. Use it for etcd/gRPC and HTTP clients.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	res := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it leaves the namespace only by
		// ending with this goroutine, so no other goroutine runs on it.
		runtime.LockOSThread()
		ns, err := os.Open(filepath.Join("/var/run/netns", c.Netns))
		if err != nil {
			res <- result{err: fmt.Errorf("cluster %s: %w", c.Name, err)}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("enter namespace %s: %w", c.Netns, err)}
			return
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		res <- result{conn, err}
	}()
	r := <-res
	return r.conn, r.err
}

// SSH runs command as root on node i (through the namespace, with the
// cluster's key) and returns its standard output. The connection to a
// node is kept and reused: a new one costs an emulated node 5 to 6 s of
// key exchange and login, a session on a kept one under a second. A kept
// connection that turns out dead (the node rebooted) is dialled again
// once; Start and Kill drop it.
func (c *Cluster) SSH(ctx context.Context, i int, command string) ([]byte, error) {
	n, err := c.Node(i)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		client, kept, err := c.sshClient(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("ssh %s: %w", n.Name, err)
		}
		sess, err := openSession(ctx, client)
		var refused *ssh.OpenChannelError
		switch {
		case errors.As(err, &refused):
			// The node is there but will not open another session on this
			// connection (sshd's MaxSessions): use a connection of its own.
			if client, err = c.dialSSH(ctx, n); err != nil {
				return nil, fmt.Errorf("ssh %s: %w", n.Name, err)
			}
			defer client.Close()
			if sess, err = openSession(ctx, client); err != nil {
				return nil, fmt.Errorf("ssh %s: %w", n.Name, err)
			}
		case err != nil:
			n.dropSSH(client)
			if kept && attempt == 0 {
				continue
			}
			return nil, fmt.Errorf("ssh %s: %w", n.Name, err)
		}
		return runSession(ctx, n, client, sess, command)
	}
}

// runSession runs command in sess. When ctx ends first the connection is
// closed (a command on a dead node would wait for ever otherwise).
func runSession(ctx context.Context, n *ClusterNode, client *ssh.Client, sess *ssh.Session, command string) ([]byte, error) {
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { n.dropSSH(client) })
	defer stop()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	if err := sess.Run(command); err != nil {
		var exit *ssh.ExitError
		if !errors.As(err, &exit) {
			// Not the command's own failure: the connection broke.
			n.dropSSH(client)
		}
		return stdout.Bytes(), fmt.Errorf("ssh %s %q: %w: %s", n.Name, command, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// openSession opens a session, giving up after 15 s: a connection to a
// node that was reset without closing it never answers.
func openSession(ctx context.Context, client *ssh.Client) (*ssh.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { client.Close() })
	defer stop()
	sess, err := client.NewSession()
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("open a session: %w", ctx.Err())
	}
	return sess, err
}

// sshClient returns node n's kept connection (kept true) or dials and
// keeps a new one.
func (c *Cluster) sshClient(ctx context.Context, n *ClusterNode) (client *ssh.Client, kept bool, err error) {
	n.mu.Lock()
	client = n.ssh
	n.mu.Unlock()
	if client != nil {
		return client, true, nil
	}
	if client, err = c.dialSSH(ctx, n); err != nil {
		return nil, false, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ssh != nil { // another call kept one meanwhile
		client.Close()
		return n.ssh, true, nil
	}
	n.ssh = client
	return client, false, nil
}

// dialSSH connects and logs in to node n as root with the cluster's key.
func (c *Cluster) dialSSH(ctx context.Context, n *ClusterNode) (*ssh.Client, error) {
	keyPEM, err := os.ReadFile(c.SSHKey())
	if err != nil {
		return nil, fmt.Errorf("cluster ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster ssh key %s: %w", c.SSHKey(), err)
	}
	addr := net.JoinHostPort(n.IPv4, "22")
	conn, err := c.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Closing the connection ends the handshake when the context ends.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// The node makes its host keys at its first boot, and only this
		// harness reaches the namespace: there is nothing to pin them to.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// dropSSH closes client and forgets it if it is the node's kept
// connection; with nil it closes and forgets whatever is kept.
func (n *ClusterNode) dropSSH(client *ssh.Client) {
	n.mu.Lock()
	if client == nil {
		client = n.ssh
	}
	if n.ssh == client {
		n.ssh = nil
	}
	n.mu.Unlock()
	if client != nil {
		client.Close()
	}
}

// AdminDir holds the cluster's admin client certificate (admin.crt,
// admin.key, ca.crt) and berthctl.yaml once FetchAdminCert got them.
func (c *Cluster) AdminDir() string { return filepath.Join(c.Dir, "admin") }

// BerthctlConfig is the berthctl configuration file (--config) for the
// cluster: every node's client URL and the admin certificate.
func (c *Cluster) BerthctlConfig() string { return filepath.Join(c.AdminDir(), "berthctl.yaml") }

// The files `berth-agent issue-cert --admin` writes, in the order the
// fetch command prints them.
var adminFiles = []string{"ca.crt", "admin.crt", "admin.key"}

const fileMarker = "==> berth-cluster file "

// FetchAdminCert has node-1's agent (which holds the cluster CA) issue an
// admin certificate, over ssh, and saves it with a berthctl.yaml in
// AdminDir. It retries until it succeeds or ctx ends: node-1 must have
// booted, started sshd and bootstrapped the cluster first.
func (c *Cluster) FetchAdminCert(ctx context.Context) error {
	script := "set -e; d=$(mktemp -d); berth-agent issue-cert --admin --out \"$d\" >/dev/null"
	for _, f := range adminFiles {
		script += fmt.Sprintf("; echo '%s%s'; cat \"$d/%s\"", fileMarker, f, f)
	}
	script += "; rm -rf \"$d\""
	var last error
	for {
		// One attempt must not hang on a half-started sshd.
		attempt, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := c.SSH(attempt, 1, script)
		cancel()
		if err == nil {
			var files map[string][]byte
			if files, err = splitFiles(out); err == nil {
				return c.saveAdmin(files)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("admin certificate from node-1: %w (last error: %v)", ctx.Err(), last)
		case <-time.After(2 * time.Second):
		}
	}
}

func splitFiles(out []byte) (map[string][]byte, error) {
	files := map[string][]byte{}
	var name string
	for _, line := range strings.SplitAfter(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, fileMarker); ok {
			name = strings.TrimSpace(rest)
			files[name] = nil
			continue
		}
		if name != "" {
			files[name] = append(files[name], line...)
		}
	}
	for _, f := range adminFiles {
		if !bytes.Contains(files[f], []byte("-----BEGIN ")) {
			return nil, fmt.Errorf("node-1 did not send %s", f)
		}
	}
	return files, nil
}

func (c *Cluster) saveAdmin(files map[string][]byte) error {
	dir := c.AdminDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range adminFiles {
		if err := atomicfile.WriteFile(filepath.Join(dir, f), files[f], 0o600); err != nil {
			return err
		}
	}
	var endpoints []string
	for _, n := range c.Nodes {
		endpoints = append(endpoints, fmt.Sprintf("  - https://%s:2379\n", n.IPv4))
	}
	conf := fmt.Sprintf("# berthctl --config for cluster %s (run inside namespace %s)\nendpoints:\n%scacert: %s\ncert: %s\nkey: %s\n",
		c.Name, c.Netns, strings.Join(endpoints, ""),
		filepath.Join(dir, "ca.crt"), filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key"))
	return atomicfile.WriteFile(c.BerthctlConfig(), []byte(conf), 0o600)
}

// BerthctlCommand is the command that runs berthctl (the binary at bin)
// inside the namespace with the admin certificate.
func (c *Cluster) BerthctlCommand(ctx context.Context, bin string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.Netns, bin, "--config", c.BerthctlConfig()}, args...)...)
}

// Berthctl runs berthctl inside the namespace and returns its standard
// output; a failure carries its error line.
func (c *Cluster) Berthctl(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := c.BerthctlCommand(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("berthctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// ListNodes lists the cluster's nodes through berthctl, as `berthctl
// nodes -o json` prints them (one format, agent/ctl's).
func (c *Cluster) ListNodes(ctx context.Context, bin string) ([]ctl.NodeRow, error) {
	out, err := c.Berthctl(ctx, bin, "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list ctl.NodeList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("berthctl nodes -o json: %w", err)
	}
	return list.Items, nil
}

// WaitNodes polls berthctl every second until cond accepts the node list
// or ctx ends; it returns the last list.
func (c *Cluster) WaitNodes(ctx context.Context, bin string, cond func([]ctl.NodeRow) error) ([]ctl.NodeRow, error) {
	for {
		nodes, err := c.ListNodes(ctx, bin)
		if err == nil {
			if err = cond(nodes); err == nil {
				return nodes, nil
			}
		}
		select {
		case <-ctx.Done():
			return nodes, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// AllReady accepts a list of exactly the cluster's nodes, all Ready.
func (c *Cluster) AllReady(nodes []ctl.NodeRow) error {
	ready := map[string]bool{}
	for _, n := range nodes {
		ready[n.Name] = n.Status == "Ready"
	}
	var missing []string
	for _, n := range c.Nodes {
		if !ready[n.Name] {
			missing = append(missing, n.Name)
		}
	}
	if len(missing) > 0 || len(nodes) != len(c.Nodes) {
		return fmt.Errorf("%d of %d nodes listed; not Ready: %s", len(nodes), len(c.Nodes), strings.Join(missing, ", "))
	}
	return nil
}

// AgentReadyAfter tells how long after its qemu started node i's agent
// became ready (systemd's ActiveEnterTimestampMonotonic of berth-agent,
// which counts from the kernel's start, plus the firmware and loader time
// seen on the console). The console cannot show it: systemd stops
// printing unit status there once the serial getty runs.
func (c *Cluster) AgentReadyAfter(ctx context.Context, i int) (time.Duration, error) {
	n, err := c.Node(i)
	if err != nil {
		return 0, err
	}
	kernelAt, started := n.KernelAt(), n.Started()
	if kernelAt.IsZero() {
		return 0, fmt.Errorf("%s: the kernel's start was not seen on the console of a boot started here", n.Name)
	}
	out, err := c.SSH(ctx, i, "systemctl show -p ActiveEnterTimestampMonotonic --value berth-agent.service")
	if err != nil {
		return 0, err
	}
	us, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || us <= 0 {
		return 0, fmt.Errorf("%s: berth-agent.service has not become active (ActiveEnterTimestampMonotonic %q)", n.Name, bytes.TrimSpace(out))
	}
	return kernelAt.Sub(started) + time.Duration(us)*time.Microsecond, nil
}

// EtcdClient is an etcd client of the cluster with the admin certificate
// (FetchAdminCert first), connecting through the namespace, for tests
// that watch or write the cluster's state from this process.
func (c *Cluster) EtcdClient() (*clientv3.Client, error) {
	dir := c.AdminDir()
	tlsCfg, err := (transport.TLSInfo{
		TrustedCAFile: filepath.Join(dir, "ca.crt"),
		CertFile:      filepath.Join(dir, "admin.crt"),
		KeyFile:       filepath.Join(dir, "admin.key"),
	}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("cluster %s admin TLS: %w", c.Name, err)
	}
	var endpoints []string
	for _, n := range c.Nodes {
		endpoints = append(endpoints, fmt.Sprintf("https://%s:2379", n.IPv4))
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 10 * time.Second,
		// A killed node never closes its connections: without keepalives
		// a request on one waits for TCP to give up (15 minutes) instead
		// of moving to a live node.
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.DialContext(ctx, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s etcd client: %w", c.Name, err)
	}
	return cli, nil
}
