// Package cluster runs a node's share of the berth cluster: the embedded
// etcd member (or a plain client on nodes beyond the voter target), the
// bootstrap of a new cluster, joining an existing one, restarts from the data
// dir, the join API for new nodes, learner promotion and self-healing.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/berth-os/berth/agent/joinapi"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/agent/state"
	"github.com/berth-os/berth/internal/atomicfile"
)

// Options configure an Agent; agent/config fills them from the user's
// configuration.
type Options struct {
	Name      string
	DataDir   string
	PeerURL   string
	ClientURL string
	APIURL    string
	Join      []string // join API URLs; used only with an empty data dir
	Token     string   // join token text; needed with Join
	Voters    int      // voting members wanted; bootstrap only
	DeadAfter time.Duration
	NodeTTL   time.Duration
	// etcd raft timing.
	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	EtcdLogLevel      string
	// EtcdLogOutput is "stderr" or "systemd/journal".
	EtcdLogOutput string
	// ClusterName goes into the CA's name at bootstrap; default "berth".
	ClusterName  string
	AgentVersion string
	Log          *slog.Logger
	// TokenOutput receives the join token once, at bootstrap (default stdout).
	TokenOutput func(token string)
	// Collector fills the node document; nil means a default state.Collector.
	Collector *state.Collector
	// Labels are the node's labels, published in its node document.
	Labels map[string]string
	// Containers counts the node's running and all containers for the
	// node document; nil reports zero.
	Containers func() (running, total int)
	// Draining tells whether the node is being emptied for a reboot, for
	// the node document (the scheduler then moves its replicas away); nil
	// means never. Call Agent.Republish after it changes.
	Draining func() bool
	// Services run beside the agent once it has a cluster client, until
	// the agent stops; an error ends the agent.
	Services []func(ctx context.Context, cli *clientv3.Client) error
	// API adds handlers to the agent's HTTPS API listener, which every
	// node serves; /v1/join is there only on nodes holding the CA key.
	API func(mux *http.ServeMux)

	// etcd's space (space.go): the backend quota (default 2 GiB), the
	// history periodic auto-compaction keeps (default 5 min), how often
	// one member may be defragmented (default 1 h).
	QuotaBytes          int64
	CompactionRetention time.Duration
	DefragInterval      time.Duration
	// NodeRefresh is the node document's slow refresh (state.Publisher's
	// Interval; default state.DefaultRefresh).
	NodeRefresh time.Duration
	// RebootSlotHolders names the nodes holding a rollout reboot slot:
	// their members are never defragmented nor removed by self-healing
	// (they are rebooting). nil: none.
	RebootSlotHolders func(ctx context.Context, cli *clientv3.Client) (map[string]bool, error)
}

// Agent is one node's cluster agent.
type Agent struct {
	opts Options
	log  *slog.Logger

	// local talks to this node's own etcd only. The leader's agent
	// promotes learners through it: a follower forwards MemberPromote to
	// the leader over the peer API without the caller's auth identity,
	// and the leader refuses it ("auth: user name is empty").
	local *clientv3.Client

	etcd atomic.Pointer[embed.Etcd] // set when the member starts (maybe late, after promotion of a client)
	pub  atomic.Pointer[state.Publisher]
	cli  *clientv3.Client
	st   *nodeState

	role     atomic.Value // string: state.RoleVoter, RoleLearner or RoleClient
	space    atomic.Value // string: state.SpaceLow, SpaceFull or ""
	ready    atomic.Bool
	etcdDown atomic.Bool
	readyCh  chan struct{}

	mu sync.Mutex // guards st on disk and in memory
}

