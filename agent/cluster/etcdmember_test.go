package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-os/berth/agent/joinapi"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/agent/pki"
)

// The member's etcd configuration follows the settings and the record.
func TestEtcdMemberConfig(t *testing.T) {
	opts := testOptions(t, "node-1")
	opts.HeartbeatInterval, opts.ElectionTimeout = 50*time.Millisecond, 700*time.Millisecond
	a, _ := testAgent(t, opts)
	p := a.prov
	rec, err := p.open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := a.member
	cfg, err := m.config(rec)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "node-1" || cfg.Dir != p.dir.path(etcdDir) || cfg.InitialCluster != rec.InitialCluster ||
		cfg.ClusterState != "new" || cfg.InitialClusterToken != rec.ClusterToken {
		t.Fatalf("identity: %s %s %s %s %s", cfg.Name, cfg.Dir, cfg.InitialCluster, cfg.ClusterState, cfg.InitialClusterToken)
	}
	if cfg.ListenPeerUrls[0].String() != opts.PeerURL || cfg.AdvertiseClientUrls[0].String() != opts.ClientURL {
		t.Fatalf("urls: %v %v", cfg.ListenPeerUrls, cfg.AdvertiseClientUrls)
	}
	if cfg.TickMs != 50 || cfg.ElectionMs != 700 || cfg.QuotaBackendBytes != opts.QuotaBytes ||
		cfg.AutoCompactionMode != "periodic" || cfg.AutoCompactionRetention != "5m0s" {
		t.Fatalf("timing/space: tick %d election %d quota %d compaction %s %s",
			cfg.TickMs, cfg.ElectionMs, cfg.QuotaBackendBytes, cfg.AutoCompactionMode, cfg.AutoCompactionRetention)
	}
	if !cfg.ClientTLSInfo.ClientCertAuth || !cfg.PeerTLSInfo.ClientCertAuth || !strings.HasPrefix(cfg.AuthToken, "jwt,") {
		t.Fatalf("security: client cert auth %v/%v, auth token %q", cfg.ClientTLSInfo.ClientCertAuth, cfg.PeerTLSInfo.ClientCertAuth, cfg.AuthToken)
	}
	if !slices.Equal(cfg.LogOutputs, []string{"stderr"}) || cfg.LogLevel != "warn" {
		t.Fatalf("logs: %v %s", cfg.LogOutputs, cfg.LogLevel)
	}
}

// bootstrapped is a bootstrapped node-1 whose member runs, with auth set
// up, and a client of it.
type bootstrapped struct {
	opts   Options
	dir    dataDir
	member *etcdMember
	cli    *clientv3.Client
	token  string
}

func startBootstrapped(t *testing.T) *bootstrapped {
	t.Helper()
	opts := testOptions(t, "node-1")
	port := func() int { return etcdtest.FreePort(t) }
	opts.PeerURL = fmt.Sprintf("https://127.0.0.1:%d", port())
	opts.ClientURL = fmt.Sprintf("https://127.0.0.1:%d", port())
	opts.APIURL = "https://127.0.0.1:0"
	opts.Voters = 1
	opts.HeartbeatInterval, opts.ElectionTimeout = 50*time.Millisecond, 500*time.Millisecond
	opts.EtcdLogLevel = "fatal" // Close logs expected errors
	a, shown := testAgent(t, opts)
	p := a.prov
	rec, err := p.open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := a.member
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.close)
	tlsCfg, err := p.dir.clientTLS()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: rec.Endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	b := &bootstrapped{opts: opts, dir: p.dir, member: m, cli: cli, token: *shown}
	setup := authSetup{Node: "node-1", Config: nodedoc.ClusterConfig{Voters: 1, DeadAfterSeconds: 30, CAHash: caHash(p.dir)},
		Role: nodedoc.RoleEntry{Role: nodedoc.RoleVoter, PeerURL: opts.PeerURL, ClientURL: opts.ClientURL, APIURL: opts.APIURL}}
	if err := setupAuth(ctx, cli, setup, quietLog()); err != nil {
		t.Fatal(err)
	}
	return b
}

// A bootstrapped member starts, leads, votes, and auth setup makes the
// users and roles of a new cluster, again without harm after an
// interrupted bootstrap.
func TestEtcdMemberStartAndAuth(t *testing.T) {
	b := startBootstrapped(t)
	if !b.member.running() || !b.member.leads() || b.member.id() == 0 || b.member.leader() != b.member.id() {
		t.Fatalf("member: running %v leads %v id %x leader %x", b.member.running(), b.member.leads(), b.member.id(), b.member.leader())
	}
	if learner, known := b.member.learner(); learner || !known {
		t.Fatalf("learner %v known %v", learner, known)
	}
	local, err := b.member.localClient()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b.member.localClient(); again != local {
		t.Fatal("localClient made a second client")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// An interrupted bootstrap runs it again: everything exists already.
	setup := authSetup{Node: "node-1", Config: nodedoc.ClusterConfig{Voters: 1}, Role: nodedoc.RoleEntry{Role: nodedoc.RoleVoter}}
	if err := setupAuth(ctx, b.cli, setup, quietLog()); err != nil {
		t.Fatalf("second run: %v", err)
	}
	st, err := b.cli.AuthStatus(ctx)
	if err != nil || !st.Enabled {
		t.Fatalf("auth status: %+v, %v", st, err)
	}
	users, err := b.cli.UserList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"root", "node-1", OpsUser, AdminUser} {
		if !slices.Contains(users.Users, u) {
			t.Errorf("user %s missing: %v", u, users.Users)
		}
	}
	ops, err := b.cli.RoleGet(ctx, OpsUser)
	if err != nil || len(ops.Perm) != 1 || string(ops.Perm[0].Key) != nodedoc.Prefix || clientv3.PermissionType(ops.Perm[0].PermType) != clientv3.PermissionType(clientv3.PermRead) {
		t.Fatalf("ops role: %+v, %v", ops, err)
	}
	got, err := b.cli.Get(ctx, nodedoc.RoleKey("node-1"))
	if err != nil || len(got.Kvs) != 1 || !strings.Contains(string(got.Kvs[0].Value), `"voter"`) {
		t.Fatalf("role entry: %v, %v", got, err)
	}
}

