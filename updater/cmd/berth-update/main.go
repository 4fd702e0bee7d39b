// Command berth-update installs a new OS into the passive slot of a berth
// node, reports the slots' state, rolls back, and runs the boot health gate.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/berth-os/berth/updater/health"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
	"github.com/berth-os/berth/updater/slot"
)

var version = "dev"

const usage = `berth-update: install and manage berth OS versions on this node

Usage:
  berth-update apply SOURCE [--dry-run] [--allow-downgrade] [--keys DIR] [--tries N]
  berth-update status [--json]
  berth-update rollback
  berth-update health
  berth-update version

SOURCE is a signed update payload: an OCI layout directory (DIR, DIR:TAG,
DIR@sha256:...), a payload tarball, or a registry reference
(registry.example:5000/berth/os:0.2.0).

Commands:
  apply     verify SOURCE against the trusted keys, write it into the passive
            slot and make it the next boot (with boot counting). The running
            OS is never touched; the next boot decides.
  status    booted slot and version, the other slot's state, boot entries,
            the last update's result.
  rollback  make the other slot, if it holds a good OS, the next boot.
  health    the boot health gate (run by berth-health.service before
            boot-complete.target): on failure of a counted boot it records why
            and reboots, so the boot loader falls back after the tries.

Exit status: 0 success, 1 failure (one line on stderr says why), 2 bad usage.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	sys := &slot.System{Log: log}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, "berth-update", version)
		return 0
	case "apply":
		return cmdApply(ctx, sys, args[1:], stdout, stderr)
	case "status":
		return cmdStatus(sys, args[1:], stdout, stderr)
	case "rollback":
		if len(args) > 1 {
			fmt.Fprintln(stderr, "berth-update rollback: takes no arguments")
			return 2
		}
		if err := sys.Rollback(); err != nil {
			fmt.Fprintf(stderr, "berth-update: rollback: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, "the other slot boots next; reboot to switch")
		return 0
	case "health":
		return cmdHealth(ctx, sys, log, stdout, stderr)
	}
	fmt.Fprintf(stderr, "berth-update: unknown command %q; run berth-update --help\n", args[0])
	return 2
}

func cmdApply(ctx context.Context, sys *slot.System, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("apply", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dryRun := fs.Bool("dry-run", false, "verify and say what would be done; write nothing")
	downgrade := fs.Bool("allow-downgrade", false, "allow installing an older or the same version")
	keys := fs.String("keys", "/"+layout.KeysDir, "`directory` of trusted public keys (*.pub)")
	tries := fs.Int("tries", 3, "boot attempts the new OS gets before the boot loader falls back")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: berth-update apply SOURCE [flags]\n\nFlags:")
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "berth-update apply: want exactly one SOURCE; see --help")
		return 2
	}
	trusted, err := payload.LoadPublicKeys(*keys)
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: %v\n", err)
		return 1
	}
	p, err := payload.Open(ctx, pos[0], trusted)
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: %v\n", err)
		return 1
	}
	start := time.Now()
	last := -1
	plan, err := sys.Apply(ctx, slot.PayloadSource(p), slot.ApplyOptions{
		AllowDowngrade: *downgrade, DryRun: *dryRun, Tries: *tries,
		Progress: func(done, total int64) {
			if pct := int(done * 100 / max(total, 1)); pct/10 != last/10 {
				last = pct
				fmt.Fprintf(stderr, "writing slot: %d%%\n", pct)
			}
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: apply: %v\n", err)
		return 1
	}
	if *dryRun {
		fmt.Fprintf(stdout, "would install %s %s into slot %s (%s, %d MiB of %d MiB), boot entry %s with %d tries",
			p.Manifest.OS, p.Manifest.Version, plan.Slot, plan.Device, plan.SlotSize>>20, plan.DeviceSize>>20, plan.Entry, plan.Tries)
		if len(plan.RemoveEntries) > 0 {
			fmt.Fprintf(stdout, ", replacing %v", plan.RemoveEntries)
		}
		fmt.Fprintln(stdout)
		return 0
	}
	fmt.Fprintf(stdout, "installed %s %s into slot %s in %.1fs; it boots next (reboot to switch)\n",
		p.Manifest.OS, p.Manifest.Version, plan.Slot, time.Since(start).Seconds())
	return 0
}

func cmdStatus(sys *slot.System, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	st, err := sys.Status()
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			fmt.Fprintf(stderr, "berth-update: %v\n", err)
			return 1
		}
		return 0
	}
	printStatus(stdout, st)
	return 0
}

func printStatus(w io.Writer, st slot.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SLOT\tVERSION\tSTATE\tENTRY\n")
	for _, s := range []slot.SlotStatus{st.Booted, st.Other} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Slot, dash(s.Version), s.State, dash(s.Entry))
	}
	tw.Flush()
	if len(st.Entries) > 0 {
		fmt.Fprintln(w, "\nboot entries:")
		for _, e := range st.Entries {
			tries := "blessed"
			switch {
			case e.Bad:
				tries = fmt.Sprintf("bad (0 tries left, %d done)", e.TriesDone)
			case e.HasCounter:
				tries = fmt.Sprintf("%d tries left, %d done", e.TriesLeft, e.TriesDone)
			}
			booted := ""
			if e.Booted {
				booted = "  (booted)"
			}
			fmt.Fprintf(w, "  %-24s %-10s %s%s\n", e.File, e.Version, tries, booted)
		}
	}
	if u := st.LastUpdate; u != nil {
		fmt.Fprintf(w, "\nlast update: %s %s -> %s (slot %s) at %s", u.State, dash(u.FromVersion), u.Version, u.Slot, u.Time.Format(time.RFC3339))
		if u.Reason != "" {
			fmt.Fprintf(w, ": %s", u.Reason)
		}
		fmt.Fprintln(w)
	}
	if st.Interrupted {
		fmt.Fprintln(w, "the last install was interrupted: run berth-update apply again")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdHealth(ctx context.Context, sys *slot.System, log *slog.Logger, stdout, stderr io.Writer) int {
	if res, err := sys.CheckBoot(); err != nil {
		log.Warn("could not check the previous update", "err", err)
	} else if res != nil {
		log.Info("update result", "state", res.State, "version", res.Version, "reason", res.Reason)
	}
	sd, err := health.ConnectSystemd(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "berth-update: health: %v\n", err)
		return 1
	}
	defer sd.Close()
	gate := &health.Gate{Systemd: sd, Ready: health.AgentHealthy(health.DefaultAgentConfig, 2*time.Minute)}
	rep := gate.Run(ctx)
	for _, c := range rep.Checks {
		log.Info("health check", "name", c.Name, "ok", c.OK, "seconds", fmt.Sprintf("%.1f", c.Duration.Seconds()))
	}
	if rep.OK {
		fmt.Fprintln(stdout, "berth-health: healthy")
		return 0
	}
	fmt.Fprintf(stderr, "berth-health: UNHEALTHY: %s\n", rep.Reason)
	b, err := sys.Booted()
	if err != nil || b.Blessed {
		// A blessed OS has no fallback through boot counting: report, do
		// not reboot-loop.
		return 1
	}
	if err := sys.RecordHealthFailure(rep.Reason); err != nil {
		log.Warn("could not record the health failure", "err", err)
	}
	fmt.Fprintln(stderr, "berth-health: this boot is counted: rebooting; the boot loader falls back once the tries are spent")
	if err := sd.Reboot(ctx); err != nil {
		fmt.Fprintf(stderr, "berth-update: reboot: %v\n", err)
	}
	return 1
}
