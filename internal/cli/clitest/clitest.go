// Package clitest checks a program built with package cli the same way
// for all of berth's programs: every command's --help, a bad flag on
// every command, completion scripts and version.
package clitest

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
)

// Check walks every command of the program newRoot makes (a fresh tree per
// run: commands keep flag state) and asserts: `CMD --help` exits 0 with
// that command's own usage on stdout and nothing on stderr, without
// running it; `CMD --no-such-flag` exits 2 with one line on stderr naming
// the flag; `completion bash|zsh|fish` print a script; `version` prints
// the program's name. It returns the command paths it checked.
func Check(t *testing.T, newRoot func() *cobra.Command) []string {
	t.Helper()
	var paths [][]string
	tree := newRoot()
	tree.InitDefaultCompletionCmd() // cobra adds it at Execute; walk it too
	cli.Walk(tree, func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		var path []string
		for p := c; p.HasParent(); p = p.Parent() {
			path = append([]string{p.Name()}, path...)
		}
		paths = append(paths, path)
	})
	var names []string
	for _, path := range paths {
		name := strings.Join(append([]string{newRoot().Name()}, path...), " ")
		names = append(names, name)
		code, stdout, stderr := run(newRoot(), append(append([]string{}, path...), "--help")...)
		if code != 0 || stderr != "" {
			t.Errorf("%s --help: exit %d, stderr %q; want 0 and nothing", name, code, stderr)
		}
		if !strings.Contains(stdout, "Usage:") || !strings.Contains(stdout, name) {
			t.Errorf("%s --help: stdout lacks its own usage:\n%s", name, stdout)
		}
		code, stdout, stderr = run(newRoot(), append(append([]string{}, path...), "--no-such-flag")...)
		if code != 2 || stdout != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "no-such-flag") {
			t.Errorf("%s --no-such-flag: exit %d, stdout %q, stderr %q; want exit 2 and one line naming the flag", name, code, stdout, stderr)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if code, stdout, stderr := run(newRoot(), "completion", shell); code != 0 || len(stdout) < 100 {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", shell, code, len(stdout), stderr)
		}
	}
	root := newRoot()
	if code, stdout, _ := run(newRoot(), "version"); code != 0 || !strings.HasPrefix(stdout, root.Name()+" ") {
		t.Errorf("version: exit %d, %q", code, stdout)
	}
	return names
}

func run(root *cobra.Command, args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := cli.Run(root, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// UsageCase is a command line that must be refused as bad usage, and
// what its one line on stderr must contain.
type UsageCase struct {
	Args []string
	Want string
}

// UsageErrors asserts that each case exits 2 with nothing on stdout and
// Want on stderr.
func UsageErrors(t *testing.T, newRoot func() *cobra.Command, cases []UsageCase) {
	t.Helper()
	for _, tc := range cases {
		code, stdout, stderr := run(newRoot(), tc.Args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.Want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.Args, code, stdout, stderr, tc.Want)
		}
	}
}
