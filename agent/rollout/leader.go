package rollout

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/berth-os/berth/agent/leader"
	"github.com/berth-os/berth/internal/retry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaderKey is the election prefix of the rollout leader: the one agent
// that marks nodes past their deadline failed and pauses a rollout whose
// error budget is spent. Its decisions are pure functions of the stored
// state (Evaluate), written with compare-and-swap (Apply), so a new
// leader simply carries on. The election adds "/" and the campaigner's
// lease, so the keys are LeaderKey/<lease in hex>; the prefix itself ends
// without a slash (it once did, which made .../leader//<lease>).
const LeaderKey = Prefix + "leader"

// Leader campaigns for rollout leadership and, while leading, evaluates
// the rollout every interval (and on every change under Prefix).
type Leader struct {
	Node     string
	Interval time.Duration // default 5 s
	Now      func() time.Time
	Log      *slog.Logger
}

// settle lets a burst of changes (many nodes' statuses at once) arrive
// before the next look at the state.
const settle = 200 * time.Millisecond

// waitForChange waits for an event on wch (a watch of Prefix started
// before the last read, so no change in between is missed), the interval
// or ctx's end (for the leader, also the end of its term), then lets a
// burst of changes settle. It returns ctx's error or nil for another round.
func waitForChange(ctx context.Context, wch clientv3.WatchChan, interval time.Duration) error {
	timer := time.NewTimer(interval)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wch:
	case <-timer.C:
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
		return nil
	}
}

// Run is an agent service.
func (l *Leader) Run(ctx context.Context, cli *clientv3.Client) error {
	if l.Interval <= 0 {
		l.Interval = 5 * time.Second
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	return leader.Run(ctx, cli, leader.Options{
		Prefix: LeaderKey,
		Name:   l.Node,
		TTL:    10,
		Retry: retry.Policy{
			Initial: 100 * time.Millisecond,
			Max:     5 * time.Second,
			OnRetry: func(err error, wait time.Duration) {
				l.Log.Warn("rollout leader: campaign again", "err", err, "retry_in", wait)
			},
		},
		Log: l.Log,
	}, func(ctx context.Context, _ leader.Term) error { return l.lead(ctx, cli) })
}

// lead is one term: evaluate on every change and every interval until
// leadership is lost or Run ends.
func (l *Leader) lead(ctx context.Context, cli *clientv3.Client) error {
	l.Log.Info("rollout leader: leading")
	for {
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, Prefix, clientv3.WithPrefix())
		err := l.evaluate(ctx, cli)
		if err != nil && !errors.Is(err, ErrConflict) && ctx.Err() == nil {
			l.Log.Warn("rollout leader: evaluate", "err", err)
		}
		err = waitForChange(ctx, wch, l.Interval)
		cancel()
		if err != nil {
			return err
		}
	}
}

// evaluate applies one Evaluation.
func (l *Leader) evaluate(ctx context.Context, cli *clientv3.Client) error {
	snap, err := Load(ctx, cli)
	if err != nil {
		return err
	}
	ev := Evaluate(snap, l.Now())
	if ev.Pause == nil && len(ev.MarkFailed) == 0 {
		return nil
	}
	if err := Apply(ctx, cli, snap, ev); err != nil {
		return err
	}
	for _, s := range ev.MarkFailed {
		l.Log.Warn("rollout: node failed", "node", s.Node, "reason", s.Reason)
	}
	if ev.Pause != nil {
		l.Log.Warn("rollout paused", "version", ev.Pause.Version, "reason", ev.Pause.Reason)
	}
	return nil
}
