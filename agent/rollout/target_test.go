package rollout

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

func storedTarget(t *testing.T, cli *clientv3.Client) Target {
	t.Helper()
	resp, err := cli.Get(context.Background(), TargetKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return Target{}
	}
	tgt, err := ParseTarget(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// UpdateTarget reads again and decides again when another writer changed
// the target between its read and its write, and keeps that writer's change.
func TestUpdateTargetCompareAndSwap(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()

	if _, err := UpdateTarget(ctx, cli, func(Snapshot, *Target) (bool, error) {
		t.Error("change called without a target")
		return false, nil
	}); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("without a target: %v, want ErrNoTarget", err)
	}

	base := Target{Schema: TargetSchema, Version: "0.3.0", Payload: DefaultPayload("0.3.0"),
		MaxUnavailable: 1, Canary: 1, Created: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	if err := PutTarget(ctx, cli, base, 0); err != nil {
		t.Fatal(err)
	}
	calls := 0
	got, err := UpdateTarget(ctx, cli, func(snap Snapshot, tgt *Target) (bool, error) {
		calls++
		if calls == 1 { // another admin raises max-unavailable meanwhile
			other := *snap.Target
			other.MaxUnavailable = 4
			if err := PutTarget(ctx, cli, other, snap.TargetRevision); err != nil {
				t.Fatal(err)
			}
		}
		tgt.Paused, tgt.Reason = true, "maintenance"
		return true, nil
	})
	if err != nil || calls != 2 {
		t.Fatalf("UpdateTarget: %v after %d calls, want success after 2", err, calls)
	}
	stored := storedTarget(t, cli)
	if stored != got || !stored.Paused || stored.MaxUnavailable != 4 {
		t.Fatalf("stored %+v (returned %+v): want paused with the other writer's max-unavailable 4", stored, got)
	}

	// Nothing to write: nothing written, the target returned as found.
	rev := func() int64 {
		resp, err := cli.Get(ctx, TargetKey)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Kvs[0].ModRevision
	}
	before := rev()
	if got, err := UpdateTarget(ctx, cli, func(Snapshot, *Target) (bool, error) { return false, nil }); err != nil || got != stored {
		t.Fatalf("no change: %+v, %v", got, err)
	}
	if rev() != before {
		t.Fatal("UpdateTarget wrote although change said there was nothing to write")
	}

	// A writer that always comes first: give up after a few attempts.
	calls = 0
	_, err = UpdateTarget(ctx, cli, func(snap Snapshot, tgt *Target) (bool, error) {
		calls++
		other := *snap.Target
		other.Canary = calls
		if err := PutTarget(ctx, cli, other, snap.TargetRevision); err != nil {
			t.Fatal(err)
		}
		tgt.Aborted = true
		return true, nil
	})
	if !errors.Is(err, ErrConflict) || calls != 5 {
		t.Fatalf("against a constant writer: %v after %d calls, want ErrConflict after 5", err, calls)
	}
	if storedTarget(t, cli).Aborted {
		t.Fatal("a lost compare-and-swap was written anyway")
	}

	// Errors from change are returned and nothing is written.
	refusal := errors.New("no")
	before = rev()
	if _, err := UpdateTarget(ctx, cli, func(Snapshot, *Target) (bool, error) { return true, refusal }); !errors.Is(err, refusal) {
		t.Fatalf("refusal: %v", err)
	}
	if rev() != before {
		t.Fatal("a refused change was written")
	}
}
