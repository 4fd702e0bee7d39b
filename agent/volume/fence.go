package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/internal/retry"
)

// FenceWithin is how long the fence-peer handler keeps trying etcd: a
// node that cannot reach etcd for this long has lost its node lease
// (10 s) as well, and its container is stopped; I/O stays frozen.
const FenceWithin = 10 * time.Second

// FencePeer is DRBD's fence-peer handler on the primary node: it records
// the peer's copy outdated at the epoch this node promoted at, retrying
// etcd for up to within (transient errors only), and returns the exit
// code for DRBD (FenceExitCode).
func FencePeer(ctx context.Context, cli *clientv3.Client, id ID, node string, epoch int64, within time.Duration, log *slog.Logger) int {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	err := retry.Do(ctx, retry.Policy{Initial: 200 * time.Millisecond, Max: 2 * time.Second, OnRetry: func(err error, wait time.Duration) {
		log.Warn("volume fence: etcd did not take the fence yet", "volume", id.String(), "err", err, "retry_in", wait)
	}}, func() error {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		defer acancel()
		_, err := FenceNode(actx, cli, id, node, epoch, time.Now().UTC())
		if errors.Is(err, ErrDeposed) || errors.Is(err, ErrNotFound) {
			return retry.Permanent(err)
		}
		return err
	})
	code := FenceExitCode(err)
	switch {
	case err == nil:
		log.Info("volume fence: the peer's copy is outdated in etcd; resuming I/O", "volume", id.String(), "epoch", epoch)
	case code == FenceDeposed:
		log.Error("volume fence: deposed, another node owns the volume; I/O stays frozen", "volume", id.String(), "err", err)
	default:
		log.Error("volume fence: etcd not reached; I/O stays frozen", "volume", id.String(), "err", fmt.Errorf("within %s: %w", within, err))
	}
	return code
}
