package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/pki"
)

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

func TestClusterLifecycle(t *testing.T) {
	total := time.Now()
	c := newLoopbackCluster(t, "127.0.0.11")
	n := make([]*testNode, 7)
	for i := 1; i <= 6; i++ {
		n[i] = c.newNode(fmt.Sprintf("node-%d", i), fmt.Sprintf("127.0.0.%d", 10+i))
	}
	step := stepTimer(t)

	// Bootstrap: one voter, auth on, token written.
	done := step("bootstrap")
	c.start(n[1], "--voters", "3")
	if got := c.waitReady(n[1], 20*time.Second); got != "ok voter" {
		t.Fatalf("node-1 readyz = %q, want ok voter", got)
	}
	token := c.token(n[1])
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
			want := nodedoc.RoleVoter
			if i > 3 {
				want = nodedoc.RoleClient
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
	got, err := admin.Get(ctx, nodedoc.RoleKey(n[6].name))
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
	_, err = foreign.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix())
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
	_, err = ops.Put(ctx, nodedoc.Prefix+"ops-was-here", "x")
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
		_, err := other.Put(ctx, nodedoc.Prefix+"test/after-failover", "ok")
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
