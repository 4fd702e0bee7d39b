package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/updater/health"
	"github.com/berth-os/berth/updater/slot"
)

func rollbackCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback",
		Short: "Make the other slot, if it holds a good OS, the next boot",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, stop, _, sys := env(c)
			defer stop()
			if err := sys.Rollback(); err != nil {
				return fmt.Errorf("rollback: %w", err)
			}
			fmt.Fprintln(c.OutOrStdout(), "the other slot boots next; reboot to switch")
			return nil
		},
	}
}

func healthCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "health",
		Short: "Run the boot health gate (berth-health.service)",
		Long: `The boot health gate, run by berth-health.service before
boot-complete.target: on failure of a counted boot it records why and
reboots, so the boot loader falls back after the tries. Exit status 1
when the node is unhealthy.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop, log, sys := env(c)
			defer stop()
			return exit(cmdHealth(ctx, sys, log, c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
}

func cmdHealth(ctx context.Context, sys *slot.System, log *slog.Logger, stdout, stderr io.Writer) int {
	if res, err := sys.CheckBoot(); err != nil {
		log.Warn("could not check the previous update", "err", err)
	} else if res != nil {
		log.Info("update result", "state", res.State, "version", res.Version, "reason", res.Reason)
	}
	sd, err := health.ConnectSystemd(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: health: %v\n", err)
		return 1
	}
	defer sd.Close()
	gate := &health.Gate{Systemd: sd, Ready: health.AgentHealthy(health.DefaultAgentConfig, 2*time.Minute)}
	rep := gate.Run(ctx)
	for _, c := range rep.Checks {
		log.Info("health check", "name", c.Name, "ok", c.OK, "seconds", fmt.Sprintf("%.1f", c.Duration.Seconds()))
	}
	if rep.OK {
		fmt.Fprintln(stdout, "berth-health: healthy")
		return 0
	}
	fmt.Fprintf(stderr, "berth-health: UNHEALTHY: %s\n", rep.Reason)
	b, err := sys.Booted()
	if err != nil || b.Blessed {
		// A blessed OS has no fallback through boot counting: report, do
		// not reboot-loop.
		return 1
	}
	if err := sys.RecordHealthFailure(rep.Reason); err != nil {
		log.Warn("could not record the health failure", "err", err)
	}
	fmt.Fprintln(stderr, "berth-health: this boot is counted: rebooting; the boot loader falls back once the tries are spent")
	if err := sd.Reboot(ctx); err != nil {
		fmt.Fprintf(stderr, "berth-update: reboot: %v\n", err)
	}
	return 1
}
