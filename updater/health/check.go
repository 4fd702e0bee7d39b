package health

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// MaxOutput bounds the output kept per check: the end of it, where errors are.
const MaxOutput = 4 << 10

// outputGrace is how long a finished or killed check may keep its output
// pipe open (through a process that left its group) before the gate stops
// reading it.
const outputGrace = 2 * time.Second

type checkFile struct{ name, path string }

// listChecks returns the executable regular files of dir in lexical order
// (symbolic links are followed). A missing directory holds no checks.
func listChecks(dir string) (checks []checkFile, skipped []string, err error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read the checks directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if editorLeftover(name) {
			continue
		}
		p := filepath.Join(dir, name)
		info, err := os.Stat(p)
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Sprintf("%s (%v)", name, err))
		case !info.Mode().IsRegular():
			skipped = append(skipped, name+" (not a regular file)")
		case info.Mode().Perm()&0o111 == 0:
			skipped = append(skipped, name+" (not executable)")
		default:
			checks = append(checks, checkFile{name: name, path: p})
		}
	}
	return checks, skipped, nil
}

// editorLeftover matches hidden files, backups and autosaves (".x.swp",
// "x~", "#x#") that must never run as checks.
func editorLeftover(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") ||
		(strings.HasPrefix(name, "#") && strings.HasSuffix(name, "#"))
}

// runCheck runs one check in its own process group, so a timeout kills
// everything it started, and so does its end: a check must not leave
// processes behind in the gate's service.
func runCheck(ctx context.Context, path, name string, timeout time.Duration) (Check, string) {
	checkCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	out := &tailBuffer{max: MaxOutput}
	cmd := exec.CommandContext(checkCtx, path)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = outputGrace

	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = killGroup(cmd.Process.Pid) // leftovers; usually nothing is there
	}
	c := Check{Name: name, OK: err == nil, Output: out.String(), Duration: time.Since(start)}
	if err == nil {
		return c, ""
	}

	var reason string
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		reason = fmt.Sprintf("check %s cancelled", name)
	case errors.Is(checkCtx.Err(), context.DeadlineExceeded):
		reason = fmt.Sprintf("check %s timed out after %s", name, formatDuration(timeout))
	case errors.As(err, &exitErr):
		reason = fmt.Sprintf("check %s failed (%s)", name, exitStatus(exitErr))
		if last := oneLine(c.Output); last != "" {
			reason += ": " + last
		}
	default:
		// Could not start it: a bad interpreter line, for example.
		reason = fmt.Sprintf("check %s could not run: %v", name, err)
	}
	if c.Output == "" {
		c.Output = err.Error()
	}
	return c, reason
}

func exitStatus(e *exec.ExitError) string {
	if ws, ok := e.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", e.ExitCode())
}

func killGroup(pid int) error {
	err := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// tailBuffer keeps the last max bytes written to it. exec.Cmd serializes
// writes when Stdout and Stderr are the same pointer, so no lock is needed.
type tailBuffer struct {
	max       int
	buf       []byte
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	// Trim in batches so a chatty check costs amortized O(1) per byte.
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
		t.truncated = true
	}
	return len(p), nil
}

const truncatedMark = "[...]\n"

func (t *tailBuffer) String() string {
	b := t.buf
	truncated := t.truncated
	if len(b) > t.max {
		b = b[len(b)-t.max:]
		truncated = true
	}
	if truncated {
		// Drop a rune cut in half, and leave room for the mark.
		b = b[min(len(truncatedMark), len(b)):]
		for len(b) > 0 && !utf8.RuneStart(b[0]) {
			b = b[1:]
		}
		return truncatedMark + strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
