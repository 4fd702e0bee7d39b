package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/berth-os/berth/builder/install"
	"github.com/berth-os/berth/builder/progress"
	"github.com/berth-os/berth/internal/cli"
)

func installCmd() *cobra.Command {
	var (
		target     string
		force, yes bool
	)
	c := &cobra.Command{
		Use:   "install --target DEV IMAGE.raw",
		Short: "Write a raw image to a whole disk (bare metal), verified by reading it back",
		Long: `Writes IMAGE.raw to the whole disk DEV for bare metal, verifies it by reading
it back (sha256), and moves the backup GPT to the end of a larger disk (the
node grows its state partition to the disk's end at first boot).
Refuses a partition, a mounted or otherwise used disk, a disk smaller than
the image, and (unless --force) a disk holding a partition table or a
filesystem. Asks for confirmation unless --yes. Needs root.`,
		Args: exactlyOne("IMAGE.raw"),
		RunE: func(c *cobra.Command, args []string) error {
			if target == "" {
				return cli.Usagef("install: --target DEV is required (see %s --help)", c.CommandPath())
			}
			return exit(runInstall(target, args[0], force, yes, c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
	f := c.Flags()
	f.StringVar(&target, "target", "", "the whole disk to write, e.g. /dev/sdb (required)")
	f.BoolVar(&force, "force", false, "overwrite a disk that holds a partition table or a filesystem")
	f.BoolVar(&yes, "yes", false, "do not ask for confirmation (needed when stdin is not a terminal)")
	return c
}

func runInstall(target, image string, force, yes bool, stdout, stderr io.Writer) int {
	o := install.Options{Target: target, Image: image, Force: force}
	if !yes {
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			fmt.Fprintln(stderr, "berth-build install: stdin is not a terminal, so nobody can confirm: pass --yes")
			return 2
		}
		o.Confirm = func(summary string) bool {
			fmt.Fprintf(stderr, "%s\nType yes to continue: ", summary)
			line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
			return strings.TrimSpace(line) == "yes"
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	o.Log, o.Progress = log, progress.New(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := install.Install(ctx, o)
	if p, ok := o.Progress.(*progress.Reporter); ok {
		p.Done()
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build install: %v\n", err)
		return 1
	}
	rate := func(d float64) float64 { return float64(res.ImageBytes) / (1 << 20) / max(d, 0.001) }
	fmt.Fprintf(stdout, "installed %s on %s: %d MiB written in %.1f s (%.0f MiB/s), verified in %.1f s (%.0f MiB/s), sha256 %s\n",
		image, target, res.ImageBytes>>20, res.Write.Seconds(), rate(res.Write.Seconds()),
		res.Verify.Seconds(), rate(res.Verify.Seconds()), res.SHA256)
	if res.BackupGPTMoved {
		fmt.Fprintf(stdout, "  backup GPT moved to the end of the %d MiB disk; the state partition grows at first boot\n", res.DiskBytes>>20)
	}
	return 0
}
