package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/volume"
	"github.com/berth-os/berth/internal/cli"
)

// volumeCmd holds what DRBD runs on a node for berth's replicated volumes.
func volumeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "volume",
		Short: "Handlers DRBD runs for replicated volumes (not for people)",
		Args:  cobra.NoArgs,
	}
	var dataDir string
	fence := &cobra.Command{
		Use:   "fence-peer TENANT/JOB/REPLICA/VOLUME",
		Short: "DRBD's fence-peer handler: mark the peer's copy outdated in etcd",
		Long: `DRBD runs this on a primary that lost its peer, with I/O frozen. It records
the peer's copy outdated in etcd at the epoch this node promoted at, and
exits 4 (I/O resumes). It exits 6 when another node owns the volume now
(this copy is deposed: I/O stays frozen for good) and 1 when etcd could
not be reached within 10 s (I/O stays frozen; the replica stops when the
node's lease is gone).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			id, err := volume.ParseID(args[0])
			if err != nil {
				return &cli.ExitError{Code: cli.ExitUsage, Err: err}
			}
			log := slog.New(slog.NewTextHandler(c.ErrOrStderr(), nil)).With("component", "fence-peer")
			code := fencePeer(id, dataDir, log)
			if code != volume.FenceOutdated {
				return &cli.ExitError{Code: code, Err: fmt.Errorf("volume %s: fence refused or not recorded (exit %d): DRBD keeps I/O frozen", id, code)}
			}
			os.Exit(code) // 4 is success to DRBD
			return nil
		},
	}
	fence.Flags().StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", dataDirHelp)
	c.AddCommand(fence)
	return c
}

func fencePeer(id volume.ID, dataDir string, log *slog.Logger) int {
	epoch, err := volume.Epoch(id)
	if err != nil {
		log.Error("volume fence: this node never promoted the volume; I/O stays frozen", "err", err)
		return volume.FenceFailed
	}
	cl, node, err := cluster.NodeClient(dataDir)
	if err != nil {
		log.Error("volume fence: no etcd client; I/O stays frozen", "err", err)
		return volume.FenceFailed
	}
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return volume.FencePeer(ctx, cl, id, node, epoch, volume.FenceWithin, log)
}
