// Package health is the boot health gate of a berth node. It runs once per
// boot as berth-health.service, after multi-user.target and before
// boot-complete.target, and decides whether this boot is good: the wanted
// targets are active, no unit failed, every check in /etc/berth/health.d
// passes and the optional readiness hook agrees. systemd-bless-boot then
// blesses a counted boot entry only when the gate passed; the CLI records
// the Report's Reason and reboots into the previous OS otherwise.
package health

import (
	"context"
	_ "embed"
	"fmt"
	"path"
	"strings"
	"time"
)

// Unit is berth-health.service, for the builder to install into images and
// enable (RequiredBy=boot-complete.target, WantedBy=multi-user.target).
//
//go:embed berth-health.service
var Unit []byte

// UnitName is the gate's own unit. While the gate runs, its unit is
// "activating", so the gate never waits for it nor counts it as failed.
const UnitName = "berth-health.service"

// Defaults for the zero values of Gate's fields.
const (
	DefaultChecksDir   = "/etc/berth/health.d"
	DefaultTimeout     = 60 * time.Second
	DefaultWaitTargets = 5 * time.Minute
	DefaultTarget      = "multi-user.target"
)

// Check is the outcome of one thing the gate looked at. Executable checks
// are named by their file name; the gate's own steps have names with a
// slash ("systemd/failed-units", "systemd/multi-user.target", "gate/ready"),
// which no file in the checks directory can have.
type Check struct {
	Name     string
	OK       bool
	Output   string // at most MaxOutput bytes, the end of the output
	Duration time.Duration
}

// Report is the gate's verdict.
type Report struct {
	OK bool
	// Reason is one line naming the first failure; empty when OK.
	Reason string
	Checks []Check
	// Skipped lists files in the checks directory that were not run because
	// they are not executable regular files, with why; a forgotten chmod
	// should be visible, not silent. Editor leftovers are not listed.
	Skipped []string
}

// Gate decides whether the current boot is healthy.
type Gate struct {
	Systemd Systemd
	// ChecksDir holds the checks: every executable regular file is run, in
	// lexical order; exit status 0 passes. Default DefaultChecksDir; a
	// missing directory means no checks.
	ChecksDir string
	// Timeout bounds each check; a check that runs longer fails and its
	// whole process group is killed. Default DefaultTimeout.
	Timeout time.Duration
	// Targets must be active. A target still "activating" is waited for, up
	// to WaitTargets in total. nil means []string{DefaultTarget}; an empty
	// non-nil slice requires none.
	Targets     []string
	WaitTargets time.Duration // default DefaultWaitTargets
	// Ignore lists failed units that do not make the boot unhealthy: exact
	// names or path.Match patterns such as "user@*.service".
	Ignore []string
	// Ready is an optional last readiness test (the agent's, for example).
	Ready func(ctx context.Context) error

	// pollEvery is how often an activating target is looked at again;
	// tests shorten it.
	pollEvery time.Duration
}

const defaultPollEvery = 500 * time.Millisecond

// Run evaluates every step, even after a failure, so the report is complete;
// Reason names the first failure in the order targets, failed units,
// checks, readiness. Cancelling ctx stops the gate and fails the report.
func (g *Gate) Run(ctx context.Context) Report {
	var r Report
	record := func(c Check, reason string) {
		r.Checks = append(r.Checks, c)
		if !c.OK && r.Reason == "" {
			r.Reason = reason
		}
	}

	if err := validPatterns(g.Ignore); err != nil {
		record(Check{Name: "gate/config", Output: err.Error()}, err.Error())
	}

	if g.Systemd == nil {
		// Fail closed: a gate that cannot see systemd must not bless a boot.
		const msg = "health gate has no systemd connection"
		record(Check{Name: "systemd/connection", Output: msg}, msg)
	} else {
		deadline := time.Now().Add(orDefault(g.WaitTargets, DefaultWaitTargets))
		for _, target := range g.targets() {
			record(g.checkTarget(ctx, target, deadline))
		}
		record(g.checkFailedUnits(ctx))
	}

	checks, skipped, err := listChecks(g.checksDir())
	r.Skipped = skipped
	if err != nil {
		record(Check{Name: "gate/checks-dir", Output: err.Error()}, err.Error())
	}
	timeout := orDefault(g.Timeout, DefaultTimeout)
	for _, c := range checks {
		if ctx.Err() != nil {
			break // each remaining check would fail the same way; say it once below
		}
		record(runCheck(ctx, c.path, c.name, timeout))
	}

	if g.Ready != nil && ctx.Err() == nil {
		record(g.checkReady(ctx))
	}

	if err := ctx.Err(); err != nil && r.Reason == "" {
		r.Reason = "health gate cancelled: " + err.Error()
	}
	r.OK = r.Reason == ""
	return r
}