// New checks opts and returns an Agent ready to Run.
func New(opts Options) (*Agent, error) {
	if err := state.CheckName(opts.Name); err != nil {
		return nil, err
	}
	if opts.DataDir == "" {
		return nil, errors.New("data dir is empty")
	}
	if opts.ClusterName == "" {
		opts.ClusterName = "berth"
	}
	if opts.NodeTTL <= 0 {
		opts.NodeTTL = state.DefaultTTL
	}
	if opts.DeadAfter <= 0 {
		opts.DeadAfter = 30 * time.Second
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = 100 * time.Millisecond
	}
	if opts.ElectionTimeout <= 0 {
		opts.ElectionTimeout = time.Second
	}
	if opts.EtcdLogLevel == "" {
		opts.EtcdLogLevel = "warn"
	}
	if opts.QuotaBytes <= 0 {
		opts.QuotaBytes = DefaultQuotaBytes
	}
	if opts.CompactionRetention <= 0 {
		opts.CompactionRetention = DefaultCompactionRetention
	}
	if opts.DefragInterval <= 0 {
		opts.DefragInterval = DefaultDefragInterval
	}
	if opts.NodeRefresh <= 0 {
		opts.NodeRefresh = state.DefaultRefresh
	}
	if opts.EtcdLogOutput == "" {
		opts.EtcdLogOutput = embed.StdErrLogOutput
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.TokenOutput == nil {
		opts.TokenOutput = func(token string) { fmt.Printf("berth join token (shown once): %s\n", token) }
	}
	a := &Agent{opts: opts, log: opts.Log, readyCh: make(chan struct{})}
	a.role.Store("")
	a.space.Store("")
	return a, nil
}

// Ready reports whether the agent reached the cluster and published its
// node document.
func (a *Agent) Ready() bool { return a.ready.Load() }

// ReadyNotify is closed when the agent first becomes ready.
func (a *Agent) ReadyNotify() <-chan struct{} { return a.readyCh }

// Role is the node's current role ("" before it is known).
func (a *Agent) Role() string { return a.role.Load().(string) }

// Healthy reports a broken embedded etcd; an unreachable cluster is not a
// health failure (a restart would not fix it).
func (a *Agent) Healthy() error {
	if a.etcdDown.Load() {
		return errors.New("embedded etcd stopped")
	}
	return nil
}

// Run brings the node into the cluster and keeps it there until ctx ends.
// A member that the cluster removed while it was down (self-healing after
// dead_after) clears its cluster data and returns an error, so that the
// next start (systemd restarts the agent) joins again with the token and
// the agents it last knew.
func (a *Agent) Run(ctx context.Context) error {
	err := a.run(ctx)
	if err != nil && isRemovedMember(err) {
		if perr := a.prepareRejoin(); perr != nil {
			return fmt.Errorf("%w; clearing the data dir to rejoin failed: %v", err, perr)
		}
		return fmt.Errorf("this node was removed from the cluster while it was down (longer than dead_after): its cluster data was cleared, the next start joins again: %w", err)
	}
	return err
}

func (a *Agent) run(ctx context.Context) error {
	if err := os.MkdirAll(a.opts.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := a.loadNodeState()
	if err != nil {
		return err
	}
	switch {
	case st != nil:
		if st.Name != a.opts.Name {
			return fmt.Errorf("data dir %s belongs to node %q, not %q", a.opts.DataDir, st.Name, a.opts.Name)
		}
		a.log.Info("restarting from data dir", "member", st.Member)
	case exists(a.path(etcdDir)) || exists(a.path(pkiDir)):
		return fmt.Errorf("data dir %s holds an interrupted bootstrap or join: empty it and start again", a.opts.DataDir)
	case len(a.opts.Join) == 0 && exists(a.path(rejoinFile)):
		if st, err = a.rejoin(ctx); err != nil {
			return err
		}
	case len(a.opts.Join) == 0:
		if st, err = a.prepareBootstrap(); err != nil {
			return err
		}
	default:
		if st, err = a.join(ctx); err != nil {
			return err
		}
	}
	a.st = st

	if st.Member {
		a.setRole(state.RoleLearner) // until the member list says otherwise
		if err := a.startEtcd(ctx); err != nil {
			return err
		}
	} else {
		a.setRole(state.RoleClient)
	}
	// Close etcd last, after the client: deferred first.
	defer func() {
		if e := a.embedded(); e != nil {
			e.Close()
		}
	}()
	if err := a.connect(); err != nil {
		return err
	}
	defer a.cli.Close()
	defer func() {
		if a.local != nil {
			a.local.Close()
		}
	}()

	if st.Member && !st.AuthDone {
		if err := a.setupAuth(ctx); err != nil {
			return err
		}
		st.AuthDone = true
		if err := a.persist(); err != nil {
			return err
		}
	}
	if st.Member {
		a.refreshRole(ctx)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	errc := make(chan error, 4)

	srv, err := a.startAPI()
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, svc := range a.opts.Services {
		wg.Go(func() {
			if err := svc(ctx, a.cli); err != nil && ctx.Err() == nil {
				errc <- err
			}
		})
	}
	if st.Member {
		wg.Go(func() { a.memberLoop(ctx) })
	} else {
		wg.Go(func() {
			if err := a.watchPromotion(ctx); err != nil {
				errc <- err
			}
		})
	}
	wg.Go(func() { a.recordJoinURLs(ctx) })
	wg.Go(func() { a.spaceLoop(ctx) })
	pub := a.newPublisher()
	a.pub.Store(pub)
	wg.Go(func() {
		if err := pub.Run(ctx); err != nil {
			errc <- fmt.Errorf("publish node document: %w", err)
		}
	})

	var etcdErr <-chan error
	var etcdStopped <-chan struct{}
	if e := a.embedded(); e != nil {
		etcdErr = e.Err()
		etcdStopped = e.Server.StopNotify()
	}
	published := pub.Published()
	for {
		select {
		case <-published:
			published = nil
			a.ready.Store(true)
			readyGauge.Set(1)
			close(a.readyCh)
			pub.Trigger() // republish with ready=true
			a.log.Info("agent ready", "role", a.Role())
		case err := <-etcdErr:
			a.etcdDown.Store(true)
			return fmt.Errorf("embedded etcd failed: %w", err)
		case <-etcdStopped:
			a.etcdDown.Store(true)
			if e := a.embedded(); e != nil && memberRemoved(e) {
				return errMemberRemoved
			}
			return errors.New("embedded etcd stopped")
		case err := <-errc:
			return err
		case <-ctx.Done():
			a.log.Info("agent stopping")
			cancel()
			wg.Wait() // the publisher revokes its lease while etcd still runs
			return nil
		}
	}
}

func (a *Agent) embedded() *embed.Etcd       { return a.etcd.Load() }
func (a *Agent) publisher() *state.Publisher { return a.pub.Load() }

// Republish puts the node document now rather than at the next poll, so
// that a change such as the start of draining reaches the scheduler at
// once. Before the publisher exists it does nothing: its first put
// collects the current state anyway.
func (a *Agent) Republish() {
	if p := a.publisher(); p != nil {
		p.Trigger()
	}
}

func (a *Agent) setRole(role string) {
	old := a.Role()
	if old == role {
		return
	}
	a.role.Store(role)
	if old != "" {
		roleGauge.WithLabelValues(old).Set(0)
	}
	roleGauge.WithLabelValues(role).Set(1)
}

func (a *Agent) persist() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.saveNodeState(a.st)
}

// prepareBootstrap creates the cluster's CA, token and this node's
// credentials for a new single-voter cluster.
func (a *Agent) prepareBootstrap() (*nodeState, error) {
	a.log.Info("bootstrapping a new cluster", "voters", a.opts.Voters)
	ca, err := pki.NewCA(a.opts.ClusterName)
	if err != nil {
		return nil, err
	}
	token, err := pki.NewToken(pki.CAHash(ca.Cert))
	if err != nil {
		return nil, err
	}
	if a.opts.Token != "" {
		// A secret chosen before the cluster existed (provisioning):
		// nodes configured with it can join without knowing the CA hash.
		preset, err := pki.ParseToken(a.opts.Token)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		token.Secret = preset.Secret
	}
	ips, dns := joinapi.CertAddresses(a.opts.PeerURL, a.opts.ClientURL, a.opts.APIURL)
	certPEM, keyPEM, err := ca.Issue(a.opts.Name, pki.ServerClient, ips, dns)
	if err != nil {
		return nil, err
	}
	// Token and node.json last: their presence marks a complete setup.
	if err := ca.Save(a.path(pkiDir)); err != nil {
		return nil, err
	}
	if err := pki.WritePair(a.path(pkiDir), "node", certPEM, keyPEM); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(a.path(tokenFile), []byte(token.String()+"\n"), 0o600); err != nil {
		return nil, err
	}
	clusterToken := make([]byte, 8)
	if _, err := rand.Read(clusterToken); err != nil {
		return nil, fmt.Errorf("cluster token: %w", err)
	}
	st := &nodeState{
		Name:           a.opts.Name,
		Member:         true,
		InitialCluster: a.opts.Name + "=" + a.opts.PeerURL,
		ClusterState:   embed.ClusterStateFlagNew,
		ClusterToken:   a.opts.ClusterName + "-" + hex.EncodeToString(clusterToken),
		Endpoints:      []string{a.opts.ClientURL},
	}
	if err := a.saveNodeState(st); err != nil {
		return nil, err
	}
	a.opts.TokenOutput(token.String())
	a.log.Info("join token written", "file", a.path(tokenFile))
	return st, nil
}

// join asks an existing agent to admit this node and stores what it gets.
func (a *Agent) join(ctx context.Context) (*nodeState, error) {
	token, err := pki.ParseToken(a.opts.Token)
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	a.log.Info("joining cluster", "via", a.opts.Join)
	jctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if token.Bare() {
		if token.CAHash, err = joinapi.DiscoverCA(jctx, a.opts.Join, token.Secret); err != nil {
			return nil, err
		}
		a.log.Info("cluster CA authenticated with the join secret", "ca_hash", token.CAHash)
	}
	resp, err := joinapi.Join(jctx, a.opts.Join, token, joinapi.Request{
		Name: a.opts.Name, PeerURL: a.opts.PeerURL, ClientURL: a.opts.ClientURL, APIURL: a.opts.APIURL,
	})
	if err != nil {
		return nil, err
	}
	dir := a.path(pkiDir)
	if err := atomicfile.WriteFile(dir+"/ca.crt", []byte(resp.CACert), 0o644); err != nil {
		return nil, err
	}
	if resp.CAKey != "" {
		if err := atomicfile.WriteFile(dir+"/ca.key", []byte(resp.CAKey), 0o600); err != nil {
			return nil, err
		}
	}
	if err := pki.WritePair(dir, "node", []byte(resp.NodeCert), []byte(resp.NodeKey)); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(a.path(tokenFile), []byte(resp.Token+"\n"), 0o600); err != nil {
		return nil, err
	}
	st := &nodeState{
		Name:      a.opts.Name,
		Member:    resp.Role == joinapi.RoleLearner,
		Endpoints: resp.ClientURLs,
		AuthDone:  true,
	}
	if st.Member {
		st.InitialCluster = resp.InitialCluster
		st.ClusterState = embed.ClusterStateFlagExisting
	}
	if err := a.saveNodeState(st); err != nil {
		return nil, err
	}
	a.log.Info("joined cluster", "role", resp.Role)
	return st, nil
}

func (a *Agent) tlsInfo() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:       a.path(pkiDir, "node.crt"),
		KeyFile:        a.path(pkiDir, "node.key"),
		TrustedCAFile:  a.path(pkiDir, "ca.crt"),
		ClientCertAuth: true,
	}
}

