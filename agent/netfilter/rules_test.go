package netfilter

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	a = netip.MustParseAddr
	p = netip.MustParsePrefix
)

// node1 is the configuration the kernel tests use too.
func node1Config() Config {
	return Config{
		ClusterV4: p("10.88.0.0/16"), ClusterV6: p("fd42:1:2::/48"),
		LocalV4: p("10.88.1.0/24"), LocalV6: p("fd42:1:2:1::/64"),
		Bridge: "berth0",
		Ports: []Port{
			{Proto: "tcp", HostPort: 8080, Addr: a("10.88.1.2"), ContainerPort: 80, Owner: "acme.web.0"},
			{Proto: "udp", HostPort: 5353, Addr: a("10.88.1.3"), ContainerPort: 53, Owner: "acme.dns.0"},
			{Proto: "tcp", HostIP: a("198.51.100.1"), HostPort: 8081, Addr: a("10.88.1.2"), ContainerPort: 80, Owner: "acme.web.0"},
			{Proto: "tcp", HostPort: 8080, Addr: a("fd42:1:2:1::2"), ContainerPort: 80, Owner: "acme.web.0"},
		},
		Containers: []Container{
			{a("10.88.1.2"), "acme"}, {a("fd42:1:2:1::2"), "acme"},
			{a("10.88.1.3"), "acme"}, {a("fd42:1:2:1::3"), "acme"},
			{a("10.88.1.4"), "Beta Corp!"}, {a("fd42:1:2:1::4"), "Beta Corp!"},
			{a("10.88.2.2"), "acme"},
			{a("10.88.2.3"), "Beta Corp!"},
		},
	}
}

func rulesOf(t *testing.T, rs Ruleset, f Family, chain string) []string {
	t.Helper()
	c, ok := rs.Chain(f, chain)
	if !ok {
		t.Fatalf("no chain %s in table %s berth:\n%s", chain, f, rs)
	}
	var out []string
	for _, r := range c.Rules {
		out = append(out, r.String())
	}
	return out
}

func TestRules(t *testing.T) {
	rs, err := Rules(node1Config())
	if err != nil {
		t.Fatal(err)
	}
	acme, beta := SafeName("acme"), SafeName("Beta Corp!")
	cases := []struct {
		fam   Family
		chain string
		want  []string
	}{
		{FamilyInet, "prerouting", []string{"fib daddr type local jump ports"}},
		{FamilyInet, "output", []string{
			"meta nfproto ipv4 ip daddr 127.0.0.0/8 return",
			"meta nfproto ipv6 ip6 daddr ::1 return",
			"fib daddr type local jump ports",
		}},
		{FamilyInet, "ports", []string{
			`meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.1.2:80 comment "acme.web.0"`,
			`meta nfproto ipv4 udp dport 5353 dnat ip to 10.88.1.3:53 comment "acme.dns.0"`,
			`meta nfproto ipv4 ip daddr 198.51.100.1 tcp dport 8081 dnat ip to 10.88.1.2:80 comment "acme.web.0"`,
			`meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd42:1:2:1::2]:80 comment "acme.web.0"`,
		}},
		{FamilyInet, "postrouting", []string{
			// Only hairpin flows from the bridge subnet are masqueraded...
			`meta nfproto ipv4 oifname "berth0" ct status dnat ip saddr 10.88.1.0/24 ip daddr 10.88.1.0/24 masquerade comment "hairpin"`,
			"meta nfproto ipv4 ip saddr 10.88.0.0/16 jump outbound",
			`meta nfproto ipv6 oifname "berth0" ct status dnat ip6 saddr fd42:1:2:1::/64 ip6 daddr fd42:1:2:1::/64 masquerade comment "hairpin"`,
			"meta nfproto ipv6 ip6 saddr fd42:1:2::/48 jump outbound",
		}},
		// ...and container traffic leaving the ranges.
		{FamilyInet, "outbound", []string{
			"meta nfproto ipv4 ip daddr 10.88.0.0/16 return",
			"meta nfproto ipv6 ip6 daddr fd42:1:2::/48 return",
			"masquerade",
		}},
		{FamilyInet, "forward", []string{
			"ct state established,related accept",
			"ct status dnat jump published",
			"meta nfproto ipv4 ip daddr 10.88.0.0/16 jump to_container",
			"meta nfproto ipv6 ip6 daddr fd42:1:2::/48 jump to_container",
		}},
		{FamilyInet, "published", []string{
			`meta nfproto ipv4 ip daddr 10.88.1.2 tcp dport 80 accept comment "acme.web.0"`,
			`meta nfproto ipv4 ip daddr 10.88.1.3 udp dport 53 accept comment "acme.dns.0"`,
			`meta nfproto ipv4 ip daddr 10.88.1.2 tcp dport 80 accept comment "acme.web.0"`,
			`meta nfproto ipv6 ip6 daddr fd42:1:2:1::2 tcp dport 80 accept comment "acme.web.0"`,
		}},
		{FamilyInet, "to_container", []string{
			"meta nfproto ipv4 ip saddr vmap @tenant4",
			"meta nfproto ipv6 ip6 saddr vmap @tenant6",
			`meta nfproto ipv4 ip saddr 10.88.0.0/16 drop comment "unknown container"`,
			`meta nfproto ipv6 ip6 saddr fd42:1:2::/48 drop comment "unknown container"`,
		}},
		{FamilyInet, acme, []string{
			"meta nfproto ipv4 ip daddr @" + acme + "_4 accept",
			"meta nfproto ipv6 ip6 daddr @" + acme + "_6 accept",
			`drop comment "tenant acme"`,
		}},
		{FamilyBridge, "forward", []string{
			"meta protocol ip ip daddr 10.88.0.0/16 jump to_container",
			"meta protocol ip6 ip6 daddr fd42:1:2::/48 jump to_container",
		}},
		{FamilyBridge, beta, []string{
			"meta protocol ip ip daddr @" + beta + "_4 accept",
			"meta protocol ip6 ip6 daddr @" + beta + "_6 accept",
			`drop comment "tenant Beta Corp!"`,
		}},
	}
	for _, c := range cases {
		got := rulesOf(t, rs, c.fam, c.chain)
		if !slices.Equal(got, c.want) {
			t.Errorf("table %s chain %s:\n got  %s\n want %s", c.fam, c.chain, strings.Join(got, "\n      "), strings.Join(c.want, "\n      "))
		}
	}

	// The maps send every container of the cluster, local or not, to its tenant's chain.
	text := rs.String()
	for _, want := range []string{
		"map tenant4 { type ipv4_addr : verdict; elements = { 10.88.1.2 : jump " + acme + ", 10.88.1.3 : jump " + acme + ", 10.88.1.4 : jump " + beta + ", 10.88.2.2 : jump " + acme + ", 10.88.2.3 : jump " + beta + " } }",
		"set " + acme + "_4 { type ipv4_addr; elements = { 10.88.1.2, 10.88.1.3, 10.88.2.2 } }",
		"set " + beta + "_6 { type ipv6_addr; elements = { fd42:1:2:1::4 } }",
		"type filter hook forward priority 0; policy accept;",
		"type nat hook prerouting priority -100; policy accept;",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, text)
		}
	}
}

