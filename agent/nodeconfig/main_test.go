package nodeconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/config"
)

// testRoot makes a root tree shaped like a berth node's: /root is an
// absolute symlink into /var (as in the image), sshd is installed (an
// empty /etc/ssh), and the ESP is a directory beside it.
func testRoot(t *testing.T) (root, esp string) {
	t.Helper()
	dir := t.TempDir()
	root, esp = filepath.Join(dir, "root"), filepath.Join(dir, "esp")
	for _, d := range []string{"etc/ssh", "var/roothome", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n")
	mustWrite(t, filepath.Join(root, "etc/hostname"), "berth\n")
	if err := os.Symlink("/var/roothome", filepath.Join(root, "root")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(esp, "berth"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, esp
}

func mustWrite(t *testing.T, p, body string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

type runResult struct {
	code           int
	stdout, stderr string
}

func runMain(t *testing.T, root, esp string, extra ...string) runResult {
	t.Helper()
	var out, errb bytes.Buffer
	args := append([]string{"--root", root, "--esp", esp, "--seed-dev", "none"}, extra...)
	code := Main(args, &out, &errb)
	return runResult{code, out.String(), errb.String()}
}

func summary(t *testing.T, root string) Summary {
	t.Helper()
	var s Summary
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(root, SummaryPath))), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

const wantStaticNetwork = generatedNote + `[Match]
Name=en* eth*

[Network]
DHCP=no
IPv6AcceptRA=no
LinkLocalAddressing=ipv6
Address=10.240.0.11/24
Address=fd00:240::11/64
Gateway=10.240.0.1
Gateway=fd00:240::1
DNS=10.240.0.1
DNS=fd00:240::1
`

const wantMACNetwork = generatedNote + `[Match]
MACAddress=52:54:00:ab:cd:ef

[Network]
DHCP=ipv4
IPv6AcceptRA=yes
LinkLocalAddressing=ipv6
`

func TestApplyFullConfig(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	root, esp := testRoot(t)
	mustWrite(t, filepath.Join(esp, ESPFile), fullConfig)
	r := runMain(t, root, esp)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}

	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "node-1\n" {
		t.Errorf("/etc/hostname = %q", got)
	}
	// Through the /root symlink, inside the root (not the host's /var).
	sshDir := filepath.Join(root, "var/roothome/.ssh")
	keys := filepath.Join(sshDir, "authorized_keys")
	if got := readFile(t, keys); !strings.HasSuffix(got, "\n"+testKey+"\n") || !strings.HasPrefix(got, "#") {
		t.Errorf("authorized_keys:\n%s", got)
	}
	checkMode(t, sshDir, 0o700)
	checkMode(t, keys, 0o600)

	netDir := filepath.Join(root, NetworkDir)
	if got := readFile(t, filepath.Join(netDir, "10-berth-0.network")); got != wantStaticNetwork {
		t.Errorf("static .network:\n%s\nwant:\n%s", got, wantStaticNetwork)
	}
	if got := readFile(t, filepath.Join(netDir, "11-berth-1.network")); got != wantMACNetwork {
		t.Errorf("MAC .network:\n%s\nwant:\n%s", got, wantMACNetwork)
	}
	if ents, _ := os.ReadDir(netDir); len(ents) != 2 {
		t.Errorf("network dir holds %d files, want 2 (no DHCP fallback)", len(ents))
	}
	if got := readFile(t, filepath.Join(root, ResolvConf)); !strings.HasSuffix(got, "nameserver 10.240.0.1\nnameserver fd00:240::1\n") {
		t.Errorf("resolv.conf:\n%s", got)
	}

	// The agent reads what was written, with its own parser.
	agentPath := filepath.Join(root, AgentConfig)
	checkMode(t, agentPath, 0o600)
	c, err := config.Parse([]string{"--config", agentPath})
	if err != nil {
		t.Fatalf("agent config: %v\n%s", err, readFile(t, agentPath))
	}
	if c.Name != "node-1" || c.Voters != 3 || c.Token != secret || c.APIURL != "https://10.240.0.11:7480" ||
		len(c.Join) != 1 || c.Labels["zone"] != "a" {
		t.Errorf("agent config: %+v", c)
	}

	for _, typ := range hostKeyTypes {
		if _, err := os.Stat(filepath.Join(root, SSHDir, "ssh_host_"+typ+"_key.pub")); err != nil {
			t.Errorf("host key %s: %v", typ, err)
		}
	}
	checkMode(t, filepath.Join(root, LastGoodPath), 0o600)

	s := summary(t, root)
	if !strings.HasPrefix(s.Source, "ESP ") || len(s.Errors) != 0 {
		t.Errorf("summary: %+v", s)
	}
	for _, want := range []string{"hostname node-1", "ssh_authorized_keys 1", "network 2 interfaces", "resolv.conf", "agent", "ssh host keys"} {
		if !contains(s.Applied, want) {
			t.Errorf("summary applied %q lacks %q", s.Applied, want)
		}
	}

	// Idempotence: the same configuration again touches no file.
	before := snapshot(t, root)
	r = runMain(t, root, esp)
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "nothing changed") {
		t.Fatalf("second run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := snapshot(t, root); !equalSnapshots(t, before, after) {
		t.Error("the second run changed files")
	}
}

func checkMode(t *testing.T, p string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type fileState struct {
	ino   uint64
	mtime time.Time
	mode  fs.FileMode
	size  int64
}

func snapshot(t *testing.T, root string) map[string]fileState {
	t.Helper()
	m := map[string]fileState{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m[p] = fileState{st.Ino, fi.ModTime(), fi.Mode(), fi.Size()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func equalSnapshots(t *testing.T, a, b map[string]fileState) bool {
	t.Helper()
	same := len(a) == len(b)
	for p, sa := range a {
		sb, ok := b[p]
		if !ok || sa.ino != sb.ino || !sa.mtime.Equal(sb.mtime) || sa.mode != sb.mode || sa.size != sb.size {
			t.Logf("%s: %+v -> %+v", p, sa, sb)
			same = false
		}
	}
	return same
}

// A changed configuration replaces what the old one wrote: static
// network files give way to DHCP, the host name follows.
func TestApplyChangedConfig(t *testing.T) {
	root, esp := testRoot(t)
	mustWrite(t, filepath.Join(esp, ESPFile), fullConfig)
	if r := runMain(t, root, esp); r.code != 0 {
		t.Fatal(r.stderr)
	}
	mustWrite(t, filepath.Join(esp, ESPFile), "hostname: node-9\nagent:\n  voters: 1\n  advertise_ip: 10.0.0.9\n")
	r := runMain(t, root, esp)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	ents, _ := os.ReadDir(filepath.Join(root, NetworkDir))
	if len(ents) != 1 || ents[0].Name() != dhcpFileName {
		t.Errorf("network files after dropping the static config: %v", ents)
	}
	if got := readFile(t, filepath.Join(root, NetworkDir, dhcpFileName)); got != string(dhcpNetwork()) {
		t.Errorf("dhcp file:\n%s", got)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "node-9\n" {
		t.Errorf("hostname %q", got)
	}
	c, err := config.Parse([]string{"--config", filepath.Join(root, AgentConfig)})
	if err != nil || c.Name != "node-9" || c.Voters != 1 {
		t.Errorf("agent config %+v, %v", c, err)
	}
	// Keys were not mentioned this time: left as they were.
	if got := readFile(t, filepath.Join(root, "var/roothome/.ssh/authorized_keys")); !strings.Contains(got, testKey) {
		t.Errorf("authorized_keys changed: %q", got)
	}
}

// With systemd-resolved, resolv.conf stays its link and DNS goes through
// the .network files.
func TestApplyKeepsResolvedLink(t *testing.T) {
	root, esp := testRoot(t)
	link := filepath.Join(root, ResolvConf)
	if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", link); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(esp, ESPFile), fullConfig)
	if r := runMain(t, root, esp); r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if target, err := os.Readlink(link); err != nil || target != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("resolv.conf link replaced: %q %v", target, err)
	}
	if s := summary(t, root); !contains(s.Applied, "dns (systemd-resolved)") {
		t.Errorf("applied: %q", s.Applied)
	}
	if got := readFile(t, filepath.Join(root, NetworkDir, "10-berth-0.network")); !strings.Contains(got, "DNS=10.240.0.1\n") {
		t.Errorf(".network lacks DNS=:\n%s", got)
	}
}

var errorLine = regexp.MustCompile(`^berth-node-config: ERROR (\S+):(\d+): (.+)$`)

// A bad network section: one error line with FILE:LINE, DHCP everywhere
// instead, and the rest of the file applied; exit 0.
func TestApplyBadNetworkFallsBackToDHCP(t *testing.T) {
	root, esp := testRoot(t)
	cfgPath := filepath.Join(esp, ESPFile)
	mustWrite(t, cfgPath, fullConfig)
	if r := runMain(t, root, esp); r.code != 0 {
		t.Fatal(r.stderr)
	}
	bad := strings.Replace(fullConfig, "hostname: node-1", "hostname: node-2", 1)
	bad = strings.Replace(bad, "gateway4: 10.240.0.1", "gateway4: 10.240.0.256", 1)
	mustWrite(t, cfgPath, bad)
	agentBefore := readFile(t, filepath.Join(root, AgentConfig))
	r := runMain(t, root, esp)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 2 {
		t.Fatalf("want the error and the fallback line, got:\n%s", r.stderr)
	}
	m := errorLine.FindStringSubmatch(lines[0])
	if m == nil || m[1] != cfgPath || m[2] != "10" || !strings.Contains(m[3], "gateway4") {
		t.Errorf("error line %q, want %s:10: ...gateway4...", lines[0], cfgPath)
	}
	if !strings.HasPrefix(lines[1], "berth-node-config: ERROR "+cfgPath+":5: network: ") || !strings.Contains(lines[1], "DHCP") {
		t.Errorf("fallback line %q", lines[1])
	}
	ents, _ := os.ReadDir(filepath.Join(root, NetworkDir))
	if len(ents) != 1 || ents[0].Name() != dhcpFileName {
		t.Errorf("network files: %v", ents)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "node-2\n" {
		t.Errorf("hostname not applied: %q", got)
	}
	// The agent's name follows the host name, so its file changed too.
	if got := readFile(t, filepath.Join(root, AgentConfig)); got == agentBefore || !strings.Contains(got, "name: node-2") {
		t.Errorf("agent.yaml:\n%s", got)
	}
	s := summary(t, root)
	if len(s.Errors) != 2 || !contains(s.Applied, "network dhcp (fallback: the network section has errors)") {
		t.Errorf("summary: %+v", s)
	}
}

// An invalid agent section keeps the previous agent.yaml untouched; a
// removed one removes ours but never a hand-written file.
func TestApplyAgentSection(t *testing.T) {
	root, esp := testRoot(t)
	cfgPath := filepath.Join(esp, ESPFile)
	agentPath := filepath.Join(root, AgentConfig)
	mustWrite(t, cfgPath, "agent:\n  voters: 3\n  advertise_ip: 10.0.0.1\n")
	if r := runMain(t, root, esp); r.code != 0 || r.stderr != "" {
		t.Fatal(r.stderr)
	}
	before := snapshot(t, filepath.Dir(agentPath))

	mustWrite(t, cfgPath, "agent:\n  voters: 3\n  advertise_ip: 10.0.0.1\n  dead_after: soon\n")
	r := runMain(t, root, esp)
	if r.code != 0 || !strings.Contains(r.stderr, cfgPath+":4: agent: dead-after") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if !equalSnapshots(t, before, snapshot(t, filepath.Dir(agentPath))) {
		t.Error("an invalid agent section changed agent.yaml")
	}

	mustWrite(t, cfgPath, "hostname: x\n")
	if r := runMain(t, root, esp); r.code != 0 || r.stderr != "" {
		t.Fatal(r.stderr)
	}
	if _, err := os.Stat(agentPath); !os.IsNotExist(err) {
		t.Errorf("agent.yaml kept without an agent section: %v", err)
	}

	mustWrite(t, agentPath, "voters: 1\n")
	if r := runMain(t, root, esp); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if got := readFile(t, agentPath); got != "voters: 1\n" {
		t.Errorf("hand-written agent.yaml changed to %q", got)
	}
}

// A YAML syntax error changes nothing but the network (DHCP).
func TestApplySyntaxError(t *testing.T) {
	root, esp := testRoot(t)
	cfgPath := filepath.Join(esp, ESPFile)
	mustWrite(t, cfgPath, fullConfig)
	if r := runMain(t, root, esp); r.code != 0 {
		t.Fatal(r.stderr)
	}
	agentBefore := readFile(t, filepath.Join(root, AgentConfig))
	mustWrite(t, cfgPath, "hostname: node-3\nnetwork: {interfaces: [\n")
	r := runMain(t, root, esp)
	if r.code != 0 || !strings.Contains(r.stderr, "ERROR "+cfgPath+":2: not valid YAML") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "node-1\n" {
		t.Errorf("hostname %q", got)
	}
	if got := readFile(t, filepath.Join(root, AgentConfig)); got != agentBefore {
		t.Error("agent.yaml changed")
	}
	if _, err := os.Stat(filepath.Join(root, NetworkDir, dhcpFileName)); err != nil {
		t.Errorf("no DHCP fallback: %v", err)
	}
}

// Without the seed and the ESP file, the last configuration found is used;
// with none ever found, DHCP.
func TestApplySourcesFallback(t *testing.T) {
	root, esp := testRoot(t)
	r := runMain(t, root, esp)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if s := summary(t, root); !strings.HasPrefix(s.Source, "none") || !contains(s.Applied, "network dhcp (default)") {
		t.Errorf("summary without any source: %+v", s)
	}
	if got := readFile(t, filepath.Join(root, "etc/hostname")); got != "berth\n" {
		t.Errorf("hostname changed without a config: %q", got)
	}

	mustWrite(t, filepath.Join(esp, ESPFile), fullConfig)
	if r := runMain(t, root, esp); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if err := os.Remove(filepath.Join(esp, ESPFile)); err != nil {
		t.Fatal(err)
	}
	r = runMain(t, root, esp)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if s := summary(t, root); !strings.Contains(s.Source, LastGoodPath) {
		t.Errorf("source %q", s.Source)
	}
	if _, err := os.Stat(filepath.Join(root, NetworkDir, "10-berth-0.network")); err != nil {
		t.Errorf("static network lost with the ESP file: %v", err)
	}
}

func TestMainUsage(t *testing.T) {
	var out, errb bytes.Buffer
	for _, args := range [][]string{{"--bogus"}, {"extra"}, {"--root", "/nonexistent/x"}, {"--seed-wait", "-1s"}} {
		out.Reset()
		errb.Reset()
		if code := Main(args, &out, &errb); code != 2 || errb.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q", args, code, errb.String())
		}
	}
	if code := Main([]string{"--help"}, &out, &errb); code != 0 {
		t.Errorf("--help: exit %d", code)
	}
}

func ExampleProblem() {
	_, problems := Parse([]byte("hostname: node_1\n"), "berth")
	for _, p := range problems {
		fmt.Println("node.yaml:" + p.String())
	}
	// Output: node.yaml:1: hostname: "node_1": character '_' not allowed (use letters, digits, '-' and '.')
}
