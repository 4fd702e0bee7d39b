package ctl_test

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/internal/cli/clitest"
)

func TestCommandLine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // `version` must not wait for a cluster here
	names := clitest.Check(t, func() *cobra.Command { return ctl.NewCommand(ctx, ctl.IO{}, "1.0") })
	for _, want := range []string{"berthctl os rollout", "berthctl logs", "berthctl registry login", "berthctl tenant add", "berthctl image push"} {
		if !strings.Contains(strings.Join(names, "\n")+"\n", want+"\n") {
			t.Errorf("no command %q in %q", want, names)
		}
	}
}

func TestVersionWithoutCluster(t *testing.T) {
	code, out, errOut := berthctl(t, map[string]string{"BERTHCTL_ENDPOINTS": "http://127.0.0.1:1"}, "version", "--timeout", "500ms")
	if code != 0 || out != "berthctl dev\n" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "cluster not reached") {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
