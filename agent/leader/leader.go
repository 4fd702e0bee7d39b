// Package leader is the one leader-election loop of the agent (the
// scheduler, the rollout leader): campaign through etcd's concurrency
// election, run a term while leading with a context that ends as soon as
// leadership is lost, resign and revoke the session when the term
// returns, and campaign again with backoff.
//
// Leadership is lost when the session ends (its lease expired or was
// revoked, keepalives failed) or the election key is deleted. A term that
// writes must still fence its writes with Term.Key and Term.Rev: the old
// leader learns of the loss a little after etcd decides it.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/berth-os/berth/internal/retry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Errors a term's context ends with (context.Cause) when leadership is
// lost; Run also wraps them into the error it passes to OnRetry.
var (
	ErrSessionLost = errors.New("election session lost")
	ErrKeyDeleted  = errors.New("election key deleted")
	// ErrTermEnded is what a term that returned nil before ctx ended is
	// reported as: the candidate campaigns again like after a failure.
	ErrTermEnded = errors.New("leader term ended")
)

// Options of an election loop; zero values take the defaults.
type Options struct {
	Prefix string // election prefix; keys are Prefix/<lease in hex>
	Name   string // value proclaimed while leading
	TTL    int    // session lease TTL in seconds (default 10): how fast a dead leader is replaced
	// Retry paces the campaigns after a failed or lost term (default
	// 100 ms doubling to 5 s); its OnRetry is where the caller logs the
	// term's end. The waits start again from Initial after a term that
	// lasted longer than StableAfter.
	Retry       retry.Policy
	StableAfter time.Duration // default 1 minute
	Log         *slog.Logger  // resign and revoke failures, key watch trouble
}

// Term is one won election.
type Term struct {
	Key     string // the election key
	Rev     int64  // its create revision: with Key it fences writes
	Session *concurrency.Session
}

// Fence is the comparison that holds only while this term's key exists.
func (t Term) Fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.Key), "=", t.Rev)
}

// Run campaigns and runs term each time it wins, until ctx ends; it
// returns nil then. term's context ends with ctx, or with ErrSessionLost
// or ErrKeyDeleted as its cause when leadership is lost.
func Run(ctx context.Context, cli *clientv3.Client, o Options, term func(ctx context.Context, t Term) error) error {
	if o.Prefix == "" {
		return errors.New("leader election: no prefix")
	}
	if o.TTL <= 0 {
		o.TTL = 10
	}
	if o.Retry.Initial <= 0 {
		o.Retry.Initial = 100 * time.Millisecond
	}
	if o.Retry.Max <= 0 {
		o.Retry.Max = 5 * time.Second
	}
	if o.StableAfter <= 0 {
		o.StableAfter = time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	b := retry.NewBackoff(o.Retry)
	for {
		started := time.Now()
		err := runTerm(ctx, cli, o, term)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = ErrTermEnded
		}
		if time.Since(started) > o.StableAfter {
			b.Reset()
		}
		wait := b.Next()
		if o.Retry.OnRetry != nil {
			o.Retry.OnRetry(err, wait)
		}
		if !retry.Sleep(ctx, wait) {
			return nil
		}
	}
}

// runTerm is one session: campaign, then lead until term returns or
// leadership is lost.
func runTerm(ctx context.Context, cli *clientv3.Client, o Options, term func(context.Context, Term) error) error {
	// The session follows ctx so that an unreachable etcd cannot hold Run
	// past its end; the lease is revoked with a fresh context below.
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(o.TTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session under %s: %w", o.Prefix, err)
	}
	defer func() {
		sess.Orphan()
		// Revoking lets a successor take over now instead of after the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := cli.Revoke(rctx, sess.Lease()); err != nil {
			o.Log.Debug("revoke election session lease", "prefix", o.Prefix, "err", err)
		}
	}()

	termCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-sess.Done():
			cancel(ErrSessionLost)
		case <-termCtx.Done():
		}
	}()
	el := concurrency.NewElection(sess, o.Prefix)
	if err := el.Campaign(termCtx, o.Name); err != nil {
		if cause := context.Cause(termCtx); ctx.Err() == nil && cause != nil {
			err = cause
		}
		return fmt.Errorf("campaign under %s: %w", o.Prefix, err)
	}
	t := Term{Key: el.Key(), Rev: el.Rev(), Session: sess}
	go watchKey(termCtx, cli, o.Log, t, cancel)

	err = term(termCtx, t)
	lost := context.Cause(termCtx)
	if ctx.Err() == nil && (errors.Is(lost, ErrSessionLost) || errors.Is(lost, ErrKeyDeleted)) {
		switch {
		case err == nil, errors.Is(err, context.Canceled):
			err = lost // the term only saw its context end
		case !errors.Is(err, lost):
			err = fmt.Errorf("%w: %w", lost, err)
		}
	}
	if !errors.Is(lost, ErrSessionLost) {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		if rerr := el.Resign(rctx); rerr != nil {
			o.Log.Warn("resign leadership", "prefix", o.Prefix, "err", rerr)
		}
	}
	return err
}

// watchKey ends the term (cancel with ErrKeyDeleted) when its election
// key is deleted or replaced; the session's end is noticed by runTerm.
func watchKey(ctx context.Context, cli *clientv3.Client, log *slog.Logger, t Term, cancel context.CancelCauseFunc) {
	b := retry.NewBackoff(retry.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second})
	rev := t.Rev + 1
	for ctx.Err() == nil {
		for wr := range cli.Watch(ctx, t.Key, clientv3.WithRev(rev)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE || ev.Kv.CreateRevision != t.Rev {
					cancel(ErrKeyDeleted)
					return
				}
			}
			rev = wr.Header.Revision + 1
			b.Reset()
		}
		if ctx.Err() != nil {
			return
		}
		// The watch broke (compaction, a lost connection): look at the
		// key itself before watching again, so no deletion is missed.
		resp, err := cli.Get(ctx, t.Key)
		switch {
		case err != nil:
			log.Debug("check election key", "key", t.Key, "err", err)
		case len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != t.Rev:
			cancel(ErrKeyDeleted)
			return
		default:
			rev = resp.Header.Revision + 1
		}
		if !retry.Sleep(ctx, b.Next()) {
			return
		}
	}
}
