package rollout

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNoTarget is returned by UpdateTarget when no rollout was ever set.
var ErrNoTarget = errors.New("no rollout target is set")

// maxTargetAttempts bounds how often UpdateTarget reads again after losing
// a compare-and-swap to another writer (the rollout leader, another admin).
const maxTargetAttempts = 5

// UpdateTarget changes the stored target with a compare-and-swap on its
// revision. change sees the whole rollout state, edits t in place and
// returns false when there is nothing to write; when another writer
// changed the target in between, the state is read again and change is
// called again, up to maxTargetAttempts times. It returns the target as
// stored (or as found, when nothing was written); errors from change are
// returned as they are, with nothing written.
func UpdateTarget(ctx context.Context, cli *clientv3.Client, change func(snap Snapshot, t *Target) (write bool, err error)) (Target, error) {
	for range maxTargetAttempts {
		snap, err := Load(ctx, cli)
		if err != nil {
			return Target{}, err
		}
		if snap.Target == nil {
			return Target{}, ErrNoTarget
		}
		t := *snap.Target
		write, err := change(snap, &t)
		if err != nil || !write {
			return t, err
		}
		err = PutTarget(ctx, cli, t, snap.TargetRevision)
		if !errors.Is(err, ErrConflict) {
			return t, err
		}
	}
	return Target{}, fmt.Errorf("the rollout target changed %d times while it was being updated, try again: %w", maxTargetAttempts, ErrConflict)
}
