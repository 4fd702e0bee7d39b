package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Publisher keeps a node's document in etcd under a lease: the lease is
// kept alive with KeepAlive (one stream for all leases of the client, not a
// re-put of a TTL key), so the document vanishes TTL seconds after the node
// stops answering, and the document is re-put on a timer and on changes.
type Publisher struct {
	cli     *clientv3.Client
	name    string
	collect func() Node
	ttl     time.Duration

	// Interval is how often the document is re-put (the heartbeat).
	Interval time.Duration
	// Poll is how often the document is collected to look for changes that
	// are published before the next heartbeat.
	Poll time.Duration
	// RequestTimeout bounds each etcd call.
	RequestTimeout time.Duration
	Log            *slog.Logger

	trigger   chan struct{}
	readyOnce sync.Once
	ready     chan struct{}
}

// NewPublisher publishes collect()'s document as NodeKey(name) with a lease
// of ttl (DefaultTTL when zero). Schema and Name are set by the publisher;
// Heartbeat is set to the time of each put.
func NewPublisher(cli *clientv3.Client, name string, collect func() Node, ttl time.Duration) *Publisher {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	return &Publisher{
		cli: cli, name: name, collect: collect, ttl: ttl,
		Interval:       3 * time.Second,
		Poll:           time.Second,
		RequestTimeout: 3 * time.Second,
		Log:            slog.Default(),
		trigger:        make(chan struct{}, 1),
		ready:          make(chan struct{}),
	}
}

// Published is closed after the first successful put, for readiness
// signals (sd_notify READY=1).
func (p *Publisher) Published() <-chan struct{} { return p.ready }

// Trigger asks for a put now, e.g. after the updater changed state.
func (p *Publisher) Trigger() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// errLeaseLost ends one lease's publishing loop so that Run grants anew.
var errLeaseLost = errors.New("lease lost")

// Run publishes until ctx is done, then revokes the lease so the document
// disappears at once, and returns nil. etcd being unreachable is not an
// error: Run retries with backoff and grants a new lease once the old one
// expired. Only bad arguments make it return an error.
func (p *Publisher) Run(ctx context.Context) error {
	if err := CheckName(p.name); err != nil {
		return fmt.Errorf("publish node document: %w", err)
	}
	if p.cli == nil || p.collect == nil {
		return fmt.Errorf("publish node document %q: nil client or collect function", p.name)
	}
	if p.ttl < 2*time.Second || p.ttl%time.Second != 0 {
		return fmt.Errorf("publish node document %q: lease TTL %v must be whole seconds and at least 2s", p.name, p.ttl)
	}
	if p.Interval <= 0 || p.Interval >= p.ttl {
		return fmt.Errorf("publish node document %q: interval %v must be positive and shorter than the TTL %v", p.name, p.Interval, p.ttl)
	}
	backoff := newBackoff(200*time.Millisecond, p.ttl/2)
	for {
		err := p.runLease(ctx, backoff)
		if ctx.Err() != nil {
			return nil
		}
		p.Log.Warn("node document lease lost, granting a new one", "node", p.name, "err", err)
		if !sleepCtx(ctx, backoff.next()) {
			return nil
		}
	}
}

// runLease grants one lease and publishes with it until the lease is lost
// or ctx is done.
func (p *Publisher) runLease(ctx context.Context, backoff *backoff) error {
	lease, err := p.grant(ctx)
	if err != nil {
		return err
	}
	leaseCtx, stop := context.WithCancel(ctx)
	defer stop()
	defer p.revoke(lease)

	last, err := p.put(ctx, lease)
	if err != nil {
		return err
	}
	backoff.reset()

	kaCh, err := p.cli.KeepAlive(leaseCtx, lease)
	if err != nil {
		return fmt.Errorf("keep lease %x alive: %w", lease, err)
	}
	heartbeat := time.NewTicker(p.Interval)
	defer heartbeat.Stop()
	poll := time.NewTicker(p.Poll)
	defer poll.Stop()
	for {
		doPut := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-kaCh:
			// The channel closes when the lease expired on the server,
			// was revoked, or no keepalive answer came within the TTL.
			if !ok {
				return fmt.Errorf("%w: keepalive of lease %x ended", errLeaseLost, lease)
			}
		case <-heartbeat.C:
			doPut = true
		case <-p.trigger:
			doPut = true
		case <-poll.C:
			doPut = !sameContent(last, p.document())
		}
		if !doPut {
			continue
		}
		doc, err := p.put(ctx, lease)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return fmt.Errorf("%w: %v", errLeaseLost, err)
		case err != nil:
			// Transient: the keepalive decides whether the lease survives.
			p.Log.Warn("publish node document", "node", p.name, "err", err)
		default:
			last = doc
		}
	}
}

func (p *Publisher) document() Node {
	n := p.collect()
	n.Schema = Schema
	n.Name = p.name
	return n
}

func (p *Publisher) grant(ctx context.Context) (clientv3.LeaseID, error) {
	cctx, cancel := context.WithTimeout(ctx, p.RequestTimeout)
	defer cancel()
	resp, err := p.cli.Grant(cctx, int64(p.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease for node %q: %w", p.name, err)
	}
	return resp.ID, nil
}

// put writes the current document with the lease and returns what it wrote.
func (p *Publisher) put(ctx context.Context, lease clientv3.LeaseID) (Node, error) {
	doc := p.document()
	doc.Heartbeat = time.Now().UTC().Truncate(time.Second)
	data, err := doc.Marshal()
	if err != nil {
		return Node{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, p.RequestTimeout)
	defer cancel()
	if _, err := p.cli.Put(cctx, NodeKey(p.name), string(data), clientv3.WithLease(lease)); err != nil {
		return Node{}, fmt.Errorf("put %s: %w", NodeKey(p.name), err)
	}
	p.readyOnce.Do(func() { close(p.ready) })
	return doc, nil
}

// revoke removes the document at once on a clean stop instead of leaving
// it for the TTL; failures only mean the TTL does it.
func (p *Publisher) revoke(lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := p.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		p.Log.Debug("revoke node document lease", "node", p.name, "err", err)
	}
}

type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d
}

func (b *backoff) reset() { b.cur = b.min }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
