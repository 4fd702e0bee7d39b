package nodeconfig

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/atomicfile"
)

// Paths inside the root that Apply writes.
const (
	HostnamePath    = "/etc/hostname"
	NetworkDir      = "/run/systemd/network"
	ResolvConf      = "/etc/resolv.conf"
	AgentConfig     = "/etc/berth/agent.yaml"
	SSHDir          = "/etc/ssh"
	SummaryPath     = "/run/berth/node-config.json"
	LastGoodPath    = "/var/lib/berth/node-config/node.yaml"
	defaultRootHome = "/root"
)

// hostKeyTypes are the host keys a node gets: ed25519 only, because an RSA
// key takes half a minute to make on a slow (emulated) machine at first
// boot, and the image's sshd config names only this one.
var hostKeyTypes = []string{"ed25519"}

// Summary is /run/berth/node-config.json: what the last run read and did.
type Summary struct {
	Source  string   `json:"source"`
	Applied []string `json:"applied"`
	Errors  []string `json:"errors"`
}

// applier writes into a root directory, rewriting files only when their
// content or mode changes, and records what it did.
type applier struct {
	root    string
	changed []string
	applied []string
	errors  []string
	notes   []string
}

func (a *applier) errorf(format string, args ...any) {
	a.errors = append(a.errors, fmt.Sprintf(format, args...))
}

// path resolves p inside the root, following symlinks as if the root were
// "/" (the image's /root is a symlink into /var).
func (a *applier) path(p string) (string, error) {
	return securePath(a.root, p)
}

func securePath(root, p string) (string, error) {
	return securejoin.SecureJoin(root, p)
}

// write puts data at p (root-relative) with mode, creating parent
// directories with dirMode. The file is replaced atomically, so a crash
// leaves the old or the new content, never half of it.
func (a *applier) write(p string, data []byte, mode, dirMode fs.FileMode) error {
	full, err := a.path(p)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(full); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Lstat(full); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == mode {
			return nil
		}
	}
	dir := filepath.Dir(full)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(p), err)
	}
	// The directory exists now (with dirMode), so WriteFile creates none.
	if err := atomicfile.WriteFile(full, data, mode); err != nil {
		return err // names the full path
	}
	a.changed = append(a.changed, p)
	return nil
}

func (a *applier) remove(p string) error {
	full, err := a.path(p)
	if err != nil {
		return err
	}
	if err := os.Remove(full); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	a.changed = append(a.changed, p)
	return nil
}

// Result is what Apply did.
type Result struct {
	Applied []string // settings in effect, for the summary
	Changed []string // root-relative paths written or removed
	Errors  []string // failures, one line each
	Notes   []string // steps skipped on purpose
}

// Apply writes cfg under root ("/" on a node). Every step runs even when
// another failed.
func Apply(cfg *Config, root string) Result {
	a := &applier{root: root}
	a.hostname(cfg)
	a.authorizedKeys(cfg)
	a.network(cfg)
	a.agent(cfg)
	a.hostKeys()
	sort.Strings(a.changed)
	return Result{Applied: a.applied, Changed: a.changed, Errors: a.errors, Notes: a.notes}
}

func (a *applier) hostname(cfg *Config) {
	if cfg.Hostname == "" {
		return
	}
	if err := a.write(HostnamePath, []byte(cfg.Hostname+"\n"), 0o644, 0o755); err != nil {
		a.errorf("%s: %v", HostnamePath, err)
		return
	}
	// The running kernel's name only on the real system, never a test root.
	if a.root == "/" {
		if cur, err := os.Hostname(); err != nil || cur != cfg.Hostname {
			if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
				a.errorf("hostname: sethostname %s: %v", cfg.Hostname, err)
				return
			}
		}
	}
	a.applied = append(a.applied, "hostname "+cfg.Hostname)
}

func (a *applier) authorizedKeys(cfg *Config) {
	if !cfg.KeysGiven {
		return
	}
	if cfg.KeysInvalid && len(cfg.AuthorizedKeys) == 0 {
		// Every key was refused: an empty file would lock out whoever
		// got in before.
		a.notes = append(a.notes, "ssh_authorized_keys: no valid key; authorized_keys left as it was")
		return
	}
	home := a.rootHome()
	sshDir := filepath.Join(home, ".ssh")
	p := filepath.Join(sshDir, "authorized_keys")
	if err := a.write(p, authorizedKeys(cfg.AuthorizedKeys), 0o600, 0o700); err != nil {
		a.errorf("%s: %v", p, err)
		return
	}
	// MkdirAll leaves an existing directory's mode alone; sshd's
	// StrictModes refuses a group- or world-writable one.
	if full, err := a.path(sshDir); err == nil {
		if fi, err := os.Stat(full); err == nil && fi.Mode().Perm() != 0o700 {
			if err := os.Chmod(full, 0o700); err != nil {
				a.errorf("%s: %v", sshDir, err)
			}
		}
	}
	a.applied = append(a.applied, fmt.Sprintf("ssh_authorized_keys %d", len(cfg.AuthorizedKeys)))
}

