package nodeconfig

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const prog = "berth-node-config"

const usage = `Usage: berth-agent node-config [--root DIR] [--esp DIR] [--seed-dev auto|none|DEVICE] [--seed-label LABEL] [--seed-wait 3s]

Applies the node configuration (node.yaml) at boot: host name, root's SSH
authorized keys, systemd-networkd files under /run/systemd/network,
/etc/resolv.conf, /etc/berth/agent.yaml and missing sshd host keys. It is
read from the first of: the seed disk (a FAT filesystem labelled
BERTH-SEED, file /node.yaml), the ESP (berth/node.yaml), the copy of the
last one found (` + LastGoodPath + `).
Errors are reported as "` + prog + `: ERROR FILE:LINE: ..." on stderr and
the console; the rest is still applied and a bad network section falls back
to DHCP. The outcome is written to ` + SummaryPath + `.

Flags:
`

// Main runs `berth-agent node-config`. Exit status: 0 applied (even with
// errors in the configuration), 1 the machine itself failed (nothing
// writable), 2 bad usage.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node-config", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	root := fs.String("root", "/", "apply under this root `directory` (tests, image preparation)")
	esp := fs.String("esp", "", "the mounted ESP `directory` (default ROOT"+DefaultESP+")")
	seedDev := fs.String("seed-dev", "auto", "seed `device`: auto (by label), none, or a block device")
	seedLabel := fs.String("seed-label", DefaultSeedLabel, "filesystem `label` of the seed disk")
	seedWait := fs.Duration("seed-wait", 3*time.Second, "how long to wait for udev to show the seed disk")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Help on stdout, as every berth command does.
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v (see berth-agent node-config --help)\n", prog, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", prog, fs.Arg(0))
		return 2
	}
	if *seedWait < 0 || *seedLabel == "" || strings.ContainsAny(*seedLabel, "/\n") {
		fmt.Fprintf(stderr, "%s: --seed-label must be a label and --seed-wait not negative\n", prog)
		return 2
	}
	rootDir, err := filepath.Abs(*root)
	if err != nil {
		fmt.Fprintf(stderr, "%s: --root: %v\n", prog, err)
		return 2
	}
	if fi, err := os.Stat(rootDir); err != nil || !fi.IsDir() {
		fmt.Fprintf(stderr, "%s: --root %s is not a directory\n", prog, rootDir)
		return 2
	}
	espDir := *esp
	if espDir == "" {
		espDir = filepath.Join(rootDir, DefaultESP)
	}

	out := &reporter{stdout: stdout, stderr: stderr}
	if rootDir == "/" {
		out.console = openConsole()
		if out.console != nil {
			defer out.console.Close()
		}
	}

	f := &finder{root: rootDir, seedDev: *seedDev, seedLabel: *seedLabel, seedWait: *seedWait, esp: espDir}
	src, found := f.find()
	for _, e := range f.errors {
		out.errorLine(e)
	}
	cfg := &Config{}
	summary := Summary{Source: "none (defaults: DHCP on every ethernet interface)"}
	if found {
		summary.Source = src.desc
		out.info("configuration from " + src.desc)
		var problems []Problem
		cfg, problems = Parse(src.data, currentHostname(rootDir))
		for _, p := range problems {
			out.errorLine(p.In(src.name))
		}
		if cfg.NetworkInvalid {
			fallback := Problem{Line: cfg.NetworkLine, Msg: "network: not applied; DHCP on every ethernet interface instead, so the node stays reachable"}
			out.errorLine(fallback.In(src.name))
		}
		if !strings.HasSuffix(src.desc, LastGoodPath) {
			// Kept for boots where the seed disk is gone.
			a := &applier{root: rootDir}
			if err := a.write(LastGoodPath, src.data, 0o600, 0o755); err != nil {
				out.errorLine(fmt.Sprintf("%s: %v", LastGoodPath, err))
			}
		}
	} else {
		out.info("no node configuration found (seed disk " + *seedLabel + ", " + filepath.Join(espDir, ESPFile) + "): defaults")
	}

	res := Apply(cfg, rootDir)
	for _, e := range res.Errors {
		out.errorLine(e)
	}
	for _, n := range res.Notes {
		out.info(n)
	}
	for _, c := range res.Changed {
		out.info("updated " + c)
	}
	if len(res.Changed) == 0 {
		out.info("nothing changed")
	}
	summary.Applied = res.Applied
	summary.Errors = out.errors
	if err := writeSummary(rootDir, summary); err != nil {
		out.errorLine(fmt.Sprintf("%s: %v", SummaryPath, err))
		return 1
	}
	return 0
}

// reporter prints informational lines on stdout and errors on stderr
// (the journal) and the console (the serial log shows them).
type reporter struct {
	stdout, stderr io.Writer
	console        io.WriteCloser
	errors         []string
}

func (r *reporter) info(s string) { fmt.Fprintf(r.stdout, "%s: %s\n", prog, s) }

func (r *reporter) errorLine(s string) {
	s = strings.Join(strings.Fields(s), " ")
	r.errors = append(r.errors, s)
	line := fmt.Sprintf("%s: ERROR %s\n", prog, s)
	fmt.Fprint(r.stderr, line)
	if r.console != nil {
		_, _ = io.WriteString(r.console, line)
	}
}

func openConsole() io.WriteCloser {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY|os.O_APPEND, 0)
	if err != nil {
		return nil
	}
	return f
}

// currentHostname is the name the agent defaults to when node.yaml sets
// neither hostname nor agent.name.
func currentHostname(root string) string {
	if root == "/" {
		if h, err := os.Hostname(); err == nil {
			return h
		}
	}
	if p, err := securePath(root, HostnamePath); err == nil {
		if data, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(data)) > 0 {
			return strings.TrimSpace(string(data))
		}
	}
	return imageHostname
}

// imageHostname is what a berth image's /etc/hostname says.
const imageHostname = "berth"
