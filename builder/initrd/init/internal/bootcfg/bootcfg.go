// Package bootcfg turns the kernel command line and the initrd's own
// /etc/berth/initrd.conf into the settings the berth /init acts on.
package bootcfg

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/berth-os/berth/updater/layout"
)

// OnFail is what /init does after a fatal error.
type OnFail string

const (
	OnFailReboot OnFail = "reboot"
	OnFailShell  OnFail = "shell"
	OnFailHalt   OnFail = "halt"
)

// ParseOnFail accepts reboot, shell or halt.
func ParseOnFail(s string) (OnFail, error) {
	switch OnFail(s) {
	case OnFailReboot, OnFailShell, OnFailHalt:
		return OnFail(s), nil
	}
	return "", fmt.Errorf("unknown onfail action %q: want reboot, shell or halt", s)
}

// RootKind says how the slot partition is named.
type RootKind string

const (
	RootByPartUUID  RootKind = "PARTUUID"
	RootByPartLabel RootKind = "PARTLABEL"
)

// RootSpec names the slot partition, e.g. PARTLABEL=BERTH-A.
type RootSpec struct {
	Kind  RootKind
	Value string // a label as written, or an upper-case UUID
}

func (r RootSpec) String() string { return string(r.Kind) + "=" + r.Value }

// ParseRootSpec accepts PARTUUID=<uuid> or PARTLABEL=<label>.
func ParseRootSpec(s string) (RootSpec, error) {
	kind, value, ok := strings.Cut(s, "=")
	if !ok || value == "" {
		return RootSpec{}, fmt.Errorf("%s=%q: want PARTUUID=<uuid> or PARTLABEL=<label>", layout.CmdlineRoot, s)
	}
	switch RootKind(strings.ToUpper(kind)) {
	case RootByPartLabel:
		return RootSpec{Kind: RootByPartLabel, Value: value}, nil
	case RootByPartUUID:
		if !isUUID(value) {
			return RootSpec{}, fmt.Errorf("%s=%q: %q is not a UUID", layout.CmdlineRoot, s, value)
		}
		return RootSpec{Kind: RootByPartUUID, Value: strings.ToUpper(value)}, nil
	}
	return RootSpec{}, fmt.Errorf("%s=%q: unknown kind %q, want PARTUUID or PARTLABEL", layout.CmdlineRoot, s, kind)
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// Standard kernel keys that /init honours besides berth's own.
const (
	cmdlineInit = "init"
	// DefaultInit is what the OS runs as PID 1 unless init= says otherwise.
	DefaultInit = "/sbin/init"
	// DefaultFSType is the slot filesystem unless berth.fstype says otherwise.
	DefaultFSType = "squashfs"
	// DefaultRootWait is how long to wait for the slot partition.
	DefaultRootWait = 30 * time.Second
)

// Config is everything /init needs to know to boot.
type Config struct {
	Root     RootSpec
	Slot     layout.Slot
	FSType   string
	OnFail   OnFail
	RootWait time.Duration
	Init     string
}

// Defaults are used before any input is read, so that even a broken
// command line fails with a known onfail action.
func Defaults() Config {
	return Config{FSType: DefaultFSType, OnFail: OnFailReboot, RootWait: DefaultRootWait, Init: DefaultInit}
}

// SplitCmdline splits a kernel command line into words the way the kernel
// does: whitespace separates, double quotes group (and are dropped).
func SplitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, c := range s {
		switch {
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// ParseInitrdConf reads key=value lines of /etc/berth/initrd.conf into cfg.
// Blank lines and # comments are skipped; unknown keys are an error so a
// typo in the build spec does not go unnoticed.
func ParseInitrdConf(data []byte, cfg *Config) error {
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("initrd.conf line %d: %q is not key=value", n+1, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "onfail":
			a, err := ParseOnFail(v)
			if err != nil {
				return fmt.Errorf("initrd.conf line %d: %w", n+1, err)
			}
			cfg.OnFail = a
		case "rootwait":
			d, err := parseSeconds(v)
			if err != nil {
				return fmt.Errorf("initrd.conf line %d: rootwait: %w", n+1, err)
			}
			cfg.RootWait = d
		default:
			return fmt.Errorf("initrd.conf line %d: unknown key %q", n+1, k)
		}
	}
	return nil
}

// ApplyOnFail sets only the onfail action from the command line. It runs
// before the full parse so that a bad command line still fails the way the
// user asked.
func ApplyOnFail(cmdline string, cfg *Config) error {
	for _, w := range SplitCmdline(cmdline) {
		if k, v, ok := strings.Cut(w, "="); ok && k == layout.CmdlineOnFail {
			a, err := ParseOnFail(v)
			if err != nil {
				return fmt.Errorf("%s: %w", layout.CmdlineOnFail, err)
			}
			cfg.OnFail = a
		}
	}
	return nil
}

// ParseCmdline applies the kernel command line over cfg (which holds the
// defaults and initrd.conf). The last occurrence of a key wins, as in the
// kernel. berth.root is required.
func ParseCmdline(cmdline string, cfg *Config) error {
	rootSeen := false
	for _, w := range SplitCmdline(cmdline) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case layout.CmdlineRoot:
			cfg.Root, err = ParseRootSpec(v)
			rootSeen = err == nil
		case layout.CmdlineSlot:
			cfg.Slot, err = layout.ParseSlot(v)
		case layout.CmdlineFSType:
			if v == "" {
				err = fmt.Errorf("empty filesystem type")
			}
			cfg.FSType = v
		case layout.CmdlineOnFail:
			cfg.OnFail, err = ParseOnFail(v)
		case layout.CmdlineRootWait:
			cfg.RootWait, err = parseSeconds(v)
		case cmdlineInit:
			if !strings.HasPrefix(v, "/") {
				err = fmt.Errorf("%q is not an absolute path", v)
			}
			cfg.Init = v
		}
		if err != nil {
			return fmt.Errorf("kernel command line %s: %w", k, err)
		}
	}
	if !rootSeen {
		return fmt.Errorf("kernel command line has no %s=PARTUUID=<uuid> or %s=PARTLABEL=<label>", layout.CmdlineRoot, layout.CmdlineRoot)
	}
	return nil
}

func parseSeconds(s string) (time.Duration, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 3600 {
		return 0, fmt.Errorf("%q is not a number of seconds between 0 and 3600", s)
	}
	return time.Duration(n) * time.Second, nil
}