// rootHome is root's home directory from the root's /etc/passwd.
func (a *applier) rootHome() string {
	full, err := a.path("/etc/passwd")
	if err != nil {
		return defaultRootHome
	}
	f, err := os.Open(full)
	if err != nil {
		return defaultRootHome
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 6 && fields[0] == "root" && strings.HasPrefix(fields[5], "/") {
			return fields[5]
		}
	}
	return defaultRootHome
}

var ownNetworkFile = regexp.MustCompile(`^\d\d-` + networkFilePrefix + `.*\.network$`)

func (a *applier) network(cfg *Config) {
	files := networkFiles(cfg.Network)
	ok := true
	for name, data := range files {
		p := filepath.Join(NetworkDir, name)
		if err := a.write(p, data, 0o644, 0o755); err != nil {
			a.errorf("%s: %v", p, err)
			ok = false
		}
	}
	// Files of an earlier configuration would still match interfaces.
	if dir, err := a.path(NetworkDir); err == nil {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if _, keep := files[e.Name()]; !keep && ownNetworkFile.MatchString(e.Name()) {
				if err := a.remove(filepath.Join(NetworkDir, e.Name())); err != nil {
					a.errorf("%v", err)
				}
			}
		}
	}
	if resolv := resolvConf(cfg.Network); resolv != nil && a.resolvedManaged() {
		// systemd-resolved takes the DNS= lines of the .network files.
		a.applied = append(a.applied, "dns (systemd-resolved)")
	} else if resolv != nil {
		if err := a.write(ResolvConf, resolv, 0o644, 0o755); err != nil {
			a.errorf("%s: %v", ResolvConf, err)
		} else {
			a.applied = append(a.applied, "resolv.conf")
		}
	}
	if !ok {
		return
	}
	switch {
	case cfg.NetworkInvalid:
		a.applied = append(a.applied, "network dhcp (fallback: the network section has errors)")
	case cfg.Network == nil:
		a.applied = append(a.applied, "network dhcp (default)")
	default:
		a.applied = append(a.applied, fmt.Sprintf("network %d interfaces", len(cfg.Network.Interfaces)))
	}
}

// resolvedManaged tells whether /etc/resolv.conf is systemd-resolved's
// link (the Debian package sets it up): then it must stay a link.
func (a *applier) resolvedManaged() bool {
	target, err := os.Readlink(filepath.Join(a.root, ResolvConf))
	return err == nil && strings.Contains(target, "/run/systemd/resolve/")
}

func (a *applier) agent(cfg *Config) {
	switch {
	case cfg.AgentYAML != nil:
		if err := a.write(AgentConfig, cfg.AgentYAML, 0o600, 0o755); err != nil {
			a.errorf("%s: %v", AgentConfig, err)
			return
		}
		a.applied = append(a.applied, "agent")
	case cfg.AgentInvalid:
		a.notes = append(a.notes, "agent: section has errors; "+AgentConfig+" left as it was")
	case !cfg.AgentGiven && cfg.parsed:
		// No agent section: the agent stays off (its unit needs the file),
		// but a file someone wrote by hand is theirs.
		full, err := a.path(AgentConfig)
		if err != nil {
			return
		}
		if old, err := os.ReadFile(full); err == nil && bytes.HasPrefix(old, []byte(agentHeader)) {
			if err := a.remove(AgentConfig); err != nil {
				a.errorf("%v", err)
				return
			}
			a.applied = append(a.applied, "agent removed")
		}
	}
}

// hostKeys makes sshd's missing host keys: the image ships none, so every
// node has its own.
func (a *applier) hostKeys() {
	dir, err := a.path(SSHDir)
	if err != nil {
		return
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		a.notes = append(a.notes, "ssh host keys: skipped, no "+SSHDir+" (sshd is not installed)")
		return
	}
	var missing []string
	for _, t := range hostKeyTypes {
		if _, err := os.Stat(filepath.Join(dir, "ssh_host_"+t+"_key")); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		a.applied = append(a.applied, "ssh host keys")
		return
	}
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		a.notes = append(a.notes, "ssh host keys: skipped, ssh-keygen is not installed")
		return
	}
	root, err := filepath.Abs(a.root)
	if err != nil {
		a.errorf("ssh host keys: %v", err)
		return
	}
	for _, t := range missing {
		key := filepath.Join(root, SSHDir, "ssh_host_"+t+"_key")
		out, err := exec.Command(keygen, "-q", "-t", t, "-N", "", "-C", "", "-f", key).CombinedOutput()
		if err != nil {
			a.errorf("ssh host keys: ssh-keygen -t %s: %v: %s", t, err, strings.Join(strings.Fields(string(out)), " "))
			return
		}
	}
	sort.Strings(missing)
	for _, t := range missing {
		a.changed = append(a.changed, filepath.Join(SSHDir, "ssh_host_"+t+"_key"))
	}
	// The same entry as on later boots, so the summary does not change.
	a.applied = append(a.applied, "ssh host keys")
	a.notes = append(a.notes, "ssh host keys: generated "+strings.Join(missing, " "))
}

// writeSummary records the outcome for the agent and tests.
func writeSummary(root string, s Summary) error {
	if s.Applied == nil {
		s.Applied = []string{}
	}
	if s.Errors == nil {
		s.Errors = []string{}
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	a := &applier{root: root}
	return a.write(SummaryPath, append(data, '\n'), 0o644, 0o755)
}
