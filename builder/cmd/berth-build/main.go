// Command berth-build turns an image spec into a bootable berth disk image.
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
