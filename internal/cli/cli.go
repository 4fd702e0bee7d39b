// Package cli is the one way berth's programs (berth-build, berth-update,
// berth-agent, berthctl) build their command lines, on cobra: every
// command has its own --help on stdout (exit 0); a bad flag, a missing or
// extra argument or an unknown command is one line on stderr and exit 2;
// `--` ends options; `completion bash|zsh|fish` and `version` exist on
// every program; man pages come from the same tree (make man).
//
// A command's RunE returns nil (exit 0), an *ExitError for a chosen exit
// code, or any other error (exit 1). Errors raised before RunE runs (flag
// parsing, argument checks, unknown commands) are usage errors: exit 2.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Exit codes shared by the programs.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// ExitError makes a command exit with Code, printing Err (when not nil)
// as one line "PROGRAM: Err".
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Exitf is an ExitError with a formatted message.
func Exitf(code int, format string, args ...any) error {
	return &ExitError{Code: code, Err: fmt.Errorf(format, args...)}
}

// Usagef is a usage error (exit 2) raised by a command itself, for checks
// cobra cannot make (a flag that conflicts with another, say).
func Usagef(format string, args ...any) error { return Exitf(ExitUsage, format, args...) }

// NewRoot is a program's root command: errors and usage are printed by
// Run (one line), not by cobra, and `version` prints the version.
func NewRoot(name, short, long, version string) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         short,
		Long:          long,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		// A program run without a command shows its help and exits 2.
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return Usagef("unknown command %q (see %s --help)", args[0], c.CommandPath())
			}
			c.SetOut(c.ErrOrStderr())
			c.Help()
			return &ExitError{Code: ExitUsage}
		},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	// Every program can write its man pages (make man), hidden from help.
	root.AddCommand(GenManCommand(root))
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintf(c.OutOrStdout(), "%s %s\n", root.Name(), root.Version)
			return nil
		},
	})
	return root
}

// Run executes root with args and returns the exit code; errors are one
// line "PROGRAM: message" on stderr.
func Run(root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	ran := false
	Walk(root, func(c *cobra.Command) {
		// Usage errors name the command's help; a flag error is a usage error.
		c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
			return Usagef("%v (see %s --help)", err, c.CommandPath())
		})
		if c.RunE != nil {
			run := c.RunE
			c.RunE = func(c *cobra.Command, args []string) error {
				ran = true
				return run(c, args)
			}
		}
	})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	code := ExitFailure
	switch {
	case errors.As(err, &ee):
		code = ee.Code
		if ee.Err == nil {
			return code
		}
	case !ran:
		// cobra's own checks: arguments, unknown commands.
		code = ExitUsage
		if !strings.Contains(err.Error(), "--help") {
			err = fmt.Errorf("%w (see %s --help)", err, root.Name())
		}
	}
	fmt.Fprintf(stderr, "%s: %s\n", root.Name(), oneLine(err.Error()))
	return code
}

// oneLine keeps an error to one line: cobra's suggestions come on more.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		rest := strings.Join(strings.Fields(s[i+1:]), " ")
		s = s[:i]
		if rest != "" {
			s += " (" + rest + ")"
		}
	}
	return s
}

// Walk calls fn for c and every command below it.
func Walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		Walk(sub, fn)
	}
}

// GenMan writes one man page per command of root into dir (section 1).
func GenMan(root *cobra.Command, dir string) error {
	root.DisableAutoGenTag = true // reproducible pages: no date line
	return doc.GenManTree(root, &doc.GenManHeader{Section: "1", Source: "berth"}, dir)
}
