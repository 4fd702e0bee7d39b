package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdMember owns this node's embedded etcd member: its configuration,
// its start (until ready or refused), a client of it alone, and its stop.
// A client node holds one that never starts, unless it is promoted.
type etcdMember struct {
	dir       dataDir
	name      string
	peerURL   string
	clientURL string
	heartbeat time.Duration
	election  time.Duration
	quota     int64
	// retention is periodic auto-compaction's history.
	retention time.Duration
	logLevel  string
	logOutput string
	log       *slog.Logger

	e atomic.Pointer[embed.Etcd] // set once ready (maybe late, after promotion of a client)

	mu sync.Mutex // guards local
	// local talks to this member only. The leader's agent promotes
	// learners through it: a follower forwards MemberPromote to the leader
	// over the peer API without the caller's auth identity, and the leader
	// refuses it ("auth: user name is empty").
	local *clientv3.Client
}

func newEtcdMember(dir dataDir, opts *Options) *etcdMember {
	return &etcdMember{
		dir: dir, name: opts.Name, peerURL: opts.PeerURL, clientURL: opts.ClientURL,
		heartbeat: opts.HeartbeatInterval, election: opts.ElectionTimeout,
		quota: opts.QuotaBytes, retention: opts.CompactionRetention,
		logLevel: opts.EtcdLogLevel, logOutput: opts.EtcdLogOutput, log: opts.Log,
	}
}

// config is etcd's configuration for this member, first started as rec
// says.
func (m *etcdMember) config(rec *dataDirRecord) (*embed.Config, error) {
	parse := func(setting, raw string) (url.URL, error) {
		u, err := url.Parse(raw)
		if err != nil {
			return url.URL{}, fmt.Errorf("%s: parse %q: %w", setting, raw, err)
		}
		return *u, nil
	}
	peer, err := parse("peer-url", m.peerURL)
	if err != nil {
		return nil, err
	}
	client, err := parse("client-url", m.clientURL)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir.path(etcdDir)
	// All four URL lists explicitly: defaults would collide on localhost.
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = rec.InitialCluster
	cfg.ClusterState = rec.ClusterState
	if rec.ClusterToken != "" {
		cfg.InitialClusterToken = rec.ClusterToken
	}
	cfg.TickMs = uint(m.heartbeat / time.Millisecond)
	cfg.ElectionMs = uint(m.election / time.Millisecond)
	cfg.ClientTLSInfo = m.dir.tlsInfo()
	cfg.PeerTLSInfo = m.dir.tlsInfo()
	if cfg.AuthToken, err = jwtAuthToken(m.dir.path(pkiDir)); err != nil {
		return nil, err
	}
	// History is compacted on a clock, not by revision count: a watcher
	// lagging or disconnected less than the retention resumes where it
	// was whatever the write rate; one that lags more gets "compacted"
	// and lists again (the scheduler and the rollout watchers do). etcd
	// runs the compactor on every member; only the leader's acts.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = m.retention.String()
	cfg.QuotaBackendBytes = m.quota
	cfg.Logger = "zap"
	cfg.LogLevel = m.logLevel
	cfg.LogOutputs = []string{m.logOutput}
	return cfg, nil
}