func TestRulesDeterministic(t *testing.T) {
	c := node1Config()
	r1, _ := Rules(c)
	slices.Reverse(c.Containers)
	r2, _ := Rules(c)
	if r1.String() != r2.String() || r1.Fingerprint() != r2.Fingerprint() {
		t.Fatalf("container order changed the ruleset:\n%s\n%s", r1, r2)
	}
	c.Containers = c.Containers[1:]
	r3, _ := Rules(c)
	if r3.Fingerprint() == r1.Fingerprint() {
		t.Fatal("a removed container did not change the fingerprint")
	}
}

func TestRulesIPv4Only(t *testing.T) {
	c := node1Config()
	c.ClusterV6, c.LocalV6 = netip.Prefix{}, netip.Prefix{}
	c.Ports = c.Ports[:3]
	var cs []Container
	for _, ct := range c.Containers {
		if ct.Addr.Is4() {
			cs = append(cs, ct)
		}
	}
	c.Containers = cs
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	if s := rs.String(); strings.Contains(s, "ip6") || strings.Contains(s, "ipv6") {
		t.Fatalf("IPv4-only config produced IPv6 rules:\n%s", s)
	}
}

// A local subnet apart from the cluster range is a container range of its own.
func TestRulesLocalOutsideCluster(t *testing.T) {
	c := node1Config()
	c.LocalV4 = p("172.30.0.0/24")
	c.Ports = nil
	c.Containers = []Container{{a("172.30.0.2"), "acme"}}
	rs, err := Rules(c)
	if err != nil {
		t.Fatal(err)
	}
	got := rulesOf(t, rs, FamilyInet, "outbound")
	want := []string{"meta nfproto ipv4 ip daddr 10.88.0.0/16 return", "meta nfproto ipv4 ip daddr 172.30.0.0/24 return"}
	if !slices.Equal(got[:2], want) {
		t.Fatalf("outbound: got %q, want it to start with %q", got, want)
	}
}

