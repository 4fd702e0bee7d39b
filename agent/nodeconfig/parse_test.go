package nodeconfig

import (
	"net/netip"
	"strings"
	"testing"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFStBN67etH1En3ixCanOjsAMgjxN7s5sAM0He72Qjiy alice@laptop"

// secret is a bare 32-hex join secret (the provisioning form).
const secret = "0123456789abcdef0123456789abcdef"

const fullConfig = `# node-1 of the test cluster
hostname: node-1
ssh_authorized_keys:
  - ` + testKey + `
network:
  interfaces:
    - name: "en* eth*"
      dhcp: false
      addresses: [10.240.0.11/24, "fd00:240::11/64"]
      gateway4: 10.240.0.1
      gateway6: "fd00:240::1"
      dns: [10.240.0.1, "fd00:240::1"]
    - mac: "52:54:00:AB:CD:EF"
agent:
  voters: 3
  advertise_ip: 10.240.0.11
  join: [https://10.240.0.12:7480]
  token: ` + secret + `
  labels: {zone: a}
`

func TestParseFull(t *testing.T) {
	cfg, problems := Parse([]byte(fullConfig), "berth")
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	if cfg.Hostname != "node-1" || len(cfg.AuthorizedKeys) != 1 || cfg.AuthorizedKeys[0] != testKey {
		t.Errorf("hostname/keys: %q %q", cfg.Hostname, cfg.AuthorizedKeys)
	}
	if cfg.Network == nil || len(cfg.Network.Interfaces) != 2 {
		t.Fatalf("network: %+v", cfg.Network)
	}
	static, bymac := cfg.Network.Interfaces[0], cfg.Network.Interfaces[1]
	if static.DHCP || static.Name != "en* eth*" || len(static.Addresses) != 2 ||
		static.Addresses[1] != netip.MustParsePrefix("fd00:240::11/64") ||
		static.Gateway4 != netip.MustParseAddr("10.240.0.1") || len(static.DNS) != 2 {
		t.Errorf("static interface: %+v", static)
	}
	// No addresses: DHCP by default; the MAC is normalised for networkd.
	if !bymac.DHCP || bymac.MAC != "52:54:00:ab:cd:ef" {
		t.Errorf("mac interface: %+v", bymac)
	}
	agent := string(cfg.AgentYAML)
	for _, want := range []string{agentHeader, "name: node-1\n", "voters: 3\n", "token: " + secret, "advertise_ip: 10.240.0.11"} {
		if !strings.Contains(agent, want) {
			t.Errorf("agent.yaml lacks %q:\n%s", want, agent)
		}
	}
}

// TestParseBadConfigs: each bad setting gives one problem at its line,
// and only its own section is dropped.
func TestParseBadConfigs(t *testing.T) {
	cases := []struct {
		name, yaml string
		line       int
		want       string
		network    bool // the network section must be marked invalid
		agent      bool // the agent section must be marked invalid
	}{
		{"unknown top-level key", "hostname: a\nhostnme: b\n", 2, `unknown setting "hostnme"`, false, false},
		{"duplicate key", "hostname: a\nhostname: b\n", 2, "set twice (first at line 1)", false, false},
		{"syntax error", "hostname: a\nnetwork: [\n", 2, "not valid YAML", true, false},
		{"not a mapping", "- a\n- b\n", 1, "must be a mapping", true, false},
		{"two documents", "hostname: a\n---\nhostname: b\n", 2, "only one YAML document", true, false},
		{"hostname underscore", "\nhostname: my_node\n", 2, `character '_' not allowed`, false, false},
		{"hostname leading dash", "hostname: -node\n", 1, "may not start or end with '-'", false, false},
		{"hostname too long", "hostname: " + strings.Repeat("a", 64) + "\n", 1, "longer than 63", false, false},
		{"hostname empty label", "hostname: a..b\n", 1, "empty label", false, false},
		{"hostname list", "hostname: [a]\n", 1, "must be a single value", false, false},
		{"keys not a list", "ssh_authorized_keys: " + testKey + "\n", 1, "must be a list", false, false},
		{"key truncated", "ssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqq\n", 2, "ssh_authorized_keys[0]: ssh-ed25519 key", false, false},
		{"key wrong type", "ssh_authorized_keys:\n  - " + strings.Replace(testKey, "ssh-ed25519", "ssh-rsa", 1) + "\n", 2, "not a ssh-rsa key", false, false},
		{"key garbage", "ssh_authorized_keys:\n  - hello world\n", 2, "not a public key line", false, false},
		{"private key pasted", "ssh_authorized_keys:\n  - \"-----BEGIN OPENSSH PRIVATE KEY-----\"\n", 2, "not a public key line", false, false},
		{"network not mapping", "network: dhcp\n", 1, "network: must be a mapping", true, false},
		{"network unknown key", "network:\n  interfaces: [{name: en*}]\n  vlans: []\n", 3, `unknown setting "vlans"`, true, false},
		{"network no interfaces", "network:\n  {}\n", 2, "interfaces: is missing", true, false},
		{"interfaces empty", "network:\n  interfaces: []\n", 2, "is empty", true, false},
		{"bad address", "network:\n  interfaces:\n    - name: en*\n      addresses:\n        - 10.240.0.300/24\n", 5, "addresses[0]: \"10.240.0.300/24\" is not an address", true, false},
		{"address without prefix", "network:\n  interfaces:\n    - name: en*\n      addresses: [10.240.0.11]\n", 4, "has no prefix length", true, false},
		{"network address", "network:\n  interfaces:\n    - name: en*\n      addresses: [10.240.0.0/24]\n", 4, "network address", true, false},
		{"gateway4 is v6", "network:\n  interfaces:\n    - name: en*\n      gateway4: \"fd00::1\"\n", 4, "not an IPv4 address", true, false},
		{"gateway6 is v4", "network:\n  interfaces:\n    - name: en*\n      gateway6: 10.0.0.1\n", 4, "not an IPv6 address", true, false},
		{"bad dns", "network:\n  interfaces:\n    - name: en*\n      dns: [resolver.example]\n", 4, "not a name server address", true, false},
		{"bad mac", "network:\n  interfaces:\n    - mac: \"52:54:00:12:34\"\n", 3, "not a MAC address", true, false},
		{"eui64 mac", "network:\n  interfaces:\n    - mac: \"02:00:5e:10:00:00:00:01\"\n", 3, "not a MAC address", true, false},
		{"bad name glob", "network:\n  interfaces:\n    - name: \"en[\"\n", 3, "syntax error in pattern", true, false},
		{"name with slash", "network:\n  interfaces:\n    - name: \"en/0\"\n", 3, "not an interface name pattern", true, false},
		{"name and mac", "network:\n  interfaces:\n    - name: en*\n      mac: \"52:54:00:12:34:56\"\n", 3, "not both", true, false},
		{"neither name nor mac", "network:\n  interfaces:\n    - dhcp: true\n", 3, "needs name:", true, false},
		{"dhcp not bool", "network:\n  interfaces:\n    - name: en*\n      dhcp: yes-please\n", 4, "must be true or false", true, false},
		{"no address at all", "network:\n  interfaces:\n    - name: en*\n      dhcp: false\n", 3, "no addresses", true, false},
		{"interface unknown key", "network:\n  interfaces:\n    - name: en*\n      mtu: 9000\n", 4, `unknown setting "mtu"`, true, false},
		{"agent unknown key", "agent:\n  voters: 3\n  advertise_ip: 10.0.0.1\n  votres: 3\n", 4, `agent: unknown setting "votres"`, false, true},
		{"agent bad voters", "agent:\n  advertise_ip: 10.0.0.1\n  voters: 4\n", 3, "voters: must be 1, 3 or 5", false, true},
		{"agent bad token", "agent:\n  advertise_ip: 10.0.0.1\n  join: [https://10.0.0.2:7480]\n  token: nothex\n", 4, "token:", false, true},
		{"agent join without token", "agent:\n  join: [https://10.0.0.2:7480]\n", 2, "join: needs", false, true},
		{"agent bad ip", "agent:\n  voters: 1\n  advertise_ip: 10.0.0\n", 3, "advertise-ip", false, true},
		{"agent type error", "agent:\n  voters: three\n", 2, "cannot unmarshal", false, true},
		{"agent not mapping", "agent: on\n", 1, "agent: must be a mapping", false, true},
		{"agent empty", "agent:\n", 1, "agent: is empty", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, problems := Parse([]byte(tc.yaml), "berth")
			if len(problems) != 1 {
				t.Fatalf("want 1 problem, got %d: %v", len(problems), problems)
			}
			p := problems[0]
			if p.Line != tc.line || !strings.Contains(p.Msg, tc.want) {
				t.Errorf("got %q, want line %d containing %q", p.String(), tc.line, tc.want)
			}
			if strings.Contains(p.Msg, "\n") {
				t.Errorf("problem spans lines: %q", p.Msg)
			}
			if cfg.NetworkInvalid != tc.network || (cfg.NetworkInvalid && cfg.Network != nil) {
				t.Errorf("network invalid %v (network %+v), want %v", cfg.NetworkInvalid, cfg.Network, tc.network)
			}
			if cfg.AgentInvalid != tc.agent || (tc.agent && cfg.AgentYAML != nil) {
				t.Errorf("agent invalid %v, want %v", cfg.AgentInvalid, tc.agent)
			}
		})
	}
}

