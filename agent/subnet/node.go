package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/leader"
	"github.com/berth-os/berth/internal/retry"
)

// NodeOptions configure a node's side of the subnets.
type NodeOptions struct {
	Name string
	// Bootstrap is set on the node that created the cluster (no join):
	// it stores Ranges when etcd holds none. Every other node waits for
	// the stored ranges and ignores its own.
	Bootstrap bool
	// Ranges to store at bootstrap; an invalid IPv6 takes a random ULA /48.
	Ranges Ranges
	// Containers is false on a node that runs none: it leases nothing
	// (it still takes part in reclaiming).
	Containers bool
	// Own4 and Own6 are explicitly configured bridge subnets: used as they
	// are, with no lease of that family; they must lie outside the
	// cluster ranges. NoIPv6 leases no IPv6 subnet (containers' IPv6 off).
	Own4, Own6 netip.Prefix
	NoIPv6     bool
	// Addrs are the node's own addresses, which the ranges must not hold.
	Addrs []netip.Addr
	Log   *slog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Assigned is what the node's bridge uses.
type Assigned struct {
	IPv4, IPv6 netip.Prefix // IPv6 invalid: containers' IPv6 off
	Ranges     Ranges
}

// Node leases this node's subnets at start and takes part in the
// reclaimer election. Wait gives the workload side the subnets.
type Node struct {
	o     NodeOptions
	ready chan struct{}

	mu      sync.Mutex
	got     Assigned
	lastErr error
}

// NewNode returns a Node; Run does the work.
func NewNode(o NodeOptions) *Node {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Node{o: o, ready: make(chan struct{})}
}

// Wait returns the node's subnets once leased. Before that it returns the
// last error at once (a full range: the reason a container cannot start),
// or waits until ctx ends.
func (n *Node) Wait(ctx context.Context) (Assigned, error) {
	for {
		select {
		case <-n.ready:
			return n.got, nil
		default:
		}
		n.mu.Lock()
		err := n.lastErr
		n.mu.Unlock()
		if err != nil {
			return Assigned{}, err
		}
		select {
		case <-n.ready:
			return n.got, nil
		case <-ctx.Done():
			return Assigned{}, fmt.Errorf("container subnets not leased yet: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) setErr(err error) {
	n.mu.Lock()
	n.lastErr = err
	n.mu.Unlock()
}

// Run reads (or, at bootstrap, stores) the cluster ranges, leases or finds
// again the node's subnets, then runs the reclaimer election until ctx
// ends. A node setting that conflicts with the ranges ends it with the
// reason; a full range is retried (reclaims free subnets) and reported by
// Wait meanwhile.
func (n *Node) Run(ctx context.Context, cli *clientv3.Client) error {
	ranges, err := n.ranges(ctx, cli)
	if err != nil {
		return err
	}
	for _, err := range []error{CheckOwn("bridge-subnet", n.o.Own4, ranges.IPv4), CheckOwn("bridge-subnet6", n.o.Own6, ranges.IPv6), ranges.CheckAddrs(n.o.Addrs)} {
		if err != nil {
			n.setErr(err)
			return err // a setting of this node: one line, the agent stops
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { n.reclaimer(ctx, cli, ranges.ReclaimAfter()) })

	want := Want{
		IPv4: n.o.Containers && !n.o.Own4.IsValid(),
		IPv6: n.o.Containers && !n.o.Own6.IsValid() && !n.o.NoIPv6,
	}
	var rec NodeRecord
	err = retry.Do(ctx, retry.Policy{
		Initial: time.Second, Max: 30 * time.Second,
		OnRetry: func(err error, wait time.Duration) {
			n.setErr(err)
			lvl := slog.LevelWarn
			if errors.Is(err, ErrExhausted) {
				lvl = slog.LevelError
			}
			n.o.Log.Log(ctx, lvl, "leasing container subnets failed; retrying", "err", err, "retry_in", wait)
		},
	}, func() error {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var err error
		rec, err = Acquire(actx, cli, n.o.Name, ranges, want, n.o.Now())
		return err
	})
	if err != nil {
		return nil // ctx ended
	}
	got := Assigned{IPv4: rec.IPv4, IPv6: rec.IPv6, Ranges: ranges}
	if n.o.Own4.IsValid() {
		got.IPv4 = n.o.Own4
	}
	if n.o.Own6.IsValid() && !n.o.NoIPv6 {
		got.IPv6 = n.o.Own6
	}
	n.mu.Lock()
	n.got, n.lastErr = got, nil
	n.mu.Unlock()
	close(n.ready)
	n.o.Log.Info("container subnets", "ipv4", got.IPv4, "ipv6", got.IPv6,
		"leased_ipv4", want.IPv4, "leased_ipv6", want.IPv6, "cluster_ipv4", ranges.IPv4, "cluster_ipv6", ranges.IPv6)
	return nil
}

// ranges stores (bootstrap) or waits for the cluster's ranges.
func (n *Node) ranges(ctx context.Context, cli *clientv3.Client) (Ranges, error) {
	want := n.o.Ranges
	if n.o.Bootstrap && !want.IPv6.IsValid() {
		var err error
		if want.IPv6, err = RandomULA(nil); err != nil {
			return Ranges{}, err
		}
	}
	var got Ranges
	waiting := false
	err := retry.Do(ctx, retry.Policy{
		Initial: 500 * time.Millisecond, Max: 5 * time.Second,
		OnRetry: func(err error, wait time.Duration) {
			n.setErr(err)
			n.o.Log.Warn("reading the cluster's subnet ranges failed; retrying", "err", err, "retry_in", wait)
		},
	}, func() error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if n.o.Bootstrap {
			var err error
			got, err = EnsureRanges(rctx, cli, want)
			return err
		}
		r, found, err := GetRanges(rctx, cli)
		if err == nil && !found {
			if !waiting {
				n.o.Log.Info("waiting for the cluster's subnet ranges (stored by the bootstrapping node)", "key", RangesKey)
				waiting = true
			}
			return fmt.Errorf("%s not stored yet: the node that bootstrapped the cluster (no join setting) writes it when it starts", RangesKey)
		}
		got = r
		return err
	})
	if err != nil {
		return Ranges{}, fmt.Errorf("cluster subnet ranges: %w", ctx.Err())
	}
	return got, nil
}

// reclaimer campaigns for the reclaimer's leadership and, while leading,
// runs ReclaimOnce every check interval (a quarter of the grace period,
// at most 30 s), fenced by the term.
func (n *Node) reclaimer(ctx context.Context, cli *clientv3.Client, grace time.Duration) {
	every := min(grace/4, 30*time.Second)
	every = max(every, time.Second/4)
	log := n.o.Log.With("part", "reclaimer")
	_ = leader.Run(ctx, cli, leader.Options{
		Prefix: ElectionPrefix, Name: n.o.Name, Log: log,
		Retry: retry.Policy{OnRetry: func(err error, wait time.Duration) {
			log.Debug("subnet reclaimer term ended", "err", err, "retry_in", wait)
		}},
	}, func(ctx context.Context, t leader.Term) error {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			acts, err := ReclaimOnce(rctx, cli, t.Fence(), n.o.Now(), grace)
			cancel()
			for _, a := range acts {
				switch a.Kind {
				case Reclaim:
					log.Info("reclaimed the subnets of a node gone longer than the grace period", "node", a.Node, "subnets", a.Subnets, "grace", grace)
				case MarkMissing:
					log.Info("node with subnets is gone; its subnets are kept for the grace period", "node", a.Node, "grace", grace)
				case ClearMissing:
					log.Info("node with subnets is back", "node", a.Node)
				}
			}
			if err != nil && ctx.Err() == nil {
				log.Warn("subnet reclaim round failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	})
}
