package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/volume/thinpool"
)

// Local is this node's side of replicated volumes, run by the agent as a
// service (Run). The workload manager calls Attach before a replica's
// container starts and Release after it stopped; Run opens the node's
// pool, keeps every copy on this node in DRBD (secondary until its
// replica attaches) and tells etcd when a peer the owner replicates to is
// up to date again.
type Local struct {
	Host *Host // its Pool is set by Run from Pool
	Pool thinpool.Config
	Node string
	Log  *slog.Logger
	// Every is how often Run looks at the records (default 2 s).
	Every time.Duration

	mu     sync.Mutex
	onNode map[ID]Resource // this node's copies as the last reconcile saw them, for metrics

	ready   chan struct{} // closed once Run has a client and tried the pool
	cli     *clientv3.Client
	poolErr error
	free    atomic.Pointer[nodedoc.VolumePool]
}

// NewLocal returns the node's volume side; Run starts it.
func NewLocal(node string, host *Host, pool thinpool.Config, log *slog.Logger) *Local {
	return &Local{Host: host, Pool: pool, Node: node, Log: log, ready: make(chan struct{})}
}

// Space is the node document's volume_pool: nil until the pool is open,
// or when this node has none (then it takes no copies).
func (l *Local) Space() *nodedoc.VolumePool { return l.free.Load() }

func (l *Local) noteSpace() {
	if p := l.Host.Pool; p != nil {
		size, free := p.Space()
		l.free.Store(&nodedoc.VolumePool{SizeBytes: size, FreeBytes: free})
	}
}

// wait returns the client once Run started, and the pool's error.
func (l *Local) wait(ctx context.Context) (*clientv3.Client, error) {
	select {
	case <-l.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("replicated volumes not started on this node yet: %w", ctx.Err())
	}
	if l.poolErr != nil {
		return nil, fmt.Errorf("this node cannot hold replicated volumes: %w", l.poolErr)
	}
	return l.cli, nil
}

// Attach makes the replica's volume usable here and returns the host
// path to mount: it creates the volume (this node and one more) if it
// does not exist, wins ownership in etcd (Promote: refused while another
// live node owns it or if this copy may miss writes), brings the copy up
// and makes it primary.
func (l *Local) Attach(ctx context.Context, id ID, size int64) (string, error) {
	cli, err := l.wait(ctx)
	if err != nil {
		return "", err
	}
	defer l.noteSpace()
	rec, err := Get(ctx, cli, id)
	if errors.Is(err, ErrNotFound) {
		rec, err = l.create(ctx, cli, id, size)
	}
	if err != nil {
		return "", err
	}
	if rec.SizeBytes != size {
		return "", fmt.Errorf("volume %s is %d bytes; the job asks for %d: a volume's size cannot change (remove it first, or keep the size)", id, rec.SizeBytes, size)
	}
	rec, err = PromoteNode(ctx, cli, id, l.Node, time.Now().UTC())
	if err != nil {
		return "", err
	}
	addrs, err := addresses(rec)
	if err != nil {
		return "", err
	}
	res, err := l.Host.Up(ctx, rec, addrs)
	if err != nil {
		return "", err
	}
	mp, err := l.Host.Promote(ctx, res, rec.Epoch)
	if err != nil {
		return "", err
	}
	l.log().Info("volume attached", "volume", id.String(), "epoch", rec.Epoch, "device", res.Device(), "mount", mp)
	return mp, nil
}

