// Package sched is berth's scheduler: one leader, elected through etcd,
// turns jobs (tenants/<t>/jobs/) and live nodes (nodes/) into assignments
// (assign/<node>/...) that each node's agent runs. Placement itself is the
// pure function Place; this file is the etcd side: election, watches,
// debouncing, the grace period for vanished nodes, and fenced writes.
package sched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/leader"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/volume"
	"github.com/berth-os/berth/internal/retry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Options tune a Scheduler; zero values take the defaults.
type Options struct {
	Name       string        // value proclaimed in the election (default: host name)
	Grace      time.Duration // how long a node's document must be gone before its replicas move (default 10s)
	SessionTTL int           // election lease TTL in seconds (default 5): how fast a dead leader is replaced
	Log        *slog.Logger
	// Debounce is the quiet time after a change before a placement round
	// (default 50ms); a burst of changes is never delayed more than 10x this.
	Debounce time.Duration
}

// Write limits: etcd refuses transactions of more than 128 operations
// (--max-txn-ops) or requests over 1.5 MiB (--max-request-bytes).
const (
	maxTxnOps      = 100
	maxTxnBytes    = 1 << 20
	parallelTxns   = 4
	retryAfterFail = time.Second
)

var (
	errDeposed = errors.New("no longer the scheduler leader (fenced write refused)")
	errResync  = errors.New("watch lost")
)

// Scheduler campaigns for leadership and, while leader, keeps assignments
// in line with jobs and nodes.
type Scheduler struct {
	cli    *clientv3.Client
	o      Options
	leader atomic.Bool
	rounds atomic.Int64 // placement rounds done, for tests
	held   string       // why moves were last held, logged once (rounds are serial)

	mu      sync.Mutex
	session *concurrency.Session // of the current term, for tests
	current *leadership          // of the current term, for tests
}

// New returns a scheduler; Run starts it.
func New(cli *clientv3.Client, o Options) *Scheduler {
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 5
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Debounce <= 0 {
		o.Debounce = 50 * time.Millisecond
	}
	o.Log = o.Log.With("component", "scheduler", "candidate", o.Name)
	return &Scheduler{cli: cli, o: o}
}

// IsLeader tells whether this scheduler leads right now.
func (s *Scheduler) IsLeader() bool { return s.leader.Load() }

// Run campaigns, leads until ctx ends or the session is lost, and campaigns
// again. It returns nil when ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	return leader.Run(ctx, s.cli, leader.Options{
		Prefix: jobs.ElectionPrefix,
		Name:   s.o.Name,
		TTL:    s.o.SessionTTL,
		Retry: retry.Policy{
			Initial: 100 * time.Millisecond,
			Max:     5 * time.Second,
			OnRetry: func(err error, wait time.Duration) {
				s.o.Log.Warn("scheduler term ended, campaigning again", "err", err, "retry_in", wait)
			},
		},
		Log: s.o.Log,
	}, s.term)
}

// leadership is one won election: its key and revision fence every write.
type leadership struct {
	key string
	rev int64 // also the Epoch of assignments written
}

func (l *leadership) fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)
}

// term is one won election: lead until ctx ends (leadership lost or Run's
// end) or a write is fenced off.
func (s *Scheduler) term(ctx context.Context, t leader.Term) error {
	l := &leadership{key: t.Key, rev: t.Rev}
	s.mu.Lock()
	s.session, s.current = t.Session, l
	s.mu.Unlock()
	s.leader.Store(true)
	defer s.leader.Store(false)
	s.o.Log.Info("scheduler is leader", "epoch", l.rev)
	return s.lead(ctx, l)
}

// lead loads the cluster state and follows it; a lost watch reloads.
func (s *Scheduler) lead(ctx context.Context, l *leadership) error {
	w := newWorld()
	for {
		rev, err := s.load(ctx, w)
		if err != nil {
			return err
		}
		err = s.follow(ctx, w, l, rev)
		if !errors.Is(err, errResync) {
			return err
		}
		s.o.Log.Info("scheduler watch lost, reloading", "err", err)
	}
}

// watched are the prefixes the scheduler reads.
var watched = []string{nodedoc.NodesPrefix, jobs.TenantsPrefix, jobs.AssignPrefix, jobs.VolumesPrefix, volume.Prefix}

// load reads everything at one revision.
func (s *Scheduler) load(ctx context.Context, w *world) (int64, error) {
	w.reset()
	var rev int64
	for _, prefix := range watched {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, prefix, opts...)
		if err != nil {
			return 0, fmt.Errorf("load %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			w.put(kv.Key, kv.Value, kv.ModRevision, time.Now(), s.o.Log)
		}
	}
	return rev, nil
}

// follow watches from rev+1 and runs placement rounds until ctx ends, the
// watch is lost (errResync) or a write is fenced off (errDeposed).
func (s *Scheduler) follow(ctx context.Context, w *world, l *leadership, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	events := make(chan clientv3.WatchResponse)
	for _, prefix := range watched {
		wc := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		go func() {
			for wr := range wc {
				select {
				case events <- wr:
				case <-wctx.Done():
					return
				}
			}
			select { // a closed watch channel means the watch is gone
			case events <- clientv3.WatchResponse{Canceled: true}:
			case <-wctx.Done():
			}
		}()
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	d := debouncer{quiet: s.o.Debounce, max: 10 * s.o.Debounce}
	d.touch(time.Now().Add(-s.o.Debounce)) // first round at once
	var lastRound time.Time
	for {
		now := time.Now()
		if due, ok := w.graceDue(s.o.Grace, lastRound); ok && !now.Before(due) {
			d.touch(now.Add(-s.o.Debounce))
		}
		if d.ready(now) {
			lastRound = now
			err := s.round(ctx, w, l, now)
			d.done()
			if err != nil {
				if errors.Is(err, errDeposed) || ctx.Err() != nil {
					return err
				}
				s.o.Log.Warn("scheduler round failed, retrying", "err", err)
				d.retryAt(time.Now().Add(retryAfterFail))
			}
			continue
		}
		next := d.deadline()
		if due, ok := w.graceDue(s.o.Grace, lastRound); ok && (next.IsZero() || due.Before(next)) {
			next = due
		}
		if next.IsZero() {
			next = now.Add(time.Hour)
		}
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr := <-events:
			if wr.Canceled || wr.Err() != nil {
				return fmt.Errorf("%w: %v", errResync, wr.Err())
			}
			if w.apply(wr.Events, time.Now(), s.o.Log) {
				d.touch(time.Now())
			}
		case <-timer.C:
		}
	}
}