func TestSafeName(t *testing.T) {
	for _, tenant := range []string{"acme", "Beta Corp!", "a/b", "ümlaut", strings.Repeat("x", 300)} {
		n := SafeName(tenant)
		if len(n)+2 > 31 {
			t.Errorf("SafeName(%q) = %q: too long for a set name with suffix", tenant, n)
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
				t.Errorf("SafeName(%q) = %q has %q", tenant, n, r)
			}
		}
	}
	if SafeName("a b") == SafeName("a_b") {
		t.Error("tenants that differ only in unsafe characters share a name")
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"ipv4 only", func(c *Config) {
			c.ClusterV6, c.LocalV6 = netip.Prefix{}, netip.Prefix{}
			c.Ports = c.Ports[:3]
			c.Containers = nil
		}, ""},
		{"bad proto", func(c *Config) { c.Ports[0].Proto = "sctp" }, `protocol "sctp" is not supported: use "tcp" or "udp"`},
		{"host port 0", func(c *Config) { c.Ports[0].HostPort = 0 }, "port 0 cannot be published"},
		{"container port 0", func(c *Config) { c.Ports[1].ContainerPort = 0 }, "port 0 cannot be published"},
		{"published twice", func(c *Config) {
			c.Ports = append(c.Ports, Port{Proto: "tcp", HostPort: 8080, Addr: a("10.88.1.3"), ContainerPort: 81, Owner: "other"})
		}, `tcp port 8080 on all node addresses is published twice (owners "acme.web.0" and "other")`},
		{"bound and wildcard overlap", func(c *Config) {
			c.Ports = append(c.Ports, Port{Proto: "tcp", HostIP: a("192.0.2.10"), HostPort: 8080, Addr: a("10.88.1.3"), ContainerPort: 81})
		}, "tcp port 8080 on 192.0.2.10 is published twice"},
		{"different host IPs are fine", func(c *Config) {
			c.Ports = append(c.Ports, Port{Proto: "tcp", HostIP: a("192.0.2.10"), HostPort: 8081, Addr: a("10.88.1.3"), ContainerPort: 81})
		}, ""},
		{"udp and tcp on one port are fine", func(c *Config) {
			c.Ports = append(c.Ports, Port{Proto: "udp", HostPort: 8080, Addr: a("10.88.1.3"), ContainerPort: 81})
		}, ""},
		{"port of a remote container", func(c *Config) { c.Ports[0].Addr = a("10.88.2.2") }, "is not in this node's container subnet 10.88.1.0/24"},
		{"family mismatch", func(c *Config) { c.Ports[2].HostIP = a("2001:db8::1") }, "different families"},
		{"cluster range missing", func(c *Config) { c.ClusterV4 = netip.Prefix{} }, "ClusterV4 is missing"},
		{"host bits", func(c *Config) { c.ClusterV4 = p("10.88.1.0/16") }, "write it as 10.88.0.0/16"},
		{"wrong family", func(c *Config) { c.LocalV4 = p("fd00::/64") }, "LocalV4 fd00::/64 is not an IPv4 prefix"},
		{"straddling", func(c *Config) { c.LocalV4 = p("10.0.0.0/8") }, "straddles the cluster range"},
		{"v6 local without cluster", func(c *Config) { c.ClusterV6 = netip.Prefix{} }, "LocalV6 fd42:1:2:1::/64 is set but ClusterV6 is not"},
		{"bridge", func(c *Config) { c.Bridge = "this-name-is-too-long" }, "is not an interface name"},
		{"no tenant", func(c *Config) { c.Containers[0].Tenant = "" }, "container 10.88.1.2 has no tenant"},
		{"outside ranges", func(c *Config) { c.Containers[0].Addr = a("192.0.2.7") }, "container 192.0.2.7 of tenant \"acme\" is outside the container ranges"},
		{"two tenants one address", func(c *Config) { c.Containers = append(c.Containers, Container{a("10.88.1.2"), "evil"}) }, `address 10.88.1.2 belongs to tenants "acme" and "evil"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := node1Config()
			tc.edit(&c)
			err := Validate(c)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("no error, want %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q\nwant it to contain %q", err, tc.want)
			}
			if err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					if !strings.HasPrefix(line, "netfilter: ") || !strings.Contains(line, ":") {
						t.Errorf("error line %q does not name the package and a remedy", line)
					}
				}
				if _, rerr := Rules(c); rerr == nil {
					t.Error("Rules accepted a config Validate rejects")
				}
			}
		})
	}
	// Every problem is reported, one line each.
	c := node1Config()
	c.Ports[0].Proto, c.Ports[1].HostPort, c.Bridge = "icmp", 0, ""
	if n := len(strings.Split(Validate(c).Error(), "\n")); n != 3 {
		t.Errorf("want 3 lines for 3 problems, got %d: %v", n, Validate(c))
	}
}
