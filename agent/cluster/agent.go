// Package cluster runs a node's share of the berth cluster: the embedded
// etcd member (or a plain client on nodes beyond the voter target), the
// bootstrap of a new cluster, joining an existing one, restarts from the data
// dir, the join API for new nodes, learner promotion and self-healing.
//
// Agent (New, Run) is the one entry; it wires parts that each own one job:
// the provisioner makes the data-dir record (provision.go, rejoin.go), the
// etcdMember runs the embedded etcd (etcdmember.go), setupAuth creates the
// users and roles (auth.go), the apiServer serves the HTTPS API
// (apiserver.go), and the loops promote, heal (members.go) and keep etcd's
// space (spaceloop.go) on pure decisions (membership.go, space.go).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Agent is one node's cluster agent.
type Agent struct {
	opts Options
	log  *slog.Logger

	prov    *provisioner
	member  *etcdMember
	records *recordStore // set by Run once the record is known
	cli     *clientv3.Client
	pub     atomic.Pointer[nodedoc.Publisher]

	role     atomic.Value // string: nodedoc.RoleVoter, RoleLearner or RoleClient
	space    atomic.Value // string: nodedoc.SpaceLow, SpaceFull or ""
	ready    atomic.Bool
	etcdDown atomic.Bool
	readyCh  chan struct{}
}

// New checks opts and returns an Agent ready to Run.
func New(opts Options) (*Agent, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	dir := dataDir(opts.DataDir)
	a := &Agent{
		opts: opts,
		log:  opts.Log,
		prov: &provisioner{
			dir: dir, name: opts.Name, clusterName: opts.ClusterName,
			peerURL: opts.PeerURL, clientURL: opts.ClientURL, apiURL: opts.APIURL,
			voters: opts.Voters, join: slices.Clone(opts.Join), token: opts.Token,
			tokenOutput: opts.TokenOutput, log: opts.Log, containers: opts.LeasesSubnets,
		},
		member:  newEtcdMember(dir, &opts),
		readyCh: make(chan struct{}),
	}
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
		var rec *dataDirRecord
		if a.records != nil {
			rec = a.records.get()
		}
		if perr := a.prov.clearForRejoin(rec); perr != nil {
			return fmt.Errorf("%w; clearing the data dir to rejoin failed: %v", err, perr)
		}
		return fmt.Errorf("this node was removed from the cluster while it was down (longer than dead_after): its cluster data was cleared, the next start joins again: %w", err)
	}
	return err
}

func (a *Agent) run(ctx context.Context) error {
	rec, err := a.prov.open(ctx)
	if err != nil {
		return err
	}
	a.records = &recordStore{dir: a.prov.dir, rec: rec}

	if rec.Member {
		a.setRole(nodedoc.RoleLearner) // until the member list says otherwise
		if err := a.member.start(ctx, rec.clone()); err != nil {
			return err
		}
	} else {
		a.setRole(nodedoc.RoleClient)
	}
	// Close etcd last, after the clients: deferred first.
	defer a.member.close()
	if err := a.connect(rec); err != nil {
		return err
	}
	defer a.cli.Close()

	if rec.Member && !rec.AuthDone {
		if err := setupAuth(ctx, a.cli, a.authSetup(), a.log); err != nil {
			return err
		}
		err := a.records.update(func(r *dataDirRecord) bool { r.AuthDone = true; return true })
		if err != nil {
			return err
		}
	}
	if rec.Member {
		a.refreshRole(ctx)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	errc := make(chan error, 4)

	api := &apiServer{dir: a.prov.dir, url: a.opts.APIURL, self: a.opts.Name, cli: a.cli, extra: a.opts.API, log: a.log, room: a.opts.SubnetRoom}
	if err := api.start(); err != nil {
		return err
	}
	defer api.close()
	for _, svc := range a.opts.Services {
		wg.Go(func() {
			if err := svc(ctx, a.cli); err != nil && ctx.Err() == nil {
				errc <- err
			}
		})
	}
	if rec.Member {
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

	// A client promoted later watches its new member in becomeMember.
	etcdErr, etcdStopped := a.member.failed()
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
			if a.member.removed() {
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

// authSetup is what this bootstrapping node writes before auth is on.
func (a *Agent) authSetup() authSetup {
	return authSetup{
		Node: a.opts.Name,
		Config: nodedoc.ClusterConfig{
			Voters:           a.opts.Voters,
			DeadAfterSeconds: int(a.opts.DeadAfter / time.Second),
			CAHash:           caHash(a.prov.dir),
		},
		Role: nodedoc.RoleEntry{Role: nodedoc.RoleVoter, PeerURL: a.opts.PeerURL, ClientURL: a.opts.ClientURL, APIURL: a.opts.APIURL},
	}
}

func (a *Agent) publisher() *nodedoc.Publisher { return a.pub.Load() }

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

// connect makes the cluster client: the endpoints last known, plus this
// node's own member once it votes.
func (a *Agent) connect(rec *dataDirRecord) error {
	tlsCfg, err := a.prov.dir.clientTLS()
	if err != nil {
		return err
	}
	eps := slices.Clone(rec.Endpoints)
	if rec.Member && !slices.Contains(eps, a.opts.ClientURL) && a.Role() == nodedoc.RoleVoter {
		eps = append(eps, a.opts.ClientURL)
	}
	if rec.Member && len(eps) == 0 {
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
