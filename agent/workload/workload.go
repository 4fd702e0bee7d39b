// Package workload runs on every node: it makes the containers on the node
// match the assignments the scheduler wrote under the node's own prefix
// (assign/<node>/), reports each replica's status, applies tenant quotas and
// accounts each tenant's usage.
//
// It acts only on what it read from etcd. A node that loses etcd keeps its
// containers running (their monitors do not depend on the agent) and keeps
// restarting them by their policy; it never stops a container because etcd
// is unreachable.
package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/netsetup"
	"github.com/berth-os/berth/agent/runtime"
	"github.com/berth-os/berth/agent/volume"
	"github.com/berth-os/berth/internal/retry"
)

// ImageStore is what the manager needs of agent/images.
type ImageStore interface {
	Get(refOrDigest string) (images.Image, error)
	Pull(ctx context.Context, ref string) (images.Image, error)
	PullWithAuth(ctx context.Context, ref string, auth authn.Authenticator) (images.Image, error)
	Mount(ctx context.Context, digest, id string) (string, error)
	Unmount(id string) error
	GC(ctx context.Context, inUse func(digest string) bool) (int64, error)
}

// Network is what the manager needs of agent/netsetup.
type Network interface {
	Attach(id string) (netsetup.Attachment, error)
	Detach(id string) error
}

// ReplicatedVolumes attaches volumes kept on two nodes (replicas: 2;
// agent/volume.Local implements it).
type ReplicatedVolumes interface {
	// Attach makes the volume primary on this node and returns the host
	// path to mount into the container.
	Attach(ctx context.Context, id volume.ID, size int64) (string, error)
	// Release gives up the replica's volumes after its container stopped.
	Release(ctx context.Context, tenant, job string, replica int) error
}

// Options configure a Manager.
type Options struct {
	// Replicated attaches replicated volumes; nil: a replica that has one
	// fails to start here, saying so.
	Replicated ReplicatedVolumes
	Node       string
	Runtime    runtime.Runtime
	Images     ImageStore
	// Network opens the node's container network on first use; nil gives
	// containers a loopback-only network namespace.
	Network func() (Network, error)
	// VolumesDir holds persistent volumes: VolumesDir/<tenant>/<job>/<replica>/<volume>.
	VolumesDir string
	// PortBindIP is the host address of port mappings (default 0.0.0.0).
	PortBindIP string
	// KernelPorts: published ports are programmed in the kernel by the
	// node network from Endpoints (TCP and UDP, client addresses kept);
	// without it the container's shim proxies TCP ports in user space
	// (a node whose network is not managed by agent/nodenet, and tests).
	KernelPorts bool
	// ResolvConf renders a tenant's containers' /etc/resolv.conf (the
	// node's service-name server first); nil leaves the image's file.
	ResolvConf func(tenant string) []byte
	// TenantCgroups is the cgroup parent of tenant subtrees (default berth/tenants).
	TenantCgroups string
	// LocalRegistry is HOST:PORT of this node's agent API; image
	// references under berth.local/ (the cluster registry) are pulled
	// from it, and it fetches what it lacks from the other agents.
	LocalRegistry string
	// StateDir keeps the usage counters across agent restarts.
	StateDir string
	// PollInterval is how often a replica checks its container (default 1 s).
	PollInterval time.Duration
	// UsageInterval is how often tenant usage is sampled and published (default 10 s).
	UsageInterval time.Duration
	// ImageGCInterval is how often images no container uses nor any
	// assignment names are deleted (default 10 min).
	ImageGCInterval time.Duration
	Log             *slog.Logger
}

// Manager reconciles this node's containers with its assignments.
type Manager struct {
	o   Options
	log *slog.Logger
	cli *clientv3.Client

	netOnce sync.Mutex
	net     Network

	mu      sync.Mutex
	workers map[replicaRef]*worker
	quotas  map[string]jobs.Quota // tenant -> quota, from etcd

	usage *usageBook

	// imagesInUse is held (read) from pull to mount, so the image garbage
	// collector (write) never deletes an image between the two.
	imagesInUse sync.RWMutex

	addrMu    sync.Mutex
	addrs     map[string]netsetup.Attachment // container ID -> addresses, for status reports
	endpoints map[string]Endpoint            // container ID -> what the node network publishes
	epChanged chan struct{}
}

// replicaRef names one replica of one job.
type replicaRef = jobs.ReplicaID

// assignment is an assignment with the etcd revision that fences status
// writes: a status is only written while this exact assignment key exists.
type assignment struct {
	jobs.Assignment
	createRev int64
}

// Container labels; they let a restarted agent adopt what its monitors kept running.
const (
	labelTenant     = "berth.tenant"
	labelJob        = "berth.job"
	labelReplica    = "berth.replica"
	labelGeneration = "berth.generation"
	labelJobRev     = "berth.job-revision"
	labelRestarts   = "berth.restarts"
	labelImage      = "berth.image-digest" // the manifest digest the container runs
)

