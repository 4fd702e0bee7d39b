// Package retry is the one way berth retries: exponential backoff with
// jitter over github.com/cenkalti/backoff/v5, bounded by a maximum wait,
// optionally by a total time, always by the context.
//
// Jitter only shortens a wait (each wait is drawn from
// [(1-Jitter)·d, d] where d is the exponential step capped at Max), so Max
// is a hard bound and a converted loop never waits longer than it used to,
// while many nodes retrying the same peer spread out instead of arriving
// in lockstep.
//
// Do and Get retry an operation until it succeeds; Backoff is the same
// sequence of waits for loops that are not "call until success" (a
// campaign loop, a poll loop that slows down after a failure).
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Defaults for the zero fields of a Policy.
const (
	DefaultInitial    = 100 * time.Millisecond
	DefaultMax        = 30 * time.Second
	DefaultMultiplier = 2.0
	DefaultJitter     = 0.2
)

// Policy says how long to wait between attempts.
type Policy struct {
	// Initial is the first wait (before jitter); default DefaultInitial.
	Initial time.Duration
	// Max caps every wait; default DefaultMax.
	Max time.Duration
	// Multiplier grows the wait after each failure; default 2.
	Multiplier float64
	// Jitter is the fraction of each wait that is random, at most 1;
	// 0 means DefaultJitter, a negative value means none (tests).
	Jitter float64
	// MaxElapsed gives up (returning the last error) when the next wait
	// would end later than this after the first attempt; 0: never, only
	// ctx ends the retries.
	MaxElapsed time.Duration
	// OnRetry is called after each failed attempt that will be retried,
	// with its error and the wait before the next attempt: where callers
	// log "retrying in X" or record a reason.
	OnRetry func(err error, wait time.Duration)
}

func (p Policy) withDefaults() Policy {
	if p.Initial <= 0 {
		p.Initial = DefaultInitial
	}
	if p.Max <= 0 {
		p.Max = DefaultMax
	}
	p.Max = max(p.Max, p.Initial)
	if p.Multiplier < 1 {
		p.Multiplier = DefaultMultiplier
	}
	switch {
	case p.Jitter == 0:
		p.Jitter = DefaultJitter
	case p.Jitter < 0:
		p.Jitter = 0
	case p.Jitter > 1:
		p.Jitter = 1
	}
	return p
}

// Backoff is a sequence of waits following a Policy. It is not safe for
// concurrent use.
type Backoff struct {
	exp    backoff.ExponentialBackOff
	jitter float64
}

// NewBackoff starts the sequence of waits of p (p.MaxElapsed and p.OnRetry
// are not used by it).
func NewBackoff(p Policy) *Backoff {
	p = p.withDefaults()
	b := &Backoff{
		exp: backoff.ExponentialBackOff{
			InitialInterval: p.Initial,
			// The library's randomization is symmetric and may exceed
			// MaxInterval; ours only shortens (see the package comment).
			RandomizationFactor: 0,
			Multiplier:          p.Multiplier,
			MaxInterval:         p.Max,
		},
		jitter: p.Jitter,
	}
	b.exp.Reset()
	return b
}

// Next returns the next wait and advances the sequence.
func (b *Backoff) Next() time.Duration {
	d := b.exp.NextBackOff()
	if b.jitter > 0 {
		d -= time.Duration(b.jitter * rand.Float64() * float64(d))
	}
	return d
}

// NextBackOff makes Backoff a backoff.BackOff.
func (b *Backoff) NextBackOff() time.Duration { return b.Next() }

// Reset starts the sequence again from Initial (after a success).
func (b *Backoff) Reset() { b.exp.Reset() }

// Do calls op until it returns nil, returns an error wrapped by
// Permanent, MaxElapsed is spent, or ctx ends; op runs at least once.
// The error is op's last one (unwrapped from Permanent); when ctx ended
// the retries it wraps ctx's cause and op's last error, so both
// errors.Is(err, context.Canceled) and errors.As on op's error hold.
func Do(ctx context.Context, p Policy, op func() error) error {
	_, err := Get(ctx, p, func() (struct{}, error) { return struct{}{}, op() })
	return err
}

// Get is Do for an operation that returns a value.
func Get[T any](ctx context.Context, p Policy, op func() (T, error)) (T, error) {
	p = p.withDefaults()
	var last error
	opts := []backoff.RetryOption{
		backoff.WithBackOff(NewBackoff(p)),
		// Always set: the library's default gives up after 15 minutes.
		backoff.WithMaxElapsedTime(p.MaxElapsed),
	}
	if p.OnRetry != nil {
		opts = append(opts, backoff.WithNotify(p.OnRetry))
	}
	v, err := backoff.Retry(ctx, func() (T, error) {
		v, err := op()
		last = err
		return v, err
	}, opts...)
	if ctx.Err() == nil || last == nil || err != context.Cause(ctx) {
		return v, err
	}
	// Stopped by ctx: the library returns only ctx's cause; keep what
	// failed too, unless op's error already says the context ended.
	if errors.Is(last, ctx.Err()) {
		return v, last
	}
	return v, fmt.Errorf("%w (last error: %w)", err, last)
}

// Permanent marks err as not worth retrying: Do returns it at once.
func Permanent(err error) error { return backoff.Permanent(err) }

// Sleep waits d or until ctx ends; it reports whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