// A bad section leaves the others intact.
func TestParseKeepsGoodSections(t *testing.T) {
	yaml := "hostname: node-2\nssh_authorized_keys:\n  - bad key\n  - " + testKey + "\nnetwork:\n  interfaces:\n    - name: en*\n      addresses: [nonsense]\nagent:\n  voters: 1\n  advertise_ip: 10.0.0.2\n"
	cfg, problems := Parse([]byte(yaml), "berth")
	if len(problems) != 2 || problems[0].Line != 3 || problems[1].Line != 8 {
		t.Fatalf("problems: %v", problems)
	}
	if cfg.Hostname != "node-2" || len(cfg.AuthorizedKeys) != 1 || !cfg.KeysInvalid {
		t.Errorf("hostname %q keys %q", cfg.Hostname, cfg.AuthorizedKeys)
	}
	if cfg.Network != nil || !cfg.NetworkInvalid {
		t.Errorf("network: %+v", cfg.Network)
	}
	if !strings.Contains(string(cfg.AgentYAML), "name: node-2") {
		t.Errorf("agent.yaml: %s", cfg.AgentYAML)
	}
}

func TestParseEmptyAndDefaults(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "---\n"} {
		cfg, problems := Parse([]byte(in), "berth")
		if len(problems) != 0 || cfg.Network != nil || cfg.NetworkInvalid || cfg.AgentGiven || !cfg.parsed {
			t.Errorf("%q: %+v %v", in, cfg, problems)
		}
	}
	// Without hostname the agent's name stays unset: the agent uses the
	// running host name, which is what is validated here.
	cfg, problems := Parse([]byte("agent:\n  voters: 1\n"), "Berth")
	if len(problems) != 0 || strings.Contains(string(cfg.AgentYAML), "name:") {
		t.Errorf("problems %v, agent.yaml:\n%s", problems, cfg.AgentYAML)
	}
	// An explicit agent name wins over the host name.
	cfg, _ = Parse([]byte("hostname: h1\nagent:\n  name: other\n"), "berth")
	if s := string(cfg.AgentYAML); strings.Count(s, "name:") != 1 || !strings.Contains(s, "name: other") {
		t.Errorf("agent.yaml:\n%s", s)
	}
	// Options before the key type are allowed.
	cfg, problems = Parse([]byte("ssh_authorized_keys:\n  - no-pty,from=10.0.0.0/8 "+testKey+"\n"), "berth")
	if len(problems) != 0 || len(cfg.AuthorizedKeys) != 1 {
		t.Errorf("key with options: %v", problems)
	}
}

func TestParseTooLarge(t *testing.T) {
	_, problems := Parse(make([]byte, maxFileBytes+1), "berth")
	if len(problems) != 1 || !strings.HasPrefix(problems[0].In("node.yaml"), "node.yaml: file is ") {
		t.Errorf("problems: %v", problems)
	}
}