// New checks options and returns a Manager; Run starts it.
func New(o Options) (*Manager, error) {
	if o.Node == "" || o.Runtime == nil || o.Images == nil {
		return nil, errors.New("workload: node, runtime and image store are required")
	}
	if o.VolumesDir == "" {
		o.VolumesDir = "/var/lib/berth/volumes"
	}
	if o.PortBindIP == "" {
		o.PortBindIP = "0.0.0.0"
	}
	if o.TenantCgroups == "" {
		o.TenantCgroups = "berth/tenants"
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.UsageInterval <= 0 {
		o.UsageInterval = 10 * time.Second
	}
	if o.ImageGCInterval <= 0 {
		o.ImageGCInterval = 10 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := &Manager{o: o, log: o.Log.With("component", "workload"), workers: map[replicaRef]*worker{}, quotas: map[string]jobs.Quota{}, addrs: map[string]netsetup.Attachment{},
		endpoints: map[string]Endpoint{}, epChanged: make(chan struct{}, 1)}
	book, err := openUsageBook(o.StateDir)
	if err != nil {
		return nil, err
	}
	m.usage = book
	return m, nil
}

// Run adopts the node's existing containers and reconciles until ctx ends.
// Containers keep running when Run returns: stopping the agent is not
// stopping the node's workloads.
func (m *Manager) Run(ctx context.Context, cli *clientv3.Client) error {
	m.cli = cli
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()

	if err := m.adopt(ctx); err != nil {
		return err
	}
	wg.Go(func() { m.watchQuotas(ctx) })
	wg.Go(func() { m.accountUsage(ctx) })
	wg.Go(func() { m.collectImages(ctx) })

	// Not retry.Do: syncAssignments has no success, it follows the
	// assignments until ctx ends or the watch breaks.
	backoff := retry.NewBackoff(retry.Policy{Initial: time.Second, Max: 10 * time.Second})
	for ctx.Err() == nil {
		err := m.syncAssignments(ctx)
		if ctx.Err() != nil {
			break
		}
		wait := backoff.Next()
		m.log.Warn("assignment watch interrupted; containers keep running", "err", err, "retry_in", wait)
		retry.Sleep(ctx, wait)
	}
	m.mu.Lock()
	for _, w := range m.workers {
		w.stopLoop()
	}
	m.mu.Unlock()
	return nil
}

// adopt starts a worker for every berth container found on the node, so
// nothing is started twice after an agent restart. Until the assignments
// are read, each worker keeps its container as it is.
func (m *Manager) adopt(ctx context.Context) error {
	states, err := m.o.Runtime.List(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, st := range states {
		ref, ok := refFromLabels(st.Labels)
		if !ok {
			continue
		}
		w := m.workerLocked(ctx, ref)
		w.adopt(st)
		m.log.Info("adopted container", "id", st.ID, "replica", ref.String(), "status", st.Status)
	}
	return nil
}

func refFromLabels(l map[string]string) (replicaRef, bool) {
	r, err := strconv.Atoi(l[labelReplica])
	if err != nil || l[labelTenant] == "" || l[labelJob] == "" {
		return replicaRef{}, false
	}
	return replicaRef{Tenant: l[labelTenant], Job: l[labelJob], Replica: r}, true
}

// syncAssignments reads the node's assignments, hands each worker what it
// should run (nothing, for adopted containers no longer assigned), then
// follows changes until the watch fails.
func (m *Manager) syncAssignments(ctx context.Context) error {
	prefix := jobs.AssignNodePrefix(m.o.Node)
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := m.cli.Get(gctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("read assignments: %w", err)
	}
	wanted := map[replicaRef]*assignment{}
	for _, kv := range resp.Kvs {
		if a, ok := m.decode(kv); ok {
			wanted[a.ref()] = a
		}
	}
	m.mu.Lock()
	for ref, a := range wanted {
		m.workerLocked(ctx, ref).setWant(a)
	}
	for ref, w := range m.workers {
		if wanted[ref] == nil {
			w.setWant(nil)
		}
	}
	m.mu.Unlock()

	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for wr := range m.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1), clientv3.WithPrevKV()) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			m.apply(ctx, ev)
		}
	}
	return errors.New("watch closed")
}

func (m *Manager) apply(ctx context.Context, ev *clientv3.Event) {
	if ev.Type == mvccpb.DELETE {
		ref, ok := refFromAssignKey(m.o.Node, string(ev.Kv.Key))
		if !ok {
			return
		}
		m.mu.Lock()
		if w := m.workers[ref]; w != nil {
			w.setWant(nil)
		}
		m.mu.Unlock()
		return
	}
	a, ok := m.decode(ev.Kv)
	if !ok {
		return
	}
	m.mu.Lock()
	m.workerLocked(ctx, a.ref()).setWant(a)
	m.mu.Unlock()
}

