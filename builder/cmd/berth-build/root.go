package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
)

// newRoot is berth-build's command tree.
func newRoot() *cobra.Command {
	root := cli.NewRoot("berth-build", "Build berth OS images",
		`berth-build builds bootable berth disk images from image specs, signs
update payloads, boots images under qemu (one VM or a cluster), packs
Vagrant boxes, writes seed disks and installs images on bare metal.

Exit status: 0 success, 1 the build failed, 2 bad usage or bad spec.`, version)
	root.AddCommand(buildCmd(), keygenCmd(), checkCmd(), runCmd(), boxCmd(), installCmd(), seedCmd(), clusterCmd())
	return root
}

// exit turns an exit code whose message is already printed into an error.
func exit(code int) error {
	if code == 0 {
		return nil
	}
	return &cli.ExitError{Code: code}
}

// exactlyOne accepts exactly one positional argument, WHAT.
func exactlyOne(what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != 1 {
			return cli.Usagef("%s: want exactly one %s, got %d (see %s --help)", c.Name(), what, len(args), c.CommandPath())
		}
		return nil
	}
}

// group makes c, a command with sub-commands, behave like the root when
// run alone: its help on stderr and exit 2.
func group(c *cobra.Command) *cobra.Command {
	c.Args = cobra.NoArgs
	c.RunE = func(c *cobra.Command, _ []string) error {
		c.SetOut(c.ErrOrStderr())
		c.Help()
		return &cli.ExitError{Code: cli.ExitUsage}
	}
	return c
}

func defaultInit() string {
	exe, err := os.Executable()
	if err != nil {
		return "berth-init"
	}
	return filepath.Join(filepath.Dir(exe), "berth-init")
}