func (a *Agent) startEtcd(ctx context.Context) error {
	parse := func(raw string) (url.URL, error) {
		u, err := url.Parse(raw)
		if err != nil {
			return url.URL{}, fmt.Errorf("parse %q: %w", raw, err)
		}
		return *u, nil
	}
	peer, err := parse(a.opts.PeerURL)
	if err != nil {
		return err
	}
	client, err := parse(a.opts.ClientURL)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = a.opts.Name
	cfg.Dir = a.path(etcdDir)
	// All four URL lists explicitly: defaults would collide on localhost.
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = a.st.InitialCluster
	cfg.ClusterState = a.st.ClusterState
	if a.st.ClusterToken != "" {
		cfg.InitialClusterToken = a.st.ClusterToken
	}
	cfg.TickMs = uint(a.opts.HeartbeatInterval / time.Millisecond)
	cfg.ElectionMs = uint(a.opts.ElectionTimeout / time.Millisecond)
	cfg.ClientTLSInfo = a.tlsInfo()
	cfg.PeerTLSInfo = a.tlsInfo()
	if cfg.AuthToken, err = jwtAuthToken(a.path(pkiDir)); err != nil {
		return err
	}
	// History is compacted on a clock, not by revision count: a watcher
	// lagging or disconnected less than the retention resumes where it
	// was whatever the write rate; one that lags more gets "compacted"
	// and lists again (the scheduler and the rollout watchers do). etcd
	// runs the compactor on every member; only the leader's acts.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = a.opts.CompactionRetention.String()
	cfg.QuotaBackendBytes = a.opts.QuotaBytes
	cfg.Logger = "zap"
	cfg.LogLevel = a.opts.EtcdLogLevel
	cfg.LogOutputs = []string{a.opts.EtcdLogOutput}

	a.log.Info("starting embedded etcd", "peer_url", a.opts.PeerURL, "client_url", a.opts.ClientURL, "state", cfg.ClusterState)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		a.etcd.Store(e)
		return nil
	case err := <-e.Err():
		id, peers := e.Server.MemberID(), otherClientURLs(e)
		e.Close()
		if a.removedFromCluster(ctx, uint64(id), peers) {
			return errMemberRemoved
		}
		return fmt.Errorf("etcd: %w", err)
	case <-e.Server.StopNotify():
		id, peers := e.Server.MemberID(), otherClientURLs(e)
		e.Close()
		if a.removedFromCluster(ctx, uint64(id), peers) {
			return errMemberRemoved
		}
		return errors.New("etcd stopped while starting")
	case <-ctx.Done():
		e.Close()
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		e.Server.Stop()
		e.Close()
		return errors.New("etcd did not become ready within 2 minutes (cluster without quorum?)")
	}
}

