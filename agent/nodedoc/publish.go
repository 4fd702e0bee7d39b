package nodedoc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/berth-os/berth/internal/retry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Publisher keeps a node's document in etcd under a lease: the lease is
// kept alive with KeepAlive (one stream for all leases of the client, not a
// re-put of a TTL key), so the document vanishes TTL seconds after the node
// stops answering. Liveness is that keep-alive alone: a put does not extend
// a lease, so the document is written only when WriteReason says so (a
// change, the slow refresh, a figure past its threshold) or on Trigger.
type Publisher struct {
	cli     *clientv3.Client
	name    string
	collect func() Node
	ttl     time.Duration

	// Interval is the slow refresh: how often the slowly changing figures
	// (load, free memory, uptime, the heartbeat time) are rewritten when
	// nothing else changed. Default DefaultRefresh.
	Interval time.Duration
	// Poll is how often the document is collected to look for changes.
	Poll time.Duration
	// RequestTimeout bounds each etcd call.
	RequestTimeout time.Duration
	Log            *slog.Logger
	// OnWrite, when set, is called after each successful put with its
	// reason (a WriteReason, "start" or "trigger"), for metrics.
	OnWrite func(reason string)
	// Linger, when set, is asked on a clean stop how long the document
	// should outlive the agent: more than zero re-puts it, not ready,
	// under a new lease of that many seconds instead of revoking it, so
	// that an agent restart does not make the node look gone (the
	// scheduler would move its running replicas); the next agent's first
	// put takes it over. Zero revokes at once (the node is shutting down).
	Linger func() time.Duration

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
		Interval:       DefaultRefresh,
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
	if p.Interval <= 0 || p.Poll <= 0 {
		return fmt.Errorf("publish node document %q: refresh interval %v and poll %v must be positive", p.name, p.Interval, p.Poll)
	}
	backoff := retry.NewBackoff(retry.Policy{Initial: 200 * time.Millisecond, Max: p.ttl / 2})
	for {
		err := p.runLease(ctx, backoff)
		if ctx.Err() != nil {
			return nil
		}
		p.Log.Warn("node document lease lost, granting a new one", "node", p.name, "err", err)
		if !retry.Sleep(ctx, backoff.Next()) {
			return nil
		}
	}
}

// runLease grants one lease and publishes with it until the lease is lost
// or ctx is done.
func (p *Publisher) runLease(ctx context.Context, backoff *retry.Backoff) error {
	lease, err := p.grant(ctx)
	if err != nil {
		return err
	}
	leaseCtx, stop := context.WithCancel(ctx)
	defer stop()
	defer func() {
		if ctx.Err() != nil && p.Linger != nil {
			if d := p.Linger(); d > 0 {
				p.linger(d)
			}
		}
		p.revoke(lease)
	}()

	last, err := p.put(ctx, lease, "start", p.document())
	if err != nil {
		return err
	}
	lastWrite := time.Now()
	backoff.Reset()

	kaCh, err := p.cli.KeepAlive(leaseCtx, lease)
	if err != nil {
		return fmt.Errorf("keep lease %x alive: %w", lease, err)
	}
	poll := time.NewTicker(p.Poll)
	defer poll.Stop()
	var retryAt time.Time // after a failed put: not before then
	putBackoff := retry.NewBackoff(retry.Policy{Initial: p.Poll, Max: 30 * time.Second})
	var lastErr string
	for {
		var reason string
		var doc Node
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-kaCh:
			// The channel closes when the lease expired on the server,
			// was revoked, or no keepalive answer came within the TTL.
			if !ok {
				if kaCh, err = p.rekeep(leaseCtx, lease); err != nil {
					return err
				}
			}
		case <-p.trigger:
			reason, doc = "trigger", p.document()
		case now := <-poll.C:
			if now.Before(retryAt) {
				continue
			}
			doc = p.document()
			reason = WriteReason(last, doc, lastWrite, now, p.Interval)
		}
		if reason == "" {
			continue
		}
		written, err := p.put(ctx, lease, reason, doc)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return fmt.Errorf("%w: %v", errLeaseLost, err)
		case err != nil:
			// Transient: the keepalive decides whether the lease
			// survives. Retried with backoff; the same error is logged
			// once, not every second (a NOSPACE alarm can last).
			retryAt = time.Now().Add(putBackoff.Next())
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				p.Log.Warn("publish node document", "node", p.name, "err", ExplainNoSpace(err))
			}
		default:
			last, lastWrite, retryAt, lastErr = written, time.Now(), time.Time{}, ""
			putBackoff.Reset()
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
func (p *Publisher) put(ctx context.Context, lease clientv3.LeaseID, reason string, doc Node) (Node, error) {
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
	if p.OnWrite != nil {
		p.OnWrite(reason)
	}
	return doc, nil
}

// rekeep keeps the same lease alive after the client gave up on it. The
// client closes the keepalive channel when no answer came within the TTL,
// but the lease may well live on: an etcd leader change extends every
// lease, and emulated nodes answer late. Granting a new lease instead
// would let the old one, and the document with it, expire in between,
// and the scheduler would move this live node's replicas. Only a lease
// the server no longer has, or etcd silent for another TTL, ends it.
func (p *Publisher) rekeep(ctx context.Context, lease clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	deadline := time.Now().Add(p.ttl)
	backoff := retry.NewBackoff(retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second})
	for {
		cctx, cancel := context.WithTimeout(ctx, p.RequestTimeout)
		_, err := p.cli.KeepAliveOnce(cctx, lease)
		cancel()
		switch {
		case err == nil:
			ch, err := p.cli.KeepAlive(ctx, lease)
			if err != nil {
				return nil, fmt.Errorf("%w: keep lease %x alive: %v", errLeaseLost, lease, err)
			}
			p.Log.Info("node document lease kept after a late keepalive answer", "node", p.name, "lease", fmt.Sprintf("%x", lease))
			return ch, nil
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return nil, fmt.Errorf("%w: lease %x expired on the server", errLeaseLost, lease)
		case ctx.Err() != nil || time.Now().After(deadline):
			return nil, fmt.Errorf("%w: keepalive of lease %x ended: %v", errLeaseLost, lease, err)
		}
		if !retry.Sleep(ctx, backoff.Next()) {
			return nil, ctx.Err()
		}
	}
}

// linger re-puts the document, not ready, under a new lease of d (whole
// seconds, at least one); failures only mean it goes with the old lease.
func (p *Publisher) linger(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ttl := max(int64((d+time.Second-1)/time.Second), 1)
	g, err := p.cli.Grant(ctx, ttl)
	if err != nil {
		p.Log.Warn("node document not kept for the agent's restart", "node", p.name, "err", err)
		return
	}
	doc := p.document()
	doc.Ready = false
	doc.Heartbeat = time.Now().UTC().Truncate(time.Second)
	data, err := doc.Marshal()
	if err == nil {
		_, err = p.cli.Put(ctx, NodeKey(p.name), string(data), clientv3.WithLease(g.ID))
	}
	if err != nil {
		p.Log.Warn("node document not kept for the agent's restart", "node", p.name, "err", err)
		return
	}
	p.Log.Info("node document kept, not ready, while the agent restarts", "node", p.name, "for", time.Duration(ttl)*time.Second)
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
