//go:build cgo

// Command berth-shim is the per-container monitor of the berth agent, and the
// container init that libcontainer re-executes.
//
//	berth-shim run --root ROOT --id ID   monitor the container described by ROOT/ID/spec.json
//	berth-shim init                      libcontainer's container init (internal)
//
// The agent starts one shim per container in a session of its own. The shim
// creates the container with libcontainer, pumps its output to
// ROOT/ID/container.log, proxies its ports, records state.json while it runs
// and exit.json when it is gone, so containers and exit codes survive the
// agent. SIGTERM asks for a graceful stop (SIGTERM to the container, SIGKILL
// after the stop timeout). Keep imports small: every package init() linked in
// here runs again for every container start.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// libcontainer needs the device cgroup code registered, and nsenter's C
	// constructor to run before the Go runtime in "init".
	_ "github.com/opencontainers/cgroups/devices"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // never returns
	}
}

const usage = `usage: berth-shim run --root ROOT --id ID
Monitors one container of the berth agent; the agent starts it, not you.`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		root := fs.String("root", "", "container state root")
		id := fs.String("id", "", "container id")
		if err := fs.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		if *root == "" || *id == "" || fs.NArg() != 0 {
			fmt.Fprintln(os.Stderr, "berth-shim run: --root and --id are required")
			os.Exit(2)
		}
		os.Exit(run(*root, *id))
	case "-h", "--help", "help":
		fmt.Println(usage)
	default:
		fmt.Fprintf(os.Stderr, "berth-shim: unknown command %q\n%s\n", os.Args[1], usage)
		os.Exit(2)
	}
}
