package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/cli/clitest"
)

func TestCLI(t *testing.T) {
	clitest.Check(t, newRoot)
}

// Usage errors are exit 2 before anything runs: health, rollback and
// status take no arguments, apply exactly one SOURCE, -o only table|json.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"health", "now"}, "unknown command"},
		{[]string{"rollback", "x"}, "unknown command"},
		{[]string{"status", "x"}, "unknown command"},
		{[]string{"status", "-o", "yaml"}, "want table or json"},
		{[]string{"status", "--json", "-o", "table"}, "conflict"},
		{[]string{"apply"}, "want exactly one SOURCE, got 0"},
		{[]string{"apply", "a", "b"}, "want exactly one SOURCE, got 2"},
		{[]string{"apply", "--tries", "x", "a"}, "invalid argument"},
	} {
		var stdout, stderr bytes.Buffer
		code := cli.Run(newRoot(), tc.args, &stdout, &stderr)
		if code != 2 || stdout.Len() != 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, stdout.String(), stderr.String(), tc.want)
		}
	}
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