func (g *Gate) targets() []string {
	if g.Targets == nil {
		return []string{DefaultTarget}
	}
	return g.Targets
}

func (g *Gate) checksDir() string {
	if g.ChecksDir == "" {
		return DefaultChecksDir
	}
	return g.ChecksDir
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// checkTarget waits while the unit is activating and passes once it is
// active; any other state fails at once.
func (g *Gate) checkTarget(ctx context.Context, unit string, deadline time.Time) (Check, string) {
	start := time.Now()
	c := Check{Name: "systemd/" + unit}
	done := func(ok bool, output, reason string) (Check, string) {
		c.OK, c.Output, c.Duration = ok, output, time.Since(start)
		return c, reason
	}
	if unit == UnitName {
		return done(true, "the gate's own unit is activating while the gate runs: not required", "")
	}
	poll := orDefault(g.pollEvery, defaultPollEvery)
	for {
		state, err := g.Systemd.ActiveState(ctx, unit)
		if err != nil {
			msg := fmt.Sprintf("cannot read the state of %s: %v", unit, err)
			return done(false, msg, msg)
		}
		switch state {
		case "active", "reloading":
			return done(true, state, "")
		case "activating":
			if !time.Now().Before(deadline) {
				msg := fmt.Sprintf("%s still activating after %s", unit, formatDuration(time.Since(start)))
				return done(false, state, msg)
			}
		default:
			return done(false, state, fmt.Sprintf("%s is %s", unit, state))
		}
		wait := min(poll, time.Until(deadline))
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s still activating when the gate was cancelled", unit)
			return done(false, "activating", msg)
		case <-time.After(wait):
		}
	}
}

// maxNamedUnits keeps the one-line Reason readable when many units failed.
const maxNamedUnits = 5

func (g *Gate) checkFailedUnits(ctx context.Context) (Check, string) {
	start := time.Now()
	c := Check{Name: "systemd/failed-units"}
	units, err := g.Systemd.FailedUnits(ctx)
	if err != nil {
		c.Output = fmt.Sprintf("cannot list failed units: %v", err)
		c.Duration = time.Since(start)
		return c, c.Output
	}
	var failed []string
	for _, u := range units {
		if u != UnitName && !g.ignored(u) {
			failed = append(failed, u)
		}
	}
	c.Duration = time.Since(start)
	if len(failed) == 0 {
		c.OK = true
		return c, ""
	}
	c.Output = strings.Join(failed, "\n")
	named := failed
	more := ""
	if len(named) > maxNamedUnits {
		named = named[:maxNamedUnits]
		more = fmt.Sprintf(" and %d more", len(failed)-maxNamedUnits)
	}
	return c, "failed units: " + strings.Join(named, ", ") + more
}

func (g *Gate) ignored(unit string) bool {
	for _, pattern := range g.Ignore {
		if ok, _ := path.Match(pattern, unit); ok || pattern == unit {
			return true
		}
	}
	return false
}

func validPatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("ignored unit pattern %q: %w", p, err)
		}
	}
	return nil
}

func (g *Gate) checkReady(ctx context.Context) (Check, string) {
	start := time.Now()
	err := g.Ready(ctx)
	c := Check{Name: "gate/ready", OK: err == nil, Duration: time.Since(start)}
	if err == nil {
		return c, ""
	}
	c.Output = err.Error()
	return c, "not ready: " + oneLine(err.Error())
}

// formatDuration prints whole seconds as "60s" rather than "1m0s", which
// reads better in a one-line reason.
func formatDuration(d time.Duration) string {
	if d >= time.Second && d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	if d >= time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.String()
}

// oneLine keeps a reason on one line: the last non-empty line of s,
// shortened, with control characters replaced.
func oneLine(s string) string {
	s = strings.TrimRight(s, " \t\r\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	const max = 200
	if runes := []rune(s); len(runes) > max {
		s = string(runes[:max]) + "…"
	}
	return s
}
