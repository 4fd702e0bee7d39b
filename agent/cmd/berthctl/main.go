// Command berthctl shows and steers a berth cluster from the documents the
// agents keep in etcd. See `berthctl --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Ctrl-C ends `berthctl watch` and `logs -f` cleanly (exit 0).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := ctl.NewCommand(ctx, ctl.IO{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}, version)
	code := cli.Run(root, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
