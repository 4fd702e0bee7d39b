// Package progress reports the long steps of a build, one step at a time,
// with internal/progress's line: redrawn on a terminal, log lines (one
// per tenth) otherwise, so CI logs stay short.
package progress

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/berth-os/berth/internal/progress"
)

// Reporter tracks one step at a time.
type Reporter struct {
	mu    sync.Mutex
	tty   bool
	log   *slog.Logger
	step  string
	start time.Time
	line  *progress.Line
}

// New reports to stderr, drawing a line when stderr is a terminal.
func New(log *slog.Logger) *Reporter {
	return &Reporter{tty: progress.IsTerminal(os.Stderr), log: log}
}

// Step starts a named step and ends the previous one.
func (r *Reporter) Step(name string, attrs ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endLocked()
	r.step, r.start = name, time.Now()
	// Off a terminal the progress lines are records of the build log.
	r.line = progress.NewWith(os.Stderr, name, progress.Options{Terminal: r.tty, Log: r.log})
	r.log.Info(name, attrs...)
}

// Percent reports how far the current step is.
func (r *Reporter) Percent(p int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.line != nil {
		r.line.Percent(p)
	}
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
	r.line.Done()
	r.log.Info(r.step+" done", "seconds", fmt.Sprintf("%.1f", time.Since(r.start).Seconds()))
	r.step, r.line = "", nil
}
