package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/updater/slot"
)

func statusCmd() *cobra.Command {
	var (
		output string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the booted slot, the other slot, boot entries and the last update",
		Long: `The booted slot and its version, the other slot's state, the boot entries
with their tries, and the last update's result. -o json prints the same
as JSON.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if asJSON {
				if output != "" && output != "json" {
					return cli.Usagef("status: --json and -o %s conflict", output)
				}
				output = "json"
			}
			if output != "" && output != "json" && output != "table" {
				return cli.Usagef("status: -o %q: want table or json (see %s --help)", output, c.CommandPath())
			}
			_, stop, _, sys := env(c)
			defer stop()
			st, err := sys.Status()
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if output == "json" {
				enc := json.NewEncoder(c.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(c.OutOrStdout(), st)
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "output `format`: table (default) or json")
	c.Flags().BoolVar(&asJSON, "json", false, "same as -o json")
	c.Flags().MarkHidden("json")
	return c
}

func printStatus(w io.Writer, st slot.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SLOT\tVERSION\tSTATE\tENTRY\n")
	for _, s := range []slot.SlotStatus{st.Booted, st.Other} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Slot, dash(s.Version), s.State, dash(s.Entry))
	}
	tw.Flush()
	if len(st.Entries) > 0 {
		fmt.Fprintln(w, "\nboot entries:")
		for _, e := range st.Entries {
			tries := "blessed"
			switch {
			case e.Bad:
				tries = fmt.Sprintf("bad (0 tries left, %d done)", e.TriesDone)
			case e.HasCounter:
				tries = fmt.Sprintf("%d tries left, %d done", e.TriesLeft, e.TriesDone)
			}
			booted := ""
			if e.Booted {
				booted = "  (booted)"
			}
			fmt.Fprintf(w, "  %-24s %-10s %s%s\n", e.File, e.Version, tries, booted)
		}
	}
	if u := st.LastUpdate; u != nil {
		fmt.Fprintf(w, "\nlast update: %s %s -> %s (slot %s) at %s", u.State, dash(u.FromVersion), u.Version, u.Slot, u.Time.Format(time.RFC3339))
		if u.Reason != "" {
			fmt.Fprintf(w, ": %s", u.Reason)
		}
		fmt.Fprintln(w)
	}
	if st.Interrupted {
		fmt.Fprintln(w, "the last install was interrupted: run berth-update apply again")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
