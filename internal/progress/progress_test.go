package progress

import (
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clock is a settable clock for Options.Now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// Not a terminal: a line at the first report, one per new tenth (however
// many reports fall inside it), and one after Quiet when a tenth takes long.
func TestPlainLines(t *testing.T) {
	var out bytes.Buffer
	c := &clock{t: time.Unix(1e9, 0)}
	l := NewWith(&out, "writing slot", Options{Now: c.now, Quiet: 30 * time.Second})
	for p := 0; p <= 100; p++ {
		l.Percent(p)
		l.Percent(p) // a repeat says nothing new
		c.advance(100 * time.Millisecond)
	}
	l.Done()
	var want []string
	for p := 0; p <= 100; p += 10 {
		want = append(want, "writing slot: "+strconv.Itoa(p)+"%")
	}
	if got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("plain lines:\n%s\nwant one per tenth:\n%s", out.String(), strings.Join(want, "\n"))
	}

	// A slow transfer: 1 MiB every 10 s of 100 MiB. Inside the first tenth
	// a line comes every 30 s, so the output never looks stuck.
	out.Reset()
	l = NewWith(&out, "pushing to node node-1", Options{Now: c.now})
	for i := int64(0); i <= 12; i++ {
		l.Bytes(i<<20, 100<<20)
		c.advance(10 * time.Second)
	}
	want = []string{
		"pushing to node node-1: 0.0 MiB of 100.0 MiB (0%)",
		"pushing to node node-1: 3.0 MiB of 100.0 MiB (3%)",
		"pushing to node node-1: 6.0 MiB of 100.0 MiB (6%)",
		"pushing to node node-1: 9.0 MiB of 100.0 MiB (9%)",
		"pushing to node node-1: 10.0 MiB of 100.0 MiB (10%)",
	}
	if got := strings.TrimSuffix(out.String(), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("slow transfer:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	l.Bytes(5, 0) // an unknown total shows nothing
	if strings.Count(out.String(), "\n") != len(want) {
		t.Errorf("a report without total wrote: %q", out.String())
	}
}

// Plain lines can go to a logger instead (the builder's build log).
func TestPlainToLog(t *testing.T) {
	var out, logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	l := NewWith(&out, "building the slot filesystem", Options{Log: log})
	l.Percent(5)
	l.Percent(42)
	l.Done()
	want := "level=INFO msg=\"building the slot filesystem\" progress=5%\nlevel=INFO msg=\"building the slot filesystem\" progress=42%\n"
	if out.Len() != 0 || logged.String() != want {
		t.Errorf("writer %q, log:\n%s\nwant:\n%s", out.String(), logged.String(), want)
	}
}

// On a terminal: one line rewritten with \r (blanking what a longer text
// left), redrawn at most every Redraw, the end always drawn, and Done
// draws the latest status and ends the line.
func TestTerminal(t *testing.T) {
	var out bytes.Buffer
	c := &clock{t: time.Unix(1e9, 0)}
	l := NewWith(&out, "push", Options{Terminal: true, Now: c.now, Redraw: time.Second})
	l.Bytes(100<<20, 1000<<20) // drawn: the first
	c.advance(100 * time.Millisecond)
	l.Bytes(200<<20, 1000<<20) // too soon
	c.advance(time.Second)
	l.Bytes(5<<20, 1000<<20) // drawn (a retry went back), shorter
	l.Bytes(1000<<20, 1000<<20)
	l.Bytes(1000<<20, 1000<<20)
	want := "\rpush: 100.0 MiB of 1000.0 MiB (10%)" +
		"\rpush: 5.0 MiB of 1000.0 MiB (0%)   " +
		"\rpush: 1000.0 MiB of 1000.0 MiB (100%)"
	if out.String() != want {
		t.Errorf("terminal:\n%q\nwant\n%q", out.String(), want)
	}
	l.Done()
	l.Done()
	l.Percent(3)
	if out.String() != want+"\n" {
		t.Errorf("after Done: %q", out.String())
	}

	// Done draws a status that was too soon to draw.
	out.Reset()
	l = NewWith(&out, "writing slot", Options{Terminal: true, Now: c.now})
	l.Percent(1)
	l.Percent(2)
	l.Done()
	if want := "\rwriting slot: 1%\rwriting slot: 2%\n"; out.String() != want {
		t.Errorf("Done: %q, want %q", out.String(), want)
	}
	// Nothing reported: Done writes nothing.
	out.Reset()
	NewWith(&out, "idle", Options{Terminal: true}).Done()
	if out.Len() != 0 {
		t.Errorf("Done without reports wrote %q", out.String())
	}
}

func TestIsTerminal(t *testing.T) {
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a regular file is a terminal")
	}
	var out bytes.Buffer
	New(&out, "copy").Percent(50)
	if out.String() != "copy: 50%\n" {
		t.Errorf("New on a buffer: %q, want a plain line", out.String())
	}
}