// Release demotes the replica's volumes owned here after its container
// stopped, and gives their ownership up so that another node may take
// them while this one is alive.
func (l *Local) Release(ctx context.Context, tenant, job string, replica int) error {
	cli, err := l.wait(ctx)
	if err != nil {
		return nil // nothing can be attached here
	}
	resp, err := cli.Get(ctx, fmt.Sprintf("%s%s/%s/%d/", Prefix, tenant, job, replica), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("release volumes of %s/%s/%d: %w", tenant, job, replica, err)
	}
	var errs []error
	for _, kv := range resp.Kvs {
		id, err := ParseKey(string(kv.Key))
		if err != nil {
			continue
		}
		rec, err := decode(kv.Value, id)
		if err != nil || rec.Owner != l.Node {
			continue
		}
		addrs, err := addresses(rec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res := ResourceOf(rec, addrs, l.Host.Agent)
		if err := l.Host.Demote(ctx, res); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := ReleaseNode(ctx, cli, id, l.Node, rec.Epoch); err != nil && !errors.Is(err, ErrDeposed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// create places the volume's second copy and stores the record; both
// copies start up to date (both empty; the first owner starts the pair
// in sync without copying).
func (l *Local) create(ctx context.Context, cli *clientv3.Client, id ID, size int64) (Record, error) {
	resp, err := cli.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return Record{}, fmt.Errorf("create volume %s: read nodes: %w", id, err)
	}
	var nodes []NodeSpace
	addr := map[string]string{}
	for _, kv := range resp.Kvs {
		n, err := nodedoc.ParseNode(kv.Value)
		if err != nil || len(n.Addresses) == 0 {
			continue
		}
		addr[n.Name] = n.Addresses[0]
		var free int64 // a node without a pool takes no copy
		if n.VolumePool != nil {
			free = n.VolumePool.FreeBytes
		}
		nodes = append(nodes, NodeSpace{Name: n.Name, Ready: n.Ready && !n.Draining, FreeBytes: free, Labels: n.Labels})
	}
	if addr[l.Node] == "" {
		return Record{}, fmt.Errorf("create volume %s: this node (%s) has no node document yet; try again", id, l.Node)
	}
	peers, err := PlaceCopies(nodes, CopyRequest{Volume: id, SizeBytes: size, Copies: 1, Keep: []string{l.Node}})
	if err != nil {
		return Record{}, err
	}
	now := time.Now().UTC()
	rec := Record{ID: id, SizeBytes: size, Copies: []Copy{
		{Node: l.Node, Address: addr[l.Node], State: UpToDate, Since: now, Reason: "new"},
		{Node: peers[0], Address: addr[peers[0]], State: UpToDate, Since: now, Reason: "new"},
	}}
	rec, err = Create(ctx, cli, rec)
	if err != nil {
		return Record{}, err
	}
	l.log().Info("volume created", "volume", id.String(), "size", size, "copies", nodesOf(rec), "minor", rec.Minor)
	return rec, nil
}

// addresses are the two copies' replication addresses.
func addresses(r Record) ([2]netip.Addr, error) {
	var out [2]netip.Addr
	if len(r.Copies) != 2 {
		return out, fmt.Errorf("volume %s has %d copies; a DRBD pair has 2", r.ID, len(r.Copies))
	}
	for i, c := range r.Copies {
		a, err := netip.ParseAddr(c.Address)
		if err != nil {
			return out, fmt.Errorf("volume %s: copy on %s has no usable address %q", r.ID, c.Node, c.Address)
		}
		out[i] = a
	}
	return out, nil
}

// Run opens the pool and keeps this node's copies up until ctx ends.
func (l *Local) Run(ctx context.Context, cli *clientv3.Client) error {
	// The kernel parts, loaded now so that a node without them says so
	// at start rather than at a replica's first attach.
	err := l.Host.run(ctx, "modprobe", "-a", "dm_thin_pool", "drbd")
	var pool *thinpool.Pool
	if err == nil {
		pool, err = thinpool.Open(ctx, l.Pool)
	}
	if err != nil {
		l.log().Warn("no replicated volumes on this node: its volume pool did not open", "err", err)
		l.poolErr = err
	} else {
		l.Host.Pool = pool
		l.noteSpace()
	}
	l.cli = cli
	close(l.ready)
	if err != nil {
		<-ctx.Done()
		return nil
	}
	every := l.Every
	if every <= 0 {
		every = 2 * time.Second
	}
	applied := map[ID]string{} // resource file last brought up, per volume
	for {
		l.reconcile(ctx, cli, applied)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// reconcile is one pass: every copy here up (adjusted when its resource
// changed), and, as the owner, a peer that is connected and up to date
// in DRBD recorded up to date in etcd.
func (l *Local) reconcile(ctx context.Context, cli *clientv3.Client, applied map[ID]string) {
	recs, _, err := List(ctx, cli)
	if err != nil {
		l.log().Debug("volumes: list", "err", err)
		return
	}
	here := map[ID]Resource{}
	defer func() {
		l.mu.Lock()
		l.onNode = here
		l.mu.Unlock()
	}()
	for _, rec := range recs {
		if _, ok := rec.Copy(l.Node); !ok {
			continue
		}
		addrs, err := addresses(rec)
		if err != nil {
			continue
		}
		res := ResourceOf(rec, addrs, l.Host.Agent)
		here[rec.ID] = res
		conf, _ := res.Config()
		st, err := l.Host.State(res)
		if err != nil {
			l.log().Warn("volumes: DRBD state", "err", err)
			return
		}
		if applied[rec.ID] != conf || !st.ConfiguredMinor {
			if _, err := l.Host.Up(ctx, rec, addrs); err != nil {
				l.log().Warn("volume copy not up", "volume", rec.ID.String(), "err", err)
				continue
			}
			applied[rec.ID] = conf
			st, _ = l.Host.State(res)
		}
		if rec.Owner != l.Node || st.Role != "Primary" || st.Connection != "Connected" || st.PeerDisk != "UpToDate" {
			continue
		}
		for _, c := range rec.Copies {
			if c.Node != l.Node && c.State != UpToDate {
				if _, err := MarkSynced(ctx, cli, rec.ID, l.Node, c.Node, rec.Epoch, time.Now().UTC()); err != nil {
					l.log().Warn("volume peer in sync, not recorded", "volume", rec.ID.String(), "peer", c.Node, "err", err)
				} else {
					l.log().Info("volume peer up to date again", "volume", rec.ID.String(), "peer", c.Node)
				}
			}
		}
	}
}

// copies is this node's copies as the last reconcile saw them.
func (l *Local) copies() map[ID]Resource {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.onNode
}

func (l *Local) log() *slog.Logger {
	if l.Log == nil {
		return slog.Default()
	}
	return l.Log
}
