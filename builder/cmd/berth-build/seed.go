package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

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

func seedCmd() *cobra.Command {
	var (
		out   string
		force bool
	)
	c := &cobra.Command{
		Use:   "seed NODE.yaml",
		Short: "Write a seed disk (FAT, label BERTH-SEED) holding a node's configuration",
		Long: `Writes a seed disk: a small FAT image labelled ` + seed.Label + ` holding NODE.yaml as
/node.yaml. Attach it to a node as an extra disk (for qemu:
-drive file=seed.img,format=raw,if=virtio,readonly=on); berth-node-config
applies it at every boot. NODE.yaml is checked first, as the node would.`,
		Args: exactlyOne("NODE.yaml"),
		RunE: func(c *cobra.Command, args []string) error {
			return exit(runSeed(args[0], out, force, c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "seed.img", "output `file`: the seed disk image")
	c.Flags().BoolVar(&force, "force", false, "write the seed even when node.yaml has errors (they are reported at boot)")
	return c
}

func runSeed(path, out string, force bool, stdout, stderr io.Writer) int {
	data, ok := loadNodeConfig(path, force, stderr)
	if !ok {
		return 2
	}
	if err := seed.Write(out, data); err != nil {
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (FAT, label %s, /node.yaml %d bytes)\n", out, seed.Label, len(data))
	return 0
}
