// Package progress reports the long steps of a build: a redrawn line on a
// terminal, plain log lines (every 10%) otherwise, so CI logs stay short.
package progress

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Reporter tracks one step at a time.
type Reporter struct {
	mu      sync.Mutex
	out     io.Writer
	tty     bool
	log     *slog.Logger
	step    string
	start   time.Time
	lastPct int
}

// New reports to stderr, drawing a bar when stderr is a terminal.
func New(log *slog.Logger) *Reporter {
	return &Reporter{out: os.Stderr, tty: term.IsTerminal(int(os.Stderr.Fd())), log: log}
}

// Step starts a named step and ends the previous one.
func (r *Reporter) Step(name string, attrs ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endLocked()
	r.step, r.start, r.lastPct = name, time.Now(), -1
	r.log.Info(name, attrs...)
}

// Percent reports how far the current step is.
func (r *Reporter) Percent(p int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p == r.lastPct {
		return
	}
	if r.tty {
		fmt.Fprintf(r.out, "\r  %-40s %3d%%", r.step, p)
	} else if p/10 != r.lastPct/10 || r.lastPct < 0 {
		r.log.Info(r.step, "progress", fmt.Sprintf("%d%%", p))
	}
	r.lastPct = p
}

// Bytes reports done out of total bytes.
func (r *Reporter) Bytes(done, total int64) {
	if total <= 0 {
		return
	}
	r.Percent(int(done * 100 / total))
}

// Done ends the current step and logs its duration.
func (r *Reporter) Done() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endLocked()
}

func (r *Reporter) endLocked() {
	if r.step == "" {
		return
	}
	if r.tty && r.lastPct >= 0 {
		fmt.Fprintln(r.out)
	}
	r.log.Info(r.step+" done", "seconds", fmt.Sprintf("%.1f", time.Since(r.start).Seconds()))
	r.step = ""
}