// otherClientURLs are the other members' client URLs as this member's own
// copy of the membership knows them: a bootstrap node's saved endpoints
// may name only itself.
func otherClientURLs(e *embed.Etcd) []string {
	var out []string
	self := e.Server.MemberID()
	for _, m := range e.Server.Cluster().Members() {
		if m.ID != self {
			out = append(out, m.ClientURLs...)
		}
	}
	return out
}

// memberRemoved tells whether etcd stopped because the cluster removed
// this member.
func memberRemoved(e *embed.Etcd) bool {
	rc, ok := e.Server.Cluster().(interface{ IsIDRemoved(types.ID) bool })
	return ok && rc.IsIDRemoved(e.Server.MemberID())
}

// removedFromCluster asks the other members whether member id is still
// one of them: etcd stops a removed member on start without saying so to
// its embedder (it only logs it).
func (a *Agent) removedFromCluster(ctx context.Context, id uint64, known []string) bool {
	var others []string
	for _, ep := range append(append([]string(nil), a.st.Endpoints...), known...) {
		if ep != a.opts.ClientURL && !slices.Contains(others, ep) {
			others = append(others, ep)
		}
	}
	if len(others) == 0 || id == 0 {
		return false
	}
	tlsCfg, err := a.clientTLS()
	if err != nil {
		return false
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: others, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return false
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.MemberList(cctx)
	if err != nil {
		return false
	}
	for _, m := range resp.Members {
		if m.ID == id {
			return false
		}
	}
	return true
}

func (a *Agent) clientTLS() (*tls.Config, error) {
	tlsCfg, err := transport.TLSInfo{
		CertFile: a.path(pkiDir, "node.crt"), KeyFile: a.path(pkiDir, "node.key"),
		TrustedCAFile: a.path(pkiDir, "ca.crt"),
	}.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client TLS: %w", err)
	}
	return tlsCfg, nil
}

