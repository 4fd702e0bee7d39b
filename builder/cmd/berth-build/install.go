package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/berth-os/berth/builder/install"
	"github.com/berth-os/berth/builder/progress"
)

func cmdInstall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "the whole disk to write, e.g. /dev/sdb (required)")
	force := fs.Bool("force", false, "overwrite a disk that holds a partition table or a filesystem")
	yes := fs.Bool("yes", false, "do not ask for confirmation (needed when stdin is not a terminal)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `Usage: berth-build install --target DEV IMAGE.raw [--force] [--yes]

Writes IMAGE.raw to the whole disk DEV for bare metal, verifies it by reading
it back (sha256), and moves the backup GPT to the end of a larger disk (the
node grows its state partition to the disk's end at first boot).
Refuses a partition, a mounted or otherwise used disk, a disk smaller than
the image, and (unless --force) a disk holding a partition table or a
filesystem. Asks for confirmation unless --yes. Needs root.

Flags:`)
		fs.PrintDefaults()
	}
	image, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil && *target == "" {
		err = errors.New("--target DEV is required")
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build install: %v\n", err)
		return 2
	}
	o := install.Options{Target: *target, Image: image, Force: *force}
	if !*yes {
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
		image, *target, res.ImageBytes>>20, res.Write.Seconds(), rate(res.Write.Seconds()),
		res.Verify.Seconds(), rate(res.Verify.Seconds()), res.SHA256)
	if res.BackupGPTMoved {
		fmt.Fprintf(stdout, "  backup GPT moved to the end of the %d MiB disk; the state partition grows at first boot\n", res.DiskBytes>>20)
	}
	return 0
}
