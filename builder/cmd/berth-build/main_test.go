package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/cli/clitest"
)

// run runs berth-build's command line as main does.
func run(args []string, stdout, stderr io.Writer) int {
	return cli.Run(newRoot(), args, stdout, stderr)
}

func TestCLI(t *testing.T) {
	clitest.Check(t, newRoot)
}

// Usage errors are exit 2 with one line, before anything runs.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"build"}, "want exactly one SPEC file, got 0"},
		{[]string{"check", "a", "b"}, "want exactly one SPEC file, got 2"},
		{[]string{"keygen"}, "want exactly one NAME"},
		{[]string{"install", "x.raw"}, "--target DEV is required"},
		{[]string{"run", "--accel", "warp", "x.qcow2"}, "--accel"},
		{[]string{"cluster"}, "Usage:"},
		{[]string{"cluster", "sideways"}, `unknown command "sideways"`},
		{[]string{"cluster", "up"}, "--image is required"},
		{[]string{"cluster", "down", "--image", "x"}, "unknown flag: --image"},
		{[]string{"check", "/no/such/spec.yaml"}, "berth-build: "},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != 2 || stdout.Len() != 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, stdout.String(), stderr.String(), tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "--", "../../../images/minimal.yaml"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), ": ok (base key") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
