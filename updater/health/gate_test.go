package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSystemd answers from fixed data; states maps a unit to the sequence
// of ActiveState answers, the last one repeating.
type fakeSystemd struct {
	mu        sync.Mutex
	failed    []string
	failedErr error
	states    map[string][]string
	asked     map[string]int
	closed    bool
	rebooted  bool
}

func (f *fakeSystemd) FailedUnits(ctx context.Context) ([]string, error) {
	return f.failed, f.failedErr
}

func (f *fakeSystemd) ActiveState(ctx context.Context, unit string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.asked == nil {
		f.asked = map[string]int{}
	}
	seq, ok := f.states[unit]
	if !ok {
		return "", fmt.Errorf("no such unit %s", unit)
	}
	i := min(f.asked[unit], len(seq)-1)
	f.asked[unit]++
	return seq[i], nil
}

func (f *fakeSystemd) Reboot(ctx context.Context) error {
	f.rebooted = true
	return nil
}

func (f *fakeSystemd) Close() { f.closed = true }

func healthySystemd() *fakeSystemd {
	return &fakeSystemd{states: map[string][]string{DefaultTarget: {"active"}}}
}

// writeCheck writes an executable shell script into dir.
func writeCheck(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func newGate(t *testing.T, sd Systemd) (*Gate, string) {
	t.Helper()
	dir := t.TempDir()
	return &Gate{Systemd: sd, ChecksDir: dir, Timeout: 5 * time.Second, pollEvery: 10 * time.Millisecond}, dir
}

func findCheck(r Report, name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

func checkNames(r Report) []string {
	var names []string
	for _, c := range r.Checks {
		names = append(names, c.Name)
	}
	return names
}

func TestPass(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	writeCheck(t, dir, "10-ok", "echo all good")
	r := g.Run(context.Background())
	if !r.OK || r.Reason != "" {
		t.Fatalf("Run = OK %v, reason %q; want a pass", r.OK, r.Reason)
	}
	c, ok := findCheck(r, "10-ok")
	if !ok || !c.OK || c.Output != "all good\n" {
		t.Errorf("check 10-ok = %+v (found %v), want passed with its output", c, ok)
	}
	for _, name := range []string{"systemd/" + DefaultTarget, "systemd/failed-units"} {
		if c, ok := findCheck(r, name); !ok || !c.OK {
			t.Errorf("step %s = %+v (found %v), want passed", name, c, ok)
		}
	}
}

func TestMissingChecksDirIsNoChecks(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	g.ChecksDir = filepath.Join(dir, "absent")
	if r := g.Run(context.Background()); !r.OK {
		t.Fatalf("Run = %q, want a pass: a node without checks is healthy", r.Reason)
	}
}

func TestFailedUnits(t *testing.T) {
	sd := healthySystemd()
	sd.failed = []string{"bar.service", UnitName, "foo.service", "user@1000.service", "noise.timer"}
	g, _ := newGate(t, sd)
	g.Ignore = []string{"user@*.service", "noise.timer"}
	r := g.Run(context.Background())
	if r.OK {
		t.Fatal("Run passed with failed units")
	}
	if sd.rebooted || sd.closed {
		t.Error("the gate rebooted or closed the connection: both are the caller's decision")
	}
	if want := "failed units: bar.service, foo.service"; r.Reason != want {
		t.Errorf("Reason = %q, want %q (own unit and ignored units left out)", r.Reason, want)
	}
	c, _ := findCheck(r, "systemd/failed-units")
	if c.OK || c.Output != "bar.service\nfoo.service" {
		t.Errorf("failed-units step = %+v", c)
	}
}

func TestOnlyOwnUnitFailedPasses(t *testing.T) {
	sd := healthySystemd()
	sd.failed = []string{UnitName}
	g, _ := newGate(t, sd)
	if r := g.Run(context.Background()); !r.OK {
		t.Fatalf("Run = %q, want a pass: the gate's own unit is not a failure", r.Reason)
	}
}

func TestManyFailedUnitsKeepReasonShort(t *testing.T) {
	sd := healthySystemd()
	for i := range 8 {
		sd.failed = append(sd.failed, "u"+strconv.Itoa(i)+".service")
	}
	g, _ := newGate(t, sd)
	r := g.Run(context.Background())
	want := "failed units: u0.service, u1.service, u2.service, u3.service, u4.service and 3 more"
	if r.Reason != want {
		t.Errorf("Reason = %q, want %q", r.Reason, want)
	}
}

func TestFailedUnitsError(t *testing.T) {
	sd := healthySystemd()
	sd.failedErr = errors.New("bus gone")
	g, _ := newGate(t, sd)
	r := g.Run(context.Background())
	if r.OK || !strings.Contains(r.Reason, "bus gone") {
		t.Errorf("Run = OK %v, reason %q; want a failure naming the error", r.OK, r.Reason)
	}
}

func TestBadIgnorePattern(t *testing.T) {
	g, _ := newGate(t, healthySystemd())
	g.Ignore = []string{"[oops"}
	r := g.Run(context.Background())
	if r.OK || !strings.Contains(r.Reason, `"[oops"`) {
		t.Errorf("Run = OK %v, reason %q; want a failure naming the pattern", r.OK, r.Reason)
	}
}

func TestNoSystemdFailsClosed(t *testing.T) {
	g, _ := newGate(t, nil)
	if r := g.Run(context.Background()); r.OK {
		t.Fatal("Run passed without a systemd connection")
	}
}

func TestTargetStates(t *testing.T) {
	tests := []struct {
		states     []string
		wantOK     bool
		wantReason string
	}{
		{states: []string{"failed"}, wantReason: "multi-user.target is failed"},
		{states: []string{"inactive"}, wantReason: "multi-user.target is inactive"},
		{states: []string{"activating", "activating", "active"}, wantOK: true},
		{states: []string{"reloading"}, wantOK: true},
		{states: []string{"activating", "failed"}, wantReason: "multi-user.target is failed"},
		{states: []string{"activating"}, wantReason: "multi-user.target still activating after"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.states, ","), func(t *testing.T) {
			sd := &fakeSystemd{states: map[string][]string{DefaultTarget: tc.states}}
			g, _ := newGate(t, sd)
			g.WaitTargets = 100 * time.Millisecond
			start := time.Now()
			r := g.Run(context.Background())
			if r.OK != tc.wantOK || !strings.HasPrefix(r.Reason, tc.wantReason) {
				t.Fatalf("Run = OK %v, reason %q; want OK %v, reason starting %q", r.OK, r.Reason, tc.wantOK, tc.wantReason)
			}
			if n := sd.asked[DefaultTarget]; tc.wantOK && n != len(tc.states) {
				t.Errorf("ActiveState asked %d times, want %d (once per state until active)", n, len(tc.states))
			}
			if tc.states[len(tc.states)-1] == "activating" {
				if took := time.Since(start); took < g.WaitTargets || took > 5*time.Second {
					t.Errorf("gave up after %v, want about WaitTargets (%v)", took, g.WaitTargets)
				}
			}
		})
	}
}

func TestOwnUnitAsTargetNotRequired(t *testing.T) {
	sd := &fakeSystemd{states: map[string][]string{"a.target": {"active"}, UnitName: {"activating"}}}
	g, _ := newGate(t, sd)
	g.Targets = []string{"a.target", UnitName}
	g.WaitTargets = time.Hour // waiting for itself would hang the test
	if r := g.Run(context.Background()); !r.OK {
		t.Fatalf("Run = %q, want a pass", r.Reason)
	}
	if sd.asked[UnitName] != 0 {
		t.Errorf("the gate asked for its own unit's state")
	}
}

func TestUnknownTargetFails(t *testing.T) {
	g, _ := newGate(t, healthySystemd())
	g.Targets = []string{"nope.target"}
	r := g.Run(context.Background())
	if r.OK || !strings.Contains(r.Reason, "nope.target") {
		t.Errorf("Run = OK %v, reason %q; want a failure naming the target", r.OK, r.Reason)
	}
}

func TestCheckExitStatus(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	writeCheck(t, dir, "50-disk", "echo checking /var\necho '/var is 99% full' >&2\nexit 3")
	writeCheck(t, dir, "60-later", "exit 1")
	r := g.Run(context.Background())
	if r.OK {
		t.Fatal("Run passed with a failing check")
	}
	if want := "check 50-disk failed (exit 3): /var is 99% full"; r.Reason != want {
		t.Errorf("Reason = %q, want %q", r.Reason, want)
	}
	c, _ := findCheck(r, "50-disk")
	if c.OK || c.Output != "checking /var\n/var is 99% full\n" {
		t.Errorf("check 50-disk = %+v, want failed with stdout and stderr", c)
	}
	// The first failure is the reason, but later checks still run for the report.
	if c, ok := findCheck(r, "60-later"); !ok || c.OK {
		t.Errorf("check 60-later = %+v (found %v), want run and failed", c, ok)
	}
}

func TestCheckKilledBySignal(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	writeCheck(t, dir, "10-crash", "kill -SEGV $$")
	r := g.Run(context.Background())
	if want := "check 10-crash failed (killed by signal segmentation fault)"; r.Reason != want {
		t.Errorf("Reason = %q, want %q", r.Reason, want)
	}
}

func TestCheckCannotStart(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	if err := os.WriteFile(filepath.Join(dir, "10-bad"), []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := g.Run(context.Background())
	if !strings.HasPrefix(r.Reason, "check 10-bad could not run: ") {
		t.Errorf("Reason = %q, want a could-not-run failure", r.Reason)
	}
}

// processGone reports a process that no longer exists or is a zombie
// waiting for its new parent to reap it.
func processGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func TestCheckTimeoutKillsProcessGroup(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	g.Timeout = 200 * time.Millisecond
	pidFile := filepath.Join(t.TempDir(), "sleep.pid")
	// The sleep is a child of the shell, in its process group: killing only
	// the shell would leave it running, holding the output pipe open.
	writeCheck(t, dir, "10-x", "echo waiting\nsleep 30 &\necho $! > "+pidFile+"\nwait")
	writeCheck(t, dir, "20-next", "true")

	start := time.Now()
	r := g.Run(context.Background())
	took := time.Since(start)

	if want := "check 10-x timed out after 200ms"; r.Reason != want {
		t.Errorf("Reason = %q, want %q", r.Reason, want)
	}
	if took > outputGrace {
		t.Errorf("Run took %v: the timed-out check's children were not killed", took)
	}
	c, _ := findCheck(r, "10-x")
	if c.OK || c.Output != "waiting\n" || c.Duration < g.Timeout {
		t.Errorf("check 10-x = %+v, want failed after the timeout with its output", c)
	}
	if c, ok := findCheck(r, "20-next"); !ok || !c.OK {
		t.Errorf("check after the timed-out one = %+v (found %v), want run and passed", c, ok)
	}

	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the check did not record its sleep's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("sleep (pid %d) still running after the check timed out", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCheckLeftoverProcessesKilled(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	// A passing check that leaves a background process with its output
	// redirected, so nothing holds the gate's pipe.
	writeCheck(t, dir, "10-bg", "sleep 30 >/dev/null 2>&1 &\necho $! > "+pidFile)
	if r := g.Run(context.Background()); !r.OK {
		t.Fatalf("Run = %q, want a pass", r.Reason)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(2 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("background process %d of a finished check still running", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestChecksOrderAndSkips(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	log := filepath.Join(t.TempDir(), "order")
	for _, name := range []string{"90-last", "10-first", "50-middle", "50-middle~", ".50-hidden", "#50-autosave#"} {
		writeCheck(t, dir, name, "echo "+name+" >> "+log)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("exit 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "20-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A symbolic link to an executable is a check, as in /etc/berth/health.d.
	target := filepath.Join(t.TempDir(), "linked")
	writeCheck(t, filepath.Dir(target), "linked", "echo 30-link >> "+log)
	if err := os.Symlink(target, filepath.Join(dir, "30-link")); err != nil {
		t.Fatal(err)
	}

	r := g.Run(context.Background())
	if !r.OK {
		t.Fatalf("Run = %q, want a pass (the non-executable README must not run)", r.Reason)
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), "10-first\n30-link\n50-middle\n90-last\n"; got != want {
		t.Errorf("checks ran as\n%s\nwant\n%s", got, want)
	}
	names := checkNames(r)
	wantNames := []string{"systemd/" + DefaultTarget, "systemd/failed-units", "10-first", "30-link", "50-middle", "90-last"}
	if strings.Join(names, " ") != strings.Join(wantNames, " ") {
		t.Errorf("report checks = %v, want %v", names, wantNames)
	}
	wantSkipped := []string{"20-dir (not a regular file)", "README (not executable)"}
	if strings.Join(r.Skipped, "|") != strings.Join(wantSkipped, "|") {
		t.Errorf("Skipped = %q, want %q", r.Skipped, wantSkipped)
	}
}

func TestReady(t *testing.T) {
	g, _ := newGate(t, healthySystemd())
	called := 0
	g.Ready = func(ctx context.Context) error {
		called++
		return errors.New("agent has not joined the cluster\n")
	}
	r := g.Run(context.Background())
	if called != 1 {
		t.Fatalf("Ready called %d times, want 1", called)
	}
	if want := "not ready: agent has not joined the cluster"; r.OK || r.Reason != want {
		t.Errorf("Run = OK %v, reason %q; want %q", r.OK, r.Reason, want)
	}

	g.Ready = func(ctx context.Context) error { return nil }
	if r := g.Run(context.Background()); !r.OK {
		t.Errorf("Run with a ready hook that agrees = %q, want a pass", r.Reason)
	}
}

func TestFirstFailureIsReason(t *testing.T) {
	sd := healthySystemd()
	sd.failed = []string{"foo.service"}
	g, dir := newGate(t, sd)
	writeCheck(t, dir, "10-x", "exit 1")
	g.Ready = func(context.Context) error { return errors.New("no") }
	r := g.Run(context.Background())
	if r.Reason != "failed units: foo.service" {
		t.Errorf("Reason = %q, want the failed units, found first", r.Reason)
	}
	failed := 0
	for _, c := range r.Checks {
		if !c.OK {
			failed++
		}
	}
	if failed != 3 {
		t.Errorf("report has %d failed steps, want 3 (units, check, ready): %+v", failed, r.Checks)
	}
}

func TestCancelled(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	writeCheck(t, dir, "10-slow", "sleep 30")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := g.Run(ctx)
	if r.OK || r.Reason != "check 10-slow cancelled" {
		t.Errorf("Run = OK %v, reason %q; want the check cancelled", r.OK, r.Reason)
	}
	if took := time.Since(start); took > outputGrace {
		t.Errorf("cancelled Run took %v", took)
	}
}

func TestOutputKeepsTheEnd(t *testing.T) {
	g, dir := newGate(t, healthySystemd())
	// 20,000 numbered lines, far beyond MaxOutput, then the real error.
	writeCheck(t, dir, "10-chatty", "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done; echo final error; exit 1")
	r := g.Run(context.Background())
	c, _ := findCheck(r, "10-chatty")
	if len(c.Output) > MaxOutput {
		t.Errorf("output is %d bytes, want at most %d", len(c.Output), MaxOutput)
	}
	if !strings.HasPrefix(c.Output, truncatedMark) || !strings.HasSuffix(c.Output, "line 19999\nfinal error\n") {
		t.Errorf("output does not keep the end: %q...%q", c.Output[:20], c.Output[len(c.Output)-30:])
	}
	if want := "check 10-chatty failed (exit 1): final error"; r.Reason != want {
		t.Errorf("Reason = %q, want %q", r.Reason, want)
	}
}

func TestTailBufferUTF8(t *testing.T) {
	b := &tailBuffer{max: 16}
	for range 20 {
		fmt.Fprint(b, "é") // two bytes each
	}
	s := b.String()
	if len(s) > 16 || !strings.HasPrefix(s, truncatedMark) || strings.ContainsRune(s, '\uFFFD') {
		t.Errorf("String() = %q: want at most 16 bytes of whole runes after the mark", s)
	}
}

func TestOneLine(t *testing.T) {
	tests := map[string]string{
		"":                       "",
		"only\n":                 "only",
		"first\nsecond\n\n  \n":  "second",
		"tab\tand\x1b[31mcolor":  "tab and [31mcolor",
		strings.Repeat("x", 300): strings.Repeat("x", 200) + "…",
	}
	for in, want := range tests {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	tests := map[time.Duration]string{
		60 * time.Second:        "60s",
		5 * time.Minute:         "300s",
		200 * time.Millisecond:  "200ms",
		1500 * time.Millisecond: "1.5s",
	}
	for d, want := range tests {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
