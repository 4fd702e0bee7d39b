package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/updater/slot"
)

// newRoot is berth-update's command tree.
func newRoot() *cobra.Command {
	root := cli.NewRoot("berth-update", "Install and manage berth OS versions on this node",
		`berth-update installs a signed OS payload into the passive slot of this
node, reports the slots' state, rolls back, and runs the boot health gate.

Exit status: 0 success, 1 failure (one line on stderr says why), 2 bad usage.`, version)
	root.AddCommand(applyCmd(), statusCmd(), rollbackCmd(), healthCmd())
	return root
}

// env is what every command works with: a logger on stderr, the slots,
// and a context cancelled by SIGINT/SIGTERM.
func env(c *cobra.Command) (context.Context, context.CancelFunc, *slog.Logger, *slot.System) {
	log := slog.New(slog.NewTextHandler(c.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx, stop, log, &slot.System{Log: log}
}

// exit turns an exit code whose message is already printed into an error.
func exit(code int) error {
	if code == 0 {
		return nil
	}
	return &cli.ExitError{Code: code}
}
