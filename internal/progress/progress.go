// Package progress shows how far a long transfer or step is, the same way
// in every berth program: on a terminal one line rewritten in place; on
// anything else (a pipe, a log file, journald, a serial console) plain
// lines, one when the work enters a new tenth and one at least every
// Quiet while it moves, so logs stay short but never look stuck.
package progress

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Defaults for the zero fields of Options.
const (
	// DefaultQuiet is the longest a moving transfer goes without a plain line.
	DefaultQuiet = 30 * time.Second
	// DefaultRedraw is the least time between two redraws on a terminal:
	// transfers report every few KiB, far more often than anyone reads.
	DefaultRedraw = 100 * time.Millisecond
)

// Options choose how a Line shows itself.
type Options struct {
	// Terminal rewrites one line in place; otherwise plain lines.
	Terminal bool
	// Log, when set, receives the plain lines as records (message: the
	// label, attribute progress) instead of the writer.
	Log *slog.Logger
	// Quiet is the longest time without a plain line while progress
	// moves; default DefaultQuiet.
	Quiet time.Duration
	// Redraw is the least time between terminal redraws; default
	// DefaultRedraw.
	Redraw time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Line reports the progress of one piece of work under a label, like
// "pushing to node node-1: 12.0 MiB of 100.0 MiB (12%)". Its methods are
// safe for concurrent use.
type Line struct {
	mu       sync.Mutex
	w        io.Writer
	label    string
	o        Options
	status   string    // the latest status, shown or not
	shown    string    // the status last written
	tenth    int       // plain: the tenth of the last line, -1 before any
	lastLine time.Time // plain: when the last line was written
	lastDraw time.Time // terminal: when the line was last redrawn
	width    int       // terminal: length of the drawn line
	done     bool
}

// New reports to w, rewriting one line when w is a terminal.
func New(w io.Writer, label string) *Line {
	return NewWith(w, label, Options{Terminal: IsTerminal(w)})
}

// NewWith reports to w as o says.
func NewWith(w io.Writer, label string, o Options) *Line {
	if o.Quiet <= 0 {
		o.Quiet = DefaultQuiet
	}
	if o.Redraw <= 0 {
		o.Redraw = DefaultRedraw
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Line{w: w, label: label, o: o, tenth: -1}
}

// IsTerminal tells whether w is a terminal (an *os.File on a tty).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// MiB formats a byte count for people: "12.3 MiB".
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// Percent reports p percent done.
func (l *Line) Percent(p int) {
	p = min(max(p, 0), 100)
	l.update(p, fmt.Sprintf("%d%%", p))
}

// Bytes reports done of total bytes; nothing while the total is unknown.
func (l *Line) Bytes(done, total int64) {
	if total <= 0 {
		return
	}
	done = min(max(done, 0), total)
	p := int(done * 100 / total)
	l.update(p, fmt.Sprintf("%s of %s (%d%%)", MiB(done), MiB(total), p))
}

func (l *Line) update(pct int, status string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done || status == l.status {
		return
	}
	l.status = status
	now := l.o.Now()
	if l.o.Terminal {
		// The end is always drawn; in between at most one redraw per Redraw.
		if pct == 100 || l.lastDraw.IsZero() || now.Sub(l.lastDraw) >= l.o.Redraw {
			l.draw(now)
		}
		return
	}
	if pct/10 != l.tenth || now.Sub(l.lastLine) >= l.o.Quiet {
		l.tenth, l.lastLine, l.shown = pct/10, now, status
		if l.o.Log != nil {
			l.o.Log.Info(l.label, "progress", status)
		} else {
			fmt.Fprintf(l.w, "%s: %s\n", l.label, status)
		}
	}
}

// draw rewrites the terminal line, blanking what a longer one left.
func (l *Line) draw(now time.Time) {
	text := l.label + ": " + l.status
	pad := max(l.width-len(text), 0)
	fmt.Fprintf(l.w, "\r%s%s", text, strings.Repeat(" ", pad))
	l.width, l.lastDraw, l.shown = len(text), now, l.status
}

// Done ends the line: on a terminal it draws the latest status and moves
// to the next line, so what follows is not written over it. Updates after
// Done are ignored; Done may be called more than once.
func (l *Line) Done() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.done = true
	if !l.o.Terminal || l.status == "" {
		return
	}
	if l.shown != l.status {
		l.draw(l.o.Now())
	}
	fmt.Fprintln(l.w)
}