// start starts the member and waits until it is ready. errMemberRemoved
// means the cluster removed this member while it was down.
func (m *etcdMember) start(ctx context.Context, rec *dataDirRecord) error {
	cfg, err := m.config(rec)
	if err != nil {
		return err
	}
	m.log.Info("starting embedded etcd", "peer_url", m.peerURL, "client_url", m.clientURL, "state", cfg.ClusterState)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		m.e.Store(e)
		return nil
	case err := <-e.Err():
		id, peers := e.Server.MemberID(), otherClientURLs(e)
		e.Close()
		if m.removedFromCluster(ctx, uint64(id), append(slices.Clone(rec.Endpoints), peers...)) {
			return errMemberRemoved
		}
		return fmt.Errorf("etcd: %w", err)
	case <-e.Server.StopNotify():
		id, peers := e.Server.MemberID(), otherClientURLs(e)
		e.Close()
		if m.removedFromCluster(ctx, uint64(id), append(slices.Clone(rec.Endpoints), peers...)) {
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

// running reports whether the member was started and became ready.
func (m *etcdMember) running() bool { return m.e.Load() != nil }

// leads reports whether this member is the etcd leader.
func (m *etcdMember) leads() bool {
	e := m.e.Load()
	return e != nil && e.Server.Leader() == e.Server.MemberID()
}

// id is the member's ID (0 before it runs).
func (m *etcdMember) id() uint64 {
	if e := m.e.Load(); e != nil {
		return uint64(e.Server.MemberID())
	}
	return 0
}

// status is what etcd's Status RPC would answer for this member, read
// from the server in this process: the RPC dials a new TLS connection per
// call, which the space loop's look every few seconds paid for on every
// node (a handshake costs tens of milliseconds of CPU under emulation).
func (m *etcdMember) status() (*clientv3.StatusResponse, error) {
	e := m.e.Load()
	if e == nil {
		return nil, errors.New("etcd member not running")
	}
	s := e.Server
	resp := &clientv3.StatusResponse{
		Header:           &etcdserverpb.ResponseHeader{MemberId: uint64(s.MemberID()), Revision: s.KV().Rev(), RaftTerm: s.Term()},
		Leader:           uint64(s.Leader()),
		RaftIndex:        s.CommittedIndex(),
		RaftAppliedIndex: s.AppliedIndex(),
		RaftTerm:         s.Term(),
		DbSize:           s.Backend().Size(),
		DbSizeInUse:      s.Backend().SizeInUse(),
		IsLearner:        s.IsLearner(),
	}
	for _, a := range s.Alarms() {
		resp.Errors = append(resp.Errors, a.String())
	}
	return resp, nil
}

// leader is the leader's member ID as this member knows it.
func (m *etcdMember) leader() uint64 {
	if e := m.e.Load(); e != nil {
		return uint64(e.Server.Leader())
	}
	return 0
}

// learner reads this member's learner flag from its own copy of the
// membership; known is false before it runs or while it is not listed.
func (m *etcdMember) learner() (learner, known bool) {
	e := m.e.Load()
	if e == nil {
		return false, false
	}
	self := e.Server.Cluster().Member(e.Server.MemberID())
	if self == nil {
		return false, false
	}
	return self.IsLearner, true
}

// failed delivers the running member's fatal error or its stop; both are
// nil channels (never ready) when it does not run.
func (m *etcdMember) failed() (<-chan error, <-chan struct{}) {
	e := m.e.Load()
	if e == nil {
		return nil, nil
	}
	return e.Err(), e.Server.StopNotify()
}

// removed tells whether etcd stopped because the cluster removed this
// member.
func (m *etcdMember) removed() bool {
	e := m.e.Load()
	if e == nil {
		return false
	}
	rc, ok := e.Server.Cluster().(interface{ IsIDRemoved(types.ID) bool })
	return ok && rc.IsIDRemoved(e.Server.MemberID())
}

// close closes the local client, then stops the member.
func (m *etcdMember) close() {
	m.mu.Lock()
	if m.local != nil {
		m.local.Close()
		m.local = nil
	}
	m.mu.Unlock()
	if e := m.e.Load(); e != nil {
		e.Close()
	}
}

// localClient returns a client of this member alone, made on first use.
func (m *etcdMember) localClient() (*clientv3.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.local != nil {
		return m.local, nil
	}
	tlsCfg, err := m.dir.clientTLS()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{m.clientURL},
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("local etcd client: %w", err)
	}
	m.local = cli
	return cli, nil
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

// removedFromCluster asks the other members at endpoints whether member
// id is still one of them: etcd stops a removed member on start without
// saying so to its embedder (it only logs it).
func (m *etcdMember) removedFromCluster(ctx context.Context, id uint64, endpoints []string) bool {
	var others []string
	for _, ep := range endpoints {
		if ep != m.clientURL && !slices.Contains(others, ep) {
			others = append(others, ep)
		}
	}
	if len(others) == 0 || id == 0 {
		return false
	}
	tlsCfg, err := m.dir.clientTLS()
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
	for _, member := range resp.Members {
		if member.ID == id {
			return false
		}
	}
	return true
}
