package main

import (
	"testing"

	"github.com/berth-os/berth/internal/cli/clitest"
)

func TestCLI(t *testing.T) {
	clitest.Check(t, newRoot)
}

// Usage errors are exit 2 before anything runs: health, rollback and
// status take no arguments, apply exactly one SOURCE, -o only table|json.
func TestUsage(t *testing.T) {
	clitest.UsageErrors(t, newRoot, []clitest.UsageCase{
		{Args: nil, Want: "Usage:"},
		{Args: []string{"nope"}, Want: `unknown command "nope"`},
		{Args: []string{"health", "now"}, Want: "unknown command"},
		{Args: []string{"rollback", "x"}, Want: "unknown command"},
		{Args: []string{"status", "x"}, Want: "unknown command"},
		{Args: []string{"status", "-o", "yaml"}, Want: "want table or json"},
		{Args: []string{"status", "--json", "-o", "table"}, Want: "conflict"},
		{Args: []string{"apply"}, Want: "want exactly one SOURCE, got 0"},
		{Args: []string{"apply", "a", "b"}, Want: "want exactly one SOURCE, got 2"},
		{Args: []string{"apply", "--tries", "x", "a"}, Want: "invalid argument"},
	})
}

// The status flags: --json stays as a hidden alias of -o json (the e2e
// probes run `berth-update status --json`).
func TestStatusFlags(t *testing.T) {
	c := statusCmd()
	if err := c.ParseFlags([]string{"--json"}); err != nil {
		t.Fatal(err)
	}
	if f := c.Flags().Lookup("json"); f == nil || !f.Hidden {
		t.Error("--json is not a hidden flag")
	}
	if f := c.Flags().ShorthandLookup("o"); f == nil || f.Name != "output" {
		t.Error("-o is not --output")
	}
}
