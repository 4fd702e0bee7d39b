package netfilter

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/netnstest"
)

// lab is a set of network namespaces made by the test (see netnstest):
// "node1" (the lab's home, where the test thread lives), "node2",
// "outside" and one per container, all without IPv6 DAD.
type lab struct {
	t   *testing.T
	lab *netnstest.Lab
	ns  map[string]netns.NsHandle
}

func newLab(t *testing.T) *lab {
	nl := netnstest.New(t, netnstest.NoDAD())
	return &lab{t: t, lab: nl, ns: map[string]netns.NsHandle{"node1": nl.Home}}
}

// sub is the lab for subtest t, run on a thread of its own (see
// netnstest.Lab.Sub).
func (l *lab) sub(t *testing.T) *lab {
	return &lab{t: t, lab: l.lab.Sub(t), ns: l.ns}
}

// add makes a namespace and returns to node1.
func (l *lab) add(name string) {
	l.ns[name] = l.lab.NewNS()
}

// in runs fn with the thread in namespace name, then returns to node1.
func (l *lab) in(name string, fn func()) {
	l.lab.In(l.handle(name), fn)
}

func (l *lab) handle(name string) netns.NsHandle {
	h, ok := l.ns[name]
	if !ok {
		l.t.Fatalf("no namespace %s", name)
	}
	return h
}

func (l *lab) must(err error, what string) {
	l.t.Helper()
	if err != nil {
		l.t.Fatalf("%s: %v", what, err)
	}
}

// link connects namespaces a and b with a veth pair named aName/bName and
// gives each end its addresses.
func (l *lab) link(a, aName string, aAddrs []string, b, bName string, bAddrs []string) {
	l.in(a, func() {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(l.ns[b]))}
		l.must(netlink.LinkAdd(v), "veth "+aName)
	})
	l.addrsUp(a, aName, aAddrs)
	l.addrsUp(b, bName, bAddrs)
}

func (l *lab) addrsUp(ns, ifname string, addrs []string) {
	l.in(ns, func() {
		lk, err := netlink.LinkByName(ifname)
		l.must(err, "find "+ifname)
		for _, s := range addrs {
			a, err := netlink.ParseAddr(s)
			l.must(err, s)
			a.Flags = unix.IFA_F_NODAD
			l.must(netlink.AddrAdd(lk, a), "address "+s)
		}
		l.must(netlink.LinkSetUp(lk), "up "+ifname)
	})
}

func (l *lab) route(ns, dst, via string) {
	l.in(ns, func() {
		_, d, err := net.ParseCIDR(dst)
		l.must(err, dst)
		l.must(netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(via)}), "route "+dst)
	})
}

func (l *lab) sysctl(ns, name, val string) {
	l.in(ns, func() {
		l.must(os.WriteFile("/proc/sys/"+name, []byte(val), 0o644), name)
	})
}

// node gives namespace ns a bridge with the gateway addresses and turns on forwarding.
func (l *lab) node(ns string, gws []string) {
	l.in(ns, func() {
		l.must(netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "berth0"}}), "bridge")
	})
	l.addrsUp(ns, "berth0", gws)
	l.sysctl(ns, "net/ipv4/ip_forward", "1")
	l.sysctl(ns, "net/ipv6/conf/all/forwarding", "1")
	// With br_netfilter loaded on the host, bridged frames would also pass
	// the inet hooks; switch that off here so the bridge table alone has to
	// keep tenants apart on the bridge.
	for _, f := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		l.in(ns, func() {
			if _, err := os.Stat("/proc/sys/net/bridge/" + f); err == nil {
				l.must(os.WriteFile("/proc/sys/net/bridge/"+f, []byte("0"), 0o644), f)
			}
		})
	}
}

// container adds namespace name on node's bridge with addrs (CIDR) and default routes via gws.
func (l *lab) container(node, name string, addrs []string, gws []string) {
	l.add(name)
	l.link(node, "v"+name, nil, name, "eth0", addrs)
	l.in(node, func() {
		lk, err := netlink.LinkByName("v" + name)
		l.must(err, "veth")
		br, err := netlink.LinkByName("berth0")
		l.must(err, "bridge")
		l.must(netlink.LinkSetMaster(lk, br), "master")
	})
	for _, gw := range gws {
		l.in(name, func() {
			lk, err := netlink.LinkByName("eth0")
			l.must(err, "eth0")
			l.must(netlink.RouteAdd(&netlink.Route{LinkIndex: lk.Attrs().Index, Gw: net.ParseIP(gw)}), "default route")
		})
	}
}