// localClient returns a client of this node's own etcd member.
func (a *Agent) localClient() (*clientv3.Client, error) {
	if a.local != nil {
		return a.local, nil
	}
	tlsCfg, err := a.clientTLS()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{a.opts.ClientURL},
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("local etcd client: %w", err)
	}
	a.local = cli
	return cli, nil
}

func (a *Agent) connect() error {
	tlsCfg, err := a.clientTLS()
	if err != nil {
		return err
	}
	eps := slices.Clone(a.st.Endpoints)
	if a.st.Member && !slices.Contains(eps, a.opts.ClientURL) && a.Role() == state.RoleVoter {
		eps = append(eps, a.opts.ClientURL)
	}
	if a.st.Member && len(eps) == 0 {
		eps = []string{a.opts.ClientURL}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		TLS:                  tlsCfg,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		AutoSyncInterval:     15 * time.Second, // follow membership changes
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	a.cli = cli
	return nil
}

// setupAuth creates the users and roles of a new cluster and turns auth
// on. Every step tolerates "already exists" so an interrupted bootstrap can
// run it again.
func (a *Agent) setupAuth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg, _ := json.Marshal(state.ClusterConfig{
		Voters:           a.opts.Voters,
		DeadAfterSeconds: int(a.opts.DeadAfter / time.Second),
		CAHash:           a.caHash(),
	})
	role, _ := json.Marshal(state.RoleEntry{Role: state.RoleVoter, PeerURL: a.opts.PeerURL, ClientURL: a.opts.ClientURL, APIURL: a.opts.APIURL})
	steps := []struct {
		what string
		do   func() error
	}{
		{"write cluster config", func() error { _, err := a.cli.Put(ctx, state.ClusterConfigKey, string(cfg)); return err }},
		{"write role", func() error { _, err := a.cli.Put(ctx, state.RoleKey(a.opts.Name), string(role)); return err }},
		{"add role root", func() error { _, err := a.cli.RoleAdd(ctx, "root"); return err }},
		{"add user root", func() error { return a.addUser(ctx, "root", "root") }},
		{"add node user", func() error { return a.addUser(ctx, a.opts.Name, "root") }},
		{"add role ops", func() error { _, err := a.cli.RoleAdd(ctx, OpsUser); return err }},
		{"grant ops read", func() error {
			_, err := a.cli.RoleGrantPermission(ctx, OpsUser, state.Prefix, clientv3.GetPrefixRangeEnd(state.Prefix), clientv3.PermissionType(clientv3.PermRead))
			return err
		}},
		{"add user ops", func() error { return a.addUser(ctx, OpsUser, OpsUser) }},
		{"add user admin", func() error { return a.addUser(ctx, AdminUser, "root") }},
		{"enable auth", func() error { _, err := a.cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil && !isAlreadyExists(err) {
			return fmt.Errorf("bootstrap auth: %s: %w", s.what, err)
		}
	}
	a.log.Info("etcd auth enabled", "ops_role", "read-only "+state.Prefix)
	return nil
}

// OpsUser is the etcd user (and certificate CN) of operators: read-only on
// the berth prefix.
const OpsUser = "ops"

// AdminUser is the etcd user (and certificate CN) of cluster
// administrators: full access, as the nodes have.
const AdminUser = "admin"

func (a *Agent) addUser(ctx context.Context, name, role string) error {
	if _, err := a.cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !isAlreadyExists(err) {
		return err
	}
	_, err := a.cli.UserGrantRole(ctx, name, role)
	return err
}

func (a *Agent) caHash() string {
	cert, _, err := pki.LoadCACert(a.path(pkiDir, "ca.crt"))
	if err != nil {
		return ""
	}
	return pki.CAHash(cert)
}

// startAPI serves the agent's HTTPS API: the join endpoint where this node
// holds the CA key, and whatever Options.API adds (node API, registry).
// Client certificates are verified when given, so handlers can tell
// cluster identities (r.TLS.VerifiedChains) from anonymous callers.
func (a *Agent) startAPI() (*http.Server, error) {
	mux := http.NewServeMux()
	if exists(a.path(pkiDir, "ca.key")) {
		join, err := a.joinHandler()
		if err != nil {
			return nil, err
		}
		mux.Handle(joinapi.Path, join)
		mux.Handle(joinapi.CAPath, join)
	}
	if a.opts.API != nil {
		a.opts.API(mux)
	}
	ca, err := os.ReadFile(a.path(pkiDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	nodeCert, err := os.ReadFile(a.path(pkiDir, "node.crt"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	nodeKey, err := os.ReadFile(a.path(pkiDir, "node.key"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	tlsCfg, err := joinapi.ServerTLSConfig(nodeCert, nodeKey, ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tlsCfg.ClientCAs = pool
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	u, err := url.Parse(a.opts.APIURL)
	if err != nil {
		return nil, fmt.Errorf("api url: %w", err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent API stopped", "err", err)
		}
	}()
	a.log.Info("agent API listening", "url", a.opts.APIURL)
	return srv, nil
}

func (a *Agent) joinHandler() (http.Handler, error) {
	ca, err := pki.LoadCA(a.path(pkiDir))
	if err != nil {
		return nil, err
	}
	caKey, err := os.ReadFile(a.path(pkiDir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("join API: %w", err)
	}
	tokenText, err := os.ReadFile(a.path(tokenFile))
	if err != nil {
		return nil, fmt.Errorf("join API: %w", err)
	}
	token, err := pki.ParseToken(string(trimSpace(tokenText)))
	if err != nil {
		return nil, fmt.Errorf("join API: token file: %w", err)
	}
	return &joinapi.Server{
		Client: a.cli, CA: ca, CAKeyPEM: caKey, Token: token, SelfName: a.opts.Name,
		Log: a.log.With("component", "joinapi"), Joined: func(o string) { joinsTotal.WithLabelValues(o).Inc() },
	}, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func (a *Agent) newPublisher() *state.Publisher {
	c := a.opts.Collector
	if c == nil {
		host := a.opts.ClientURL
		if u, err := url.Parse(a.opts.ClientURL); err == nil {
			host = u.Hostname()
		}
		c = &state.Collector{
			Name: a.opts.Name, Addresses: []string{host}, ClientURL: a.opts.ClientURL,
			AgentVersion: a.opts.AgentVersion, Started: time.Now(), Log: a.log,
			Labels: a.opts.Labels, Containers: a.opts.Containers,
		}
	}
	var mu sync.Mutex // the publisher may collect from more than one goroutine
	collect := func() state.Node {
		mu.Lock()
		defer mu.Unlock()
		c.Role = a.Role()
		if c.ClientURL == "" {
			c.ClientURL = a.opts.ClientURL
		}
		if c.Ready == nil {
			c.Ready = a.Ready
		}
		if c.Draining == nil {
			c.Draining = a.opts.Draining
		}
		if c.EtcdSpace == nil {
			c.EtcdSpace = a.Space
		}
		return c.Collect()
	}
	p := state.NewPublisher(a.cli, a.opts.Name, collect, a.opts.NodeTTL)
	p.Interval = a.opts.NodeRefresh
	p.Log = a.log
	p.OnWrite = func(reason string) { nodeWritesTotal.WithLabelValues(reason).Inc() }
	return p
}