// debouncer batches bursts of changes into one round.
type debouncer struct {
	quiet, max      time.Duration
	first, last, at time.Time // first and last change since the last round; at: not before
}

func (d *debouncer) touch(t time.Time) {
	if d.first.IsZero() {
		d.first = t
	}
	d.last = t
}

func (d *debouncer) retryAt(t time.Time) { d.touch(t); d.at = t }

func (d *debouncer) done() { d.first, d.last = time.Time{}, time.Time{} }

func (d *debouncer) deadline() time.Time {
	if d.first.IsZero() {
		return time.Time{}
	}
	t := d.last.Add(d.quiet)
	if capped := d.first.Add(d.max); capped.Before(t) {
		t = capped
	}
	if t.Before(d.at) {
		t = d.at
	}
	return t
}

func (d *debouncer) ready(now time.Time) bool {
	dl := d.deadline()
	return !dl.IsZero() && !now.Before(dl)
}

// round places and writes the difference.
func (s *Scheduler) round(ctx context.Context, w *world, l *leadership, now time.Time) error {
	s.rounds.Add(1)
	started := time.Now()
	in, held := w.input(now, s.o.Grace, l.rev, s.o.Name)
	if held != "" && held != s.held {
		s.o.Log.Warn("scheduler holds moves", "why", held)
	}
	s.held = held
	plan := Place(in)
	units := make([]unit, 0, len(plan.Changes)+len(plan.Placements))
	for _, c := range plan.Changes {
		u, err := changeUnit(c)
		if err != nil {
			return err
		}
		units = append(units, u)
	}
	placementUnits, err := w.placementUnits(plan.Placements)
	if err != nil {
		return err
	}
	units = append(units, placementUnits...)
	if len(units) == 0 {
		return nil
	}
	err = s.commit(ctx, w, l, units)
	s.o.Log.Info("scheduler round", "changes", len(plan.Changes), "writes", len(units),
		"took", time.Since(started).Round(time.Millisecond), "err", err)
	return err
}

// unit is a set of operations that must land in the same transaction, and
// what to record locally once they did.
type unit struct {
	ops   []clientv3.Op
	bytes int
	apply func(w *world, rev int64)
}

func changeUnit(c Change) (unit, error) {
	var u unit
	if c.Delete != "" {
		key := c.Delete
		u.ops = append(u.ops, clientv3.OpDelete(key))
		u.bytes += len(key)
	}
	if c.Put != nil {
		a := *c.Put
		data, err := json.Marshal(a)
		if err != nil {
			return unit{}, fmt.Errorf("encode assignment %s: %w", a.ID(), err)
		}
		u.ops = append(u.ops, clientv3.OpPut(a.Key(), string(data)))
		u.bytes += len(data) + len(a.Key())
	}
	u.apply = func(w *world, rev int64) {
		if c.Delete != "" {
			w.deleteAssign(c.Delete, rev)
		}
		if c.Put != nil {
			w.putAssign(c.Put.Key(), *c.Put, rev)
		}
	}
	return u, nil
}

// commit writes units in fenced transactions of at most maxTxnOps
// operations and maxTxnBytes, a few in flight at once.
func (s *Scheduler) commit(ctx context.Context, w *world, l *leadership, units []unit) error {
	var batches [][]unit
	var cur []unit
	ops, size := 0, 0
	for _, u := range units {
		if len(cur) > 0 && (ops+len(u.ops) > maxTxnOps || size+u.bytes > maxTxnBytes) {
			batches = append(batches, cur)
			cur, ops, size = nil, 0, 0
		}
		cur = append(cur, u)
		ops += len(u.ops)
		size += u.bytes
	}
	batches = append(batches, cur)

	revs := make([]int64, len(batches))
	errs := make([]error, len(batches))
	sem := make(chan struct{}, parallelTxns)
	var wg sync.WaitGroup
	for i, b := range batches {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			var all []clientv3.Op
			for _, u := range b {
				all = append(all, u.ops...)
			}
			resp, err := s.cli.Txn(ctx).If(l.fence()).Then(all...).Commit()
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("write %d assignment operations: %w", len(all), err)
			case !resp.Succeeded:
				errs[i] = errDeposed
			default:
				revs[i] = resp.Header.Revision
			}
		}()
	}
	wg.Wait()
	for i, b := range batches {
		if errs[i] == nil {
			for _, u := range b {
				u.apply(w, revs[i])
			}
		}
	}
	for _, err := range errs {
		if errors.Is(err, errDeposed) {
			return errDeposed
		}
	}
	return errors.Join(errs...)
}

// sameNode tells whether a node changed in a way placement cares about
// (not heartbeats or load).
func sameNode(a, b Node) bool {
	return a.Name == b.Name && a.CPUMillis == b.CPUMillis && a.MemoryBytes == b.MemoryBytes &&
		a.Schedulable == b.Schedulable && a.Draining == b.Draining && maps.Equal(a.Labels, b.Labels)
}
