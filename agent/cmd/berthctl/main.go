// Command berthctl shows a berth cluster's nodes and etcd members from the
// documents the agents keep in etcd. See `berthctl --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-os/berth/agent/ctl"
)

func main() {
	// Ctrl-C ends `berthctl watch` cleanly (exit 0).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, os.Args[1:], ctl.IO{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	os.Exit(code)
}
