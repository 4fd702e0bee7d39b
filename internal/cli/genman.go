package cli

import (
	"os"

	"github.com/spf13/cobra"
)

// GenManCommand is the hidden `gen-man DIR` command NewRoot adds to every
// program, so that `make man` can write its man pages (GenMan) into DIR.
func GenManCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write this program's man pages into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			return GenMan(root, args[0])
		},
	}
}
