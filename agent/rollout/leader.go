package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// LeaderKey is the election prefix of the rollout leader: the one agent
// that marks nodes past their deadline failed and pauses a rollout whose
// error budget is spent. Its decisions are pure functions of the stored
// state (Evaluate), written with compare-and-swap (Apply), so a new
// leader simply carries on.
const LeaderKey = Prefix + "leader/"

// Leader campaigns for rollout leadership and, while leading, evaluates
// the rollout every interval (and on every change under Prefix).
type Leader struct {
	Node     string
	Interval time.Duration // default 5 s
	Now      func() time.Time
	Log      *slog.Logger
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
	for ctx.Err() == nil {
		if err := l.lead(ctx, cli); err != nil && ctx.Err() == nil {
			l.Log.Warn("rollout leader: campaign again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (l *Leader) lead(ctx context.Context, cli *clientv3.Client) error {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("rollout leader session: %w", err)
	}
	defer s.Close()
	e := concurrency.NewElection(s, LeaderKey)
	if err := e.Campaign(ctx, l.Node); err != nil {
		return fmt.Errorf("rollout leader campaign: %w", err)
	}
	l.Log.Info("rollout leader: leading")
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = e.Resign(rctx)
	}()
	for {
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, Prefix, clientv3.WithPrefix())
		err := l.evaluate(ctx, cli)
		if err != nil && !errors.Is(err, ErrConflict) && ctx.Err() == nil {
			l.Log.Warn("rollout leader: evaluate", "err", err)
		}
		timer := time.NewTimer(l.Interval)
		lost := false
		select {
		case <-ctx.Done():
		case <-s.Done():
			lost = true
		case <-wch:
		case <-timer.C:
		}
		cancel()
		timer.Stop()
		if ctx.Err() != nil {
			return nil
		}
		if lost {
			return errors.New("rollout leader session lost")
		}
		time.Sleep(200 * time.Millisecond) // coalesce bursts
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
