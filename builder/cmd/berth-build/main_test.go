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
	clitest.UsageErrors(t, newRoot, []clitest.UsageCase{
		{Args: nil, Want: "Usage:"},
		{Args: []string{"nope"}, Want: `unknown command "nope"`},
		{Args: []string{"build"}, Want: "want exactly one SPEC file, got 0"},
		{Args: []string{"check", "a", "b"}, Want: "want exactly one SPEC file, got 2"},
		{Args: []string{"keygen"}, Want: "want exactly one NAME"},
		{Args: []string{"install", "x.raw"}, Want: "--target DEV is required"},
		{Args: []string{"run", "--accel", "warp", "x.qcow2"}, Want: "--accel"},
		{Args: []string{"cluster"}, Want: "Usage:"},
		{Args: []string{"cluster", "sideways"}, Want: `unknown command "sideways"`},
		{Args: []string{"cluster", "up"}, Want: "--image is required"},
		{Args: []string{"cluster", "down", "--image", "x"}, Want: "unknown flag: --image"},
		{Args: []string{"check", "/no/such/spec.yaml"}, Want: "berth-build: "},
	})
}

func TestCheck(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "--", "../../../images/minimal.yaml"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), ": ok (base key") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
