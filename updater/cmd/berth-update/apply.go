package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/progress"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
	"github.com/berth-os/berth/updater/slot"
)

func applyCmd() *cobra.Command {
	var (
		dryRun, downgrade bool
		keys              string
		tries             int
	)
	c := &cobra.Command{
		Use:   "apply SOURCE",
		Short: "Install a signed OS payload into the passive slot; it boots next",
		Long: `Verify SOURCE against the trusted keys, write it into the passive slot and
make it the next boot (with boot counting). The running OS is never
touched; the next boot decides.

SOURCE is a signed update payload: an OCI layout directory (DIR, DIR:TAG,
DIR@sha256:...), a payload tarball, or a registry reference
(registry.example:5000/berth/os:0.2.0).`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return cli.Usagef("apply: want exactly one SOURCE, got %d (see %s --help)", len(args), c.CommandPath())
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			ctx, stop, _, sys := env(c)
			defer stop()
			stdout, stderr := c.OutOrStdout(), c.ErrOrStderr()
			trusted, err := payload.LoadPublicKeys(keys)
			if err != nil {
				return err
			}
			p, err := payload.Open(ctx, args[0], trusted)
			if err != nil {
				return err
			}
			start := time.Now()
			// Percent only: the e2e power-cut test waits for "writing slot: N0%".
			line := progress.New(stderr, "writing slot")
			plan, err := sys.Apply(ctx, slot.PayloadSource(p), slot.ApplyOptions{
				AllowDowngrade: downgrade, DryRun: dryRun, Tries: tries,
				Progress: func(done, total int64) {
					line.Percent(int(done * 100 / max(total, 1)))
				},
			})
			line.Done()
			if err != nil {
				return fmt.Errorf("apply: %w", err)
			}
			if dryRun {
				fmt.Fprintf(stdout, "would install %s %s into slot %s (%s, %d MiB of %d MiB), boot entry %s with %d tries",
					p.Manifest.OS, p.Manifest.Version, plan.Slot, plan.Device, plan.SlotSize>>20, plan.DeviceSize>>20, plan.Entry, plan.Tries)
				if len(plan.RemoveEntries) > 0 {
					fmt.Fprintf(stdout, ", replacing %v", plan.RemoveEntries)
				}
				fmt.Fprintln(stdout)
				return nil
			}
			fmt.Fprintf(stdout, "installed %s %s into slot %s in %.1fs; it boots next (reboot to switch)\n",
				p.Manifest.OS, p.Manifest.Version, plan.Slot, time.Since(start).Seconds())
			return nil
		},
	}
	f := c.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "verify and say what would be done; write nothing")
	f.BoolVar(&downgrade, "allow-downgrade", false, "allow installing an older or the same version")
	f.StringVar(&keys, "keys", "/"+layout.KeysDir, "`directory` of trusted public keys (*.pub)")
	f.IntVar(&tries, "tries", 3, "boot attempts the new OS gets before the boot loader falls back")
	return c
}
