package cli_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/cli/clitest"
)

// sample is a small program: `greet NAME [--loud]`, `fail`, `group sub`.
func sample(ran *[]string) func() *cobra.Command {
	return func() *cobra.Command {
		root := cli.NewRoot("sample", "a sample program", "", "1.2.3")
		var loud bool
		greet := &cobra.Command{Use: "greet NAME", Short: "greet someone", Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				*ran = append(*ran, "greet "+args[0])
				if loud {
					args[0] = strings.ToUpper(args[0])
				}
				c.Println("hello", args[0])
				return nil
			}}
		greet.Flags().BoolVar(&loud, "loud", false, "shout")
		fail := &cobra.Command{Use: "fail", Short: "fail with 3", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				*ran = append(*ran, "fail")
				return cli.Exitf(3, "it broke; try again")
			}}
		plain := &cobra.Command{Use: "plain", Short: "fail plainly", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error { return errors.New("plain failure") }}
		group := &cobra.Command{Use: "group", Short: "a group"}
		group.AddCommand(&cobra.Command{Use: "sub", Short: "a sub-command", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error { *ran = append(*ran, "sub"); return nil }})
		root.AddCommand(greet, fail, plain, group)
		return root
	}
}

func TestRunExitCodes(t *testing.T) {
	var ran []string
	newRoot := sample(&ran)
	tests := []struct {
		args       []string
		code       int
		stdout     string
		stderrHas  string
		runsAnyway bool
	}{
		{[]string{"greet", "ann"}, 0, "hello ann\n", "", true},
		{[]string{"greet", "--loud", "--", "--ann"}, 0, "hello --ANN\n", "", true},
		{[]string{"greet"}, 2, "", "accepts 1 arg(s)", false},
		{[]string{"greet", "a", "b"}, 2, "", "accepts 1 arg(s)", false},
		{[]string{"greet", "--shout", "ann"}, 2, "", "unknown flag: --shout", false},
		{[]string{"nope"}, 2, "", `unknown command "nope"`, false},
		{[]string{"fail"}, 3, "", "sample: it broke; try again", true},
		{[]string{"plain"}, 1, "", "sample: plain failure", true},
		{[]string{"group", "sub", "extra"}, 2, "", "unknown command", false},
		{[]string{}, 2, "", "Usage:", false},
	}
	for _, tc := range tests {
		ran = nil
		var stdout, stderr bytes.Buffer
		code := cli.Run(newRoot(), tc.args, &stdout, &stderr)
		if code != tc.code || stdout.String() != tc.stdout || !strings.Contains(stderr.String(), tc.stderrHas) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderrHas)
		}
		if tc.code != 0 && tc.code != 2 || tc.args == nil {
			continue
		}
		if tc.code == 2 && len(tc.args) > 0 && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
			t.Errorf("%q: usage error is more than one line: %q", tc.args, stderr.String())
		}
		if !tc.runsAnyway && len(ran) > 0 {
			t.Errorf("%q: ran %v on a usage error", tc.args, ran)
		}
	}
}

func TestCheckWalksEveryCommand(t *testing.T) {
	var ran []string
	names := clitest.Check(t, sample(&ran))
	for _, want := range []string{"sample", "sample greet", "sample group sub", "sample version", "sample completion bash"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("Check did not walk %q (walked %v)", want, names)
		}
	}
	if len(ran) != 0 {
		t.Errorf("--help or a bad flag ran commands: %v", ran)
	}
}

func TestGenMan(t *testing.T) {
	var ran []string
	dir := t.TempDir()
	if err := cli.GenMan(sample(&ran)(), dir); err != nil {
		t.Fatal(err)
	}
	for _, page := range []string{"sample.1", "sample-greet.1", "sample-group-sub.1"} {
		data, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !bytes.Contains(data, []byte(".TH")) {
			t.Errorf("man page %s: %v %q", page, err, data)
		}
	}
}