// The API server answers the join endpoints where the CA key is, for a
// real joiner over TLS, and serves what Options.API adds.
func TestAPIServerJoin(t *testing.T) {
	b := startBootstrapped(t)
	api := &apiServer{dir: b.dir, url: b.opts.APIURL, self: "node-1", cli: b.cli, log: quietLog(),
		extra: func(mux *http.ServeMux) {
			mux.HandleFunc("/v1/extra", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("extra")) })
		}}
	if err := api.start(); err != nil {
		t.Fatal(err)
	}
	defer api.close()
	base := "https://" + api.addr.String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	token, err := pki.ParseToken(b.token)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := joinapi.DiscoverCA(ctx, []string{base}, token.Secret)
	if err != nil || hash != token.CAHash {
		t.Fatalf("discover CA: %s, %v (want %s)", hash, err, token.CAHash)
	}

	req := joinapi.Request{Name: "node-2", PeerURL: "https://127.0.0.2:2380", ClientURL: "https://127.0.0.2:2379", APIURL: "https://127.0.0.2:7480"}
	resp, err := joinapi.Join(ctx, []string{base}, token, req)
	if err != nil {
		t.Fatal(err)
	}
	// One voter wanted and there: the new node is a client, without the CA key.
	if resp.Role != joinapi.RoleClient || resp.CAKey != "" || !slices.Equal(resp.ClientURLs, []string{b.opts.ClientURL}) {
		t.Fatalf("join answer: role %s, CA key %v, client URLs %v", resp.Role, resp.CAKey != "", resp.ClientURLs)
	}

	wrong := token
	wrong.Secret = strings.Repeat("00", 16)
	_, err = joinapi.Join(ctx, []string{base}, wrong, joinapi.Request{Name: "node-3", PeerURL: req.PeerURL, ClientURL: req.ClientURL, APIURL: req.APIURL})
	var refused *joinapi.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("wrong secret: %v", err)
	}

	tlsCfg := joinapi.PinnedTLSConfig(token.CAHash)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	r, err := client.Get(base + "/v1/extra")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("extra handler: %s", r.Status)
	}
}

// Without the CA key (a client node) the join endpoints are not served.
func TestAPIServerWithoutCAKey(t *testing.T) {
	opts := testOptions(t, "node-1")
	a, _ := testAgent(t, opts)
	p := a.prov
	if _, err := p.open(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p.dir.path(pkiDir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	api := &apiServer{dir: p.dir, url: "https://127.0.0.1:0", self: "node-1", log: quietLog()}
	h, err := api.handler()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{joinapi.Path, joinapi.CAPath} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("%s without the CA key: %d", path, rec.Code)
		}
	}
}

// The in-process status says what the Status RPC says about the fields the
// space loop reads: revision, leader, database size and a NOSPACE alarm.
func TestEtcdMemberStatusMatchesRPC(t *testing.T) {
	b := startBootstrapped(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.cli.Put(ctx, "/berth/v1/test/status", "x"); err != nil {
		t.Fatal(err)
	}
	rpc, err := b.cli.Status(ctx, b.opts.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	own, err := b.member.status()
	if err != nil {
		t.Fatal(err)
	}
	if own.Header.Revision != rpc.Header.Revision || own.Leader != rpc.Leader || own.Header.MemberId != rpc.Header.MemberId ||
		own.DbSize != rpc.DbSize || own.DbSizeInUse != rpc.DbSizeInUse || own.IsLearner != rpc.IsLearner {
		t.Fatalf("in-process status %+v\nRPC status %+v", own, rpc)
	}
	if hasNoSpace(own.Errors) {
		t.Fatalf("alarm without cause: %v", own.Errors)
	}
	// Raise NOSPACE as etcd does when the quota is hit.
	if _, err := b.member.e.Load().Server.Alarm(ctx, &etcdserverpb.AlarmRequest{Action: etcdserverpb.AlarmRequest_ACTIVATE,
		MemberID: b.member.id(), Alarm: etcdserverpb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	own, _ = b.member.status()
	rpc, err = b.cli.Status(ctx, b.opts.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	if !hasNoSpace(own.Errors) || !hasNoSpace(rpc.Errors) {
		t.Fatalf("NOSPACE: in-process %v, RPC %v", own.Errors, rpc.Errors)
	}
}