// serveTCP answers every connection with the client's address as the server sees it.
func (l *lab) serveTCP(ns string, port int) {
	l.lab.ServeTCP(l.handle(ns), fmt.Sprintf(":%d", port), netnstest.TellPeer)
}

// serveUDP answers every datagram with the client's address as the server sees it.
func (l *lab) serveUDP(ns string, port int) {
	l.lab.ServeUDP(l.handle(ns), fmt.Sprintf(":%d", port))
}

// dial connects from ns and returns the source address the server saw.
func (l *lab) dial(ns, proto, addr string) (string, error) {
	return l.dialTimeout(ns, proto, addr, 3*time.Second)
}

func (l *lab) dialTimeout(ns, proto, addr string, timeout time.Duration) (string, error) {
	return l.lab.Ask(l.handle(ns), proto, addr, timeout)
}

func (l *lab) expectSeen(from, proto, addr, want string) {
	l.t.Helper()
	got, err := l.dial(from, proto, addr)
	if err != nil {
		l.t.Errorf("%s -> %s %s: %v; want it answered", from, proto, addr, err)
		return
	}
	if got != want {
		l.t.Errorf("%s -> %s %s: server saw %s, want %s", from, proto, addr, got, want)
	}
}

// expectDropped wants a timeout: dropped, not refused or unreachable.
func (l *lab) expectDropped(from, addr string) {
	l.t.Helper()
	got, err := l.dialTimeout(from, "tcp", addr, time.Second)
	var ne net.Error
	if err == nil {
		l.t.Errorf("%s -> %s: connected (server saw %s); want it dropped", from, addr, got)
	} else if !errors.As(err, &ne) || !ne.Timeout() {
		l.t.Errorf("%s -> %s: %v; want a timeout (dropped)", from, addr, err)
	}
}

func (l *lab) apply(ns string, c Config) {
	l.t.Helper()
	rs, err := Rules(c)
	l.must(err, "Rules")
	l.in(ns, func() { err = Apply(rs) })
	if err != nil {
		l.t.Fatalf("Apply in %s: %v", ns, err)
	}
}

// dump lists every table of ns, and berth's chains, rules (with handles),
// sets and elements, through the nftables library.
func (l *lab) dump(ns string) string {
	var b strings.Builder
	l.in(ns, func() {
		conn, err := nftables.New()
		l.must(err, "nftables")
		tables, err := conn.ListTables()
		l.must(err, "list tables")
		var names []string
		for _, t := range tables {
			names = append(names, fmt.Sprintf("table %d %s", t.Family, t.Name))
		}
		sort.Strings(names)
		fmt.Fprintln(&b, strings.Join(names, "\n"))
		for _, t := range tables {
			if t.Name != TableName {
				continue
			}
			chains, err := conn.ListChainsOfTableFamily(t.Family)
			l.must(err, "list chains")
			for _, c := range chains {
				if c.Table.Name != t.Name {
					continue
				}
				fmt.Fprintf(&b, "chain %d %s %v\n", t.Family, c.Name, c.Hooknum != nil)
				rules, err := conn.GetRules(t, c)
				l.must(err, "list rules")
				for _, r := range rules {
					fmt.Fprintf(&b, "  %d %q", r.Handle, r.UserData)
					for _, e := range r.Exprs {
						fmt.Fprintf(&b, " %+v", e)
					}
					b.WriteString("\n")
				}
			}
			sets, err := conn.GetSets(t)
			l.must(err, "list sets")
			for _, s := range sets {
				elems, err := conn.GetSetElements(s)
				l.must(err, "list elements")
				var es []string
				for _, e := range elems {
					v := ""
					if e.VerdictData != nil {
						v = e.VerdictData.Chain
					}
					es = append(es, fmt.Sprintf("%x:%s", e.Key, v))
				}
				sort.Strings(es)
				fmt.Fprintf(&b, "set %d %s %v\n", t.Family, s.Name, es)
			}
		}
	})
	return b.String()
}

// nftList is `nft list ruleset` when nft is installed, for failure messages only.
func (l *lab) nftList(ns string) string {
	var out []byte
	l.in(ns, func() { out, _ = exec.Command("nft", "list", "ruleset").CombinedOutput() })
	return string(out)
}