func refFromAssignKey(node, key string) (replicaRef, bool) {
	n, id, err := jobs.ParseAssignKey(key)
	if err != nil || n != node {
		return replicaRef{}, false
	}
	return id, true
}

func (m *Manager) decode(kv *mvccpb.KeyValue) (*assignment, bool) {
	var a jobs.Assignment
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		m.log.Error("unreadable assignment skipped", "key", string(kv.Key), "err", err)
		return nil, false
	}
	if a.Node != m.o.Node {
		m.log.Error("assignment for another node under our prefix skipped", "key", string(kv.Key), "node", a.Node)
		return nil, false
	}
	return &assignment{Assignment: a, createRev: kv.CreateRevision}, true
}

func (a *assignment) ref() replicaRef {
	return replicaRef{Tenant: a.Tenant, Job: a.Job, Replica: a.Replica}
}

// workerLocked returns the replica's worker, starting it if needed. m.mu is held.
func (m *Manager) workerLocked(ctx context.Context, ref replicaRef) *worker {
	if w := m.workers[ref]; w != nil {
		return w
	}
	w := newWorker(m, ref)
	m.workers[ref] = w
	go w.loop(ctx)
	return w
}

// forget drops a worker that has nothing left to do, unless it was given
// new work meanwhile.
func (m *Manager) forget(w *worker) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !w.idle() {
		return false
	}
	if m.workers[w.ref] == w {
		delete(m.workers, w.ref)
	}
	return true
}

// network opens the container network once, on first use.
func (m *Manager) network() (Network, error) {
	if m.o.Network == nil {
		return nil, nil
	}
	m.netOnce.Lock()
	defer m.netOnce.Unlock()
	if m.net != nil {
		return m.net, nil
	}
	n, err := m.o.Network()
	if err != nil {
		return nil, fmt.Errorf("container network: %w", err)
	}
	m.net = n
	return n, nil
}

// Containers returns the berth containers on this node with their
// replica identity, for the node API and the node document.
func (m *Manager) Containers(ctx context.Context) ([]ContainerInfo, error) {
	states, err := m.o.Runtime.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []ContainerInfo
	for _, st := range states {
		ref, ok := refFromLabels(st.Labels)
		if !ok {
			continue
		}
		restarts, _ := strconv.Atoi(st.Labels[labelRestarts])
		out = append(out, ContainerInfo{ID: st.ID, Tenant: ref.Tenant, Job: ref.Job, Replica: ref.Replica, Restarts: restarts, State: st})
	}
	return out, nil
}

// ContainerInfo is one container as the node API reports it.
type ContainerInfo struct {
	ID       string          `json:"id"`
	Tenant   string          `json:"tenant"`
	Job      string          `json:"job"`
	Replica  int             `json:"replica"`
	Restarts int             `json:"restarts"`
	State    runtime.State   `json:"state"`
	Stats    *runtime.Stats  `json:"stats,omitempty"`
	Usage    *ContainerUsage `json:"usage,omitempty"`
}

// ContainerUsage is derived from Stats for people: CPU in cores used over
// the sampling window.
type ContainerUsage struct {
	CPUCores float64 `json:"cpu_cores"`
}

// Counts reports running and total berth containers for the node document.
func (m *Manager) Counts(ctx context.Context) (running, total int) {
	cs, err := m.Containers(ctx)
	if err != nil {
		return 0, 0
	}
	for _, c := range cs {
		total++
		if c.State.Status == runtime.StatusRunning {
			running++
		}
	}
	return running, total
}

// collectImages deletes, now and then, the images that no container on the
// node uses and no assignment of the node names (shared layers of kept
// images stay).
func (m *Manager) collectImages(ctx context.Context) {
	tick := time.NewTicker(m.o.ImageGCInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		freed, err := m.CollectImages(ctx)
		if err != nil {
			m.log.Warn("image garbage collection", "err", err)
		} else if freed > 0 {
			m.log.Info("unused images deleted", "freed_bytes", freed)
		}
	}
}

// CollectImages runs one image garbage collection and returns the bytes freed.
func (m *Manager) CollectImages(ctx context.Context) (int64, error) {
	m.imagesInUse.Lock()
	defer m.imagesInUse.Unlock()
	wanted := map[string]bool{}
	m.mu.Lock()
	for _, w := range m.workers {
		w.mu.Lock()
		if w.want != nil && w.want.Spec.ImageDigest != "" {
			wanted[w.want.Spec.ImageDigest] = true
		} else if w.want != nil {
			// An unpinned job: keep what its tag last pulled (mounted
			// images are kept anyway).
			if ref, err := m.imageRef(w.ref.Tenant, w.want.Spec); err == nil {
				if img, err := m.o.Images.Get(ref); err == nil {
					wanted[img.Digest] = true
				}
			}
		}
		w.mu.Unlock()
	}
	m.mu.Unlock()
	return m.o.Images.GC(ctx, func(digest string) bool { return wanted[digest] })
}
