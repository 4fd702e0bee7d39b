package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// newLogger logs to the journal when systemd connected stderr to it
// (JOURNAL_STREAM), so priorities survive; otherwise text to stderr.
func newLogger(level string) (*slog.Logger, bool) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(level))
	if os.Getenv("JOURNAL_STREAM") != "" && journal.Enabled() {
		return slog.New(newJournalHandler(lvl)), true
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), false
}

// journalHandler formats records as "msg key=value ..." (the journal adds
// its own time stamp) and sends each with its syslog priority.
type journalHandler struct {
	inner slog.Handler
	out   *journalBuffer
}

type journalBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func newJournalHandler(level slog.Level) *journalHandler {
	out := &journalBuffer{}
	inner := slog.NewTextHandler(&out.buf, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	return &journalHandler{inner: inner, out: out}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.buf.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	return journal.Send(string(bytes.TrimRight(h.out.buf.Bytes(), "\n")), priority(r.Level), nil)
}

func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(attrs), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