func TestKernel(t *testing.T) {
	l := newLab(t)
	l.add("node2")
	l.add("outside")

	// outside 192.0.2.1 / 2001:db8::1 -- node1 192.0.2.10 / 2001:db8::10
	l.link("node1", "n1-out", []string{"192.0.2.10/24", "2001:db8::10/64"}, "outside", "out-n1", []string{"192.0.2.1/24", "2001:db8::1/64"})
	// node1 198.51.100.1 -- node2 198.51.100.2, each routing the other's container subnet
	l.link("node1", "n1-n2", []string{"198.51.100.1/24"}, "node2", "n2-n1", []string{"198.51.100.2/24"})
	l.route("node1", "10.88.2.0/24", "198.51.100.2")
	l.route("node2", "10.88.1.0/24", "198.51.100.1")

	l.node("node1", []string{"10.88.1.1/24", "fd42:1:2:1::1/64"})
	l.node("node2", []string{"10.88.2.1/24"})
	gw1 := []string{"10.88.1.1", "fd42:1:2:1::1"}
	l.container("node1", "a1", []string{"10.88.1.2/24", "fd42:1:2:1::2/64"}, gw1) // acme
	l.container("node1", "a2", []string{"10.88.1.3/24", "fd42:1:2:1::3/64"}, gw1) // acme
	l.container("node1", "b1", []string{"10.88.1.4/24", "fd42:1:2:1::4/64"}, gw1) // Beta Corp!
	l.container("node2", "a3", []string{"10.88.2.2/24"}, []string{"10.88.2.1"})   // acme
	l.container("node2", "b2", []string{"10.88.2.3/24"}, []string{"10.88.2.1"})   // Beta Corp!

	for _, ns := range []string{"a1", "a2", "b1", "a3", "b2"} {
		l.serveTCP(ns, 80)
	}
	l.serveUDP("a2", 53)
	l.serveTCP("outside", 9000)

	// A table of someone else that berth must leave alone.
	l.in("node1", func() {
		conn, err := nftables.New()
		l.must(err, "nftables")
		conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "other"})
		l.must(conn.Flush(), "add foreign table")
	})

	cfg := node1Config()
	l.apply("node1", cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node1 ruleset:\n%s", l.nftList("node1"))
		}
	})

	t.Run("masquerade", func(t *testing.T) {
		l := l.sub(t)
		l.expectSeen("a1", "tcp", "192.0.2.1:9000", "192.0.2.10")
		l.expectSeen("a1", "tcp", "[2001:db8::1]:9000", "2001:db8::10")
		// Container to container keeps its source, on the node and across nodes.
		l.expectSeen("a1", "tcp", "10.88.1.3:80", "10.88.1.2")
		l.expectSeen("a1", "tcp", "[fd42:1:2:1::3]:80", "fd42:1:2:1::2")
		l.expectSeen("a3", "tcp", "10.88.1.2:80", "10.88.2.2")
	})

	t.Run("published", func(t *testing.T) {
		l := l.sub(t)
		// Outside clients keep their address.
		l.expectSeen("outside", "tcp", "192.0.2.10:8080", "192.0.2.1")
		l.expectSeen("outside", "tcp", "[2001:db8::10]:8080", "2001:db8::1")
		l.expectSeen("outside", "udp", "192.0.2.10:5353", "192.0.2.1")
		// Bound to 198.51.100.1 only: node2 reaches it there, outside on 192.0.2.10 does not.
		l.expectSeen("node2", "tcp", "198.51.100.1:8081", "198.51.100.2")
		if got, err := l.dial("outside", "tcp", "192.0.2.10:8081"); err == nil {
			t.Errorf("port 8081 bound to 198.51.100.1 answered on 192.0.2.10 (server saw %s)", got)
		}
		// Hairpin from the node itself (output hook) and from containers on it:
		// these are masqueraded to the gateway so the reply comes back through the node.
		l.expectSeen("node1", "tcp", "192.0.2.10:8080", "192.0.2.10")
		l.expectSeen("node1", "udp", "198.51.100.1:5353", "198.51.100.1")
		l.expectSeen("a2", "tcp", "192.0.2.10:8080", "10.88.1.1")
		l.expectSeen("a1", "tcp", "192.0.2.10:8080", "10.88.1.1") // its own port
		// Another tenant reaches a published port like any outside client.
		l.expectSeen("b1", "tcp", "192.0.2.10:8080", "10.88.1.1")
		l.expectSeen("b2", "tcp", "198.51.100.1:8080", "10.88.2.3") // node2 has no rules yet: no masquerade
	})

	t.Run("tenants", func(t *testing.T) {
		l := l.sub(t)
		// Same node: switched on the bridge, only the bridge table sees it.
		l.expectSeen("a2", "tcp", "10.88.1.2:80", "10.88.1.3")
		l.expectDropped("b1", "10.88.1.2:80")
		l.expectDropped("a1", "10.88.1.4:80")
		l.expectDropped("b1", "[fd42:1:2:1::2]:80")
		// Across nodes, with no rules on node2: node1's inet forward chain drops it.
		l.expectSeen("a3", "tcp", "10.88.1.3:80", "10.88.2.2")
		l.expectDropped("b2", "10.88.1.2:80")
		l.expectDropped("a1", "10.88.2.3:80")
		l.expectSeen("b1", "tcp", "10.88.2.3:80", "10.88.1.4")
		// A container unknown to the rules reaches no container (fail closed).
		c := cfg
		c.Containers = append([]Container(nil), cfg.Containers...)
		c.Containers = c.Containers[2:] // forget a1
		l.apply("node1", c)
		l.expectDropped("a1", "10.88.1.3:80")
		l.expectSeen("a1", "tcp", "192.0.2.1:9000", "192.0.2.10") // the outside still works
		l.apply("node1", cfg)
		l.expectSeen("a1", "tcp", "10.88.1.3:80", "10.88.1.2")
	})

	t.Run("idempotent", func(t *testing.T) {
		l := l.sub(t)
		before := l.dump("node1")
		l.apply("node1", cfg)
		if after := l.dump("node1"); after != before {
			t.Errorf("a second Apply changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if !strings.Contains(before, "table 1 other") || !strings.Contains(before, "table 7 berth") {
			t.Errorf("want the foreign and both berth tables:\n%s", before)
		}
	})

	t.Run("failures change nothing", func(t *testing.T) {
		l := l.sub(t)
		before := l.dump("node1")
		bad := cfg
		bad.Ports = append([]Port{{Proto: "tcp", HostPort: 8080, Addr: a("10.88.1.4"), ContainerPort: 80}}, cfg.Ports...)
		if _, err := Rules(bad); err == nil {
			t.Fatal("Rules accepted a port published twice")
		}
		// A ruleset the kernel rejects (a jump to a missing chain, last in
		// the batch): the transaction aborts and the old rules stay.
		rs, err := Rules(cfg)
		l.must(err, "Rules")
		rs.Tables[0].Chains[1].Rules = nil // would empty prerouting...
		last := &rs.Tables[1].Chains[len(rs.Tables[1].Chains)-1]
		last.Rules = append(last.Rules, Rule{Stmts: []Stmt{Verdict{"jump", "missing"}}})
		l.in("node1", func() { err = Apply(rs) })
		if err == nil {
			t.Fatal("Apply of a ruleset with a jump to a missing chain succeeded")
		}
		t.Logf("kernel refused as expected: %v", err)
		if after := l.dump("node1"); after != before {
			t.Errorf("a failed Apply changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		l.expectSeen("outside", "tcp", "192.0.2.10:8080", "192.0.2.1")
	})

	t.Run("node2 rules too", func(t *testing.T) {
		l := l.sub(t)
		c2 := cfg
		c2.LocalV4, c2.LocalV6, c2.Ports = p("10.88.2.0/24"), p("fd42:1:2:2::/64"), nil
		l.apply("node2", c2)
		l.expectSeen("a3", "tcp", "10.88.1.2:80", "10.88.2.2")
		l.expectDropped("b2", "10.88.1.2:80")
		l.expectDropped("b2", "10.88.2.2:80") // same bridge on node2
		l.expectSeen("b2", "tcp", "198.51.100.1:8080", "198.51.100.2")
	})

	t.Run("remove", func(t *testing.T) {
		l := l.sub(t)
		var err error
		l.in("node1", func() { err = Remove() })
		l.must(err, "Remove")
		l.in("node1", func() { err = Remove() })
		l.must(err, "second Remove")
		d := l.dump("node1")
		if strings.Contains(d, " berth") || !strings.Contains(d, "table 1 other") {
			t.Errorf("after Remove want only the foreign table, got:\n%s", d)
		}
		// Without rules, tenants meet again: the drops above were the rules' doing.
		l.expectSeen("b1", "tcp", "10.88.1.2:80", "10.88.1.4")
	})
}
