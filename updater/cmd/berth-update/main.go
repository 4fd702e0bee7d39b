// Command berth-update installs a new OS into the passive slot of a berth
// node, reports the slots' state, rolls back, and runs the boot health gate.
package main

import (
	"os"

	"github.com/berth-os/berth/internal/cli"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	os.Exit(cli.Run(newRoot(), os.Args[1:], os.Stdout, os.Stderr))
}
