package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/builder/qemu"
	"github.com/berth-os/berth/internal/cli"
)

func runCmd() *cobra.Command {
	var (
		fresh, net bool
		mem        int
		accelFlag  string
	)
	c := &cobra.Command{
		Use:   "run IMAGE",
		Short: "Boot a built image in qemu with the serial console on this terminal",
		Long: `Boots IMAGE (a built .raw or .qcow2) under qemu with UEFI firmware (OVMF)
and the serial console on this terminal (Ctrl-A X quits). Changes go to a
copy-on-write overlay beside the image (IMAGE.run/), kept between runs.`,
		Args: exactlyOne("IMAGE"),
		RunE: func(c *cobra.Command, args []string) error {
			image := args[0]
			accel, err := qemu.ParseAccel(accelFlag)
			if err != nil {
				return cli.Usagef("run: --accel: %v", err)
			}
			stateDir := image + ".run"
			if fresh {
				os.RemoveAll(stateDir)
			}
			if err := os.MkdirAll(stateDir, 0o755); err != nil {
				return fmt.Errorf("run: %w", err)
			}
			overlay := filepath.Join(stateDir, "disk.qcow2")
			if _, err := os.Stat(overlay); err != nil {
				if err := qemu.Overlay(image, overlay, 0); err != nil {
					return fmt.Errorf("run: %w", err)
				}
			}
			fmt.Fprintf(c.OutOrStdout(), "booting %s (overlay %s; --fresh to start over; Ctrl-A X quits)\n", image, overlay)
			vm, err := qemu.Start(context.Background(), qemu.Config{Disk: overlay, MemoryMiB: mem, StateDir: stateDir, Interactive: true, UserNet: net, Accel: accel})
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			if err := vm.Wait(365 * 24 * time.Hour); err != nil {
				return fmt.Errorf("run: qemu: %w", err)
			}
			return nil
		},
	}
	f := c.Flags()
	f.BoolVar(&fresh, "fresh", false, "discard the overlay: boot as on first power-on")
	f.IntVarP(&mem, "memory", "m", 1024, "guest memory in `MiB`")
	f.BoolVar(&net, "net", false, "attach a NIC on qemu's user-mode network")
	f.StringVar(&accelFlag, "accel", "", "qemu `accelerator`: kvm, tcg or auto (default auto or $"+qemu.AccelEnv+": KVM when a guest really runs under it)")
	return c
}
