package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/berth-os/berth/agent/nodeconfig"
	"github.com/berth-os/berth/builder/seed"
)

// imageHostname is the host name a berth image boots with; the agent's
// name defaults to it when node.yaml sets neither hostname nor agent.name.
const imageHostname = "berth"

// loadNodeConfig reads and checks a node.yaml the way berth-node-config
// will at boot, printing each problem as FILE:LINE. With force, problems
// are printed as warnings and the file is still returned (to test how a
// node reports a bad configuration).
func loadNodeConfig(path string, force bool, stderr io.Writer) ([]byte, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build: node configuration: %v\n", err)
		return nil, false
	}
	if len(data) > seed.MaxBytes {
		fmt.Fprintf(stderr, "berth-build: %s: %d bytes; a node configuration is at most %d\n", path, len(data), seed.MaxBytes)
		return nil, false
	}
	_, problems := nodeconfig.Parse(data, imageHostname)
	what := "error"
	if force {
		what = "warning (--force)"
	}
	for _, p := range problems {
		fmt.Fprintf(stderr, "berth-build: %s: %s\n", what, p.In(path))
	}
	if len(problems) > 0 && !force {
		fmt.Fprintf(stderr, "berth-build: %s has %d problem(s); fix them (or pass --force to write it anyway)\n", path, len(problems))
		return nil, false
	}
	return data, true
}

func cmdSeed(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "seed.img", "output `file`: the seed disk image")
	force := fs.Bool("force", false, "write the seed even when node.yaml has errors (they are reported at boot)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: berth-build seed NODE.yaml [-o seed.img] [--force]

Writes a seed disk: a small FAT image labelled %s holding NODE.yaml as
/node.yaml. Attach it to a node as an extra disk (for qemu:
-drive file=seed.img,format=raw,if=virtio,readonly=on); berth-node-config
applies it at every boot. NODE.yaml is checked first, as the node would.

Flags:
`, seed.Label)
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "berth-build seed: want exactly one NODE.yaml, got %d; see --help\n", len(pos))
		return 2
	}
	data, ok := loadNodeConfig(pos[0], *force, stderr)
	if !ok {
		return 2
	}
	if err := seed.Write(*out, data); err != nil {
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (FAT, label %s, /node.yaml %d bytes)\n", *out, seed.Label, len(data))
	return 0
}
