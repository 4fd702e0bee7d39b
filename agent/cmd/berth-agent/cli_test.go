package main

import (
	"testing"

	"github.com/berth-os/berth/internal/cli/clitest"
)

func TestCommandLine(t *testing.T) {
	clitest.Check(t, newRoot)
}
