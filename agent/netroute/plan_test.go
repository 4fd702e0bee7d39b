package netroute

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// A cluster of four nodes: n1 (self) and n2 share 192.168.1.0/24 (and an
// IPv6 /64), n3 lives behind a router, n4 shares the link over IPv4 only.
var (
	testLinks = []Link{
		{Name: "eth0", Index: 2, MTU: 1500, Prefixes: []netip.Prefix{pfx("192.168.1.1/24"), pfx("fd99::1/64"), pfx("fe80::1/64")}},
		{Name: "berth0", Index: 3, MTU: 1500, Prefixes: []netip.Prefix{pfx("10.88.1.1/24"), pfx("fd5a::1:0:0:0:1/64")}},
	}
	testPeers = []Peer{
		{Node: "n1", Addrs: []netip.Addr{ip("192.168.1.1"), ip("fd99::1")}},
		{Node: "n2", Addrs: []netip.Addr{ip("192.168.1.2"), ip("fd99::2")}},
		{Node: "n3", Addrs: []netip.Addr{ip("172.16.0.3")}},
		{Node: "n4", Addrs: []netip.Addr{ip("192.168.1.4")}},
	}
	testEntries = []Entry{
		{pfx("10.88.1.0/24"), "n1"}, {pfx("fd5a:0:0:1::/64"), "n1"},
		{pfx("10.88.2.0/24"), "n2"}, {pfx("fd5a:0:0:2::/64"), "n2"},
		{pfx("10.88.3.0/24"), "n3"}, {pfx("fd5a:0:0:3::/64"), "n3"},
		{pfx("10.88.4.0/24"), "n4"}, {pfx("fd5a:0:0:4::/64"), "n4"},
	}
)

func routeStrings(d Desired) []string {
	var s []string
	for _, r := range d.Routes {
		s = append(s, r.String())
	}
	return s
}

func problemStrings(ps []Problem) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, "\n")
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name     string
		entries  []Entry
		peers    []Peer
		links    []Link
		cfg      Config
		routes   []string
		problems []string // pieces, each in some problem
		vxlan    bool
		mtu      int
	}{
		{
			name: "direct for link peers, vxlan for the rest, ipv6 over vxlan when the peer has no ipv6 on the link",
			routes: []string{
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"10.88.3.0/24 via 10.88.3.0 dev berth.vx onlink",
				"10.88.4.0/24 via 192.168.1.4 dev eth0",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
				"fd5a:0:0:3::/64 via fe80::bf:aff:fe58:300 dev berth.vx",
				"fd5a:0:0:4::/64 via fe80::bf:aff:fe58:400 dev berth.vx",
			},
			vxlan: true, mtu: 1450,
		},
		{
			name:    "all on the link: no vxlan device, full MTU",
			entries: testEntries[:4],
			routes: []string{
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
			},
			mtu: 1500,
		},
		{
			name:    "no peers in auto mode: the underlay MTU",
			entries: testEntries[:2],
			mtu:     1500,
		},
		{
			name:    "forced vxlan",
			entries: testEntries[:4],
			cfg:     Config{Mode: ModeVXLAN, VNI: 7, Port: 8472},
			routes: []string{
				"10.88.2.0/24 via 10.88.2.0 dev berth.vx onlink",
				"fd5a:0:0:2::/64 via fe80::bf:aff:fe58:200 dev berth.vx",
			},
			vxlan: true, mtu: 1450,
		},
		{
			name:    "forced vxlan with no peers still has the device",
			entries: testEntries[:2],
			cfg:     Config{Mode: ModeVXLAN},
			vxlan:   true, mtu: 1450,
		},
		{
			name:    "peer without address or document is a problem, not a crash",
			entries: append(slices.Clone(testEntries[:4]), Entry{pfx("10.88.5.0/24"), "n5"}, Entry{pfx("10.88.6.0/24"), "n6"}),
			peers:   append(slices.Clone(testPeers), Peer{Node: "n5"}),
			routes: []string{
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
			},
			problems: []string{"node n5: no IPv4 address", "10.88.6.0/24 (node n6): no node document"},
			mtu:      1500,
		},
		{
			name: "a moved container's /32 goes to its new node, beside its subnet's route",
			entries: append(slices.Clone(testEntries[:6]),
				Entry{pfx("10.88.2.7/32"), "n3"}, Entry{pfx("10.88.1.9/32"), "n2"}, Entry{pfx("10.88.3.5/32"), "n1"}),
			routes: []string{
				"10.88.1.9/32 via 192.168.1.2 dev eth0",
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"10.88.2.7/32 via 10.88.3.0 dev berth.vx onlink",
				"10.88.3.0/24 via 10.88.3.0 dev berth.vx onlink",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
				"fd5a:0:0:3::/64 via fe80::bf:aff:fe58:300 dev berth.vx",
			},
			vxlan: true, mtu: 1450,
		},
		{
			name:    "ipv4 via an ipv6 nexthop when the peer shares the link over ipv6 only",
			entries: testEntries[:4],
			peers:   []Peer{testPeers[0], {Node: "n2", Addrs: []netip.Addr{ip("fd99::2")}}},
			routes: []string{
				"10.88.2.0/24 via fd99::2 dev eth0",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
			},
			mtu: 1500,
		},
		{
			name:    "bad entries and duplicates",
			entries: append(slices.Clone(testEntries[:4]), Entry{pfx("10.88.9.1/24"), "n2"}, Entry{pfx("10.88.2.0/24"), "n4"}, Entry{pfx("10.88.1.0/24"), "n2"}),
			routes: []string{
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"fd5a:0:0:2::/64 via fd99::2 dev eth0",
			},
			problems: []string{"write it as 10.88.9.0/24", "10.88.2.0/24 (node n4): also claimed by node n2", "10.88.1.0/24 (node n2): also claimed by node n1"},
			mtu:      1500,
		},
		{
			name:     "no underlay address of our own",
			entries:  testEntries[:6],
			peers:    testPeers[1:],
			routes:   []string{"10.88.2.0/24 via 192.168.1.2 dev eth0", "fd5a:0:0:2::/64 via fd99::2 dev eth0"},
			problems: []string{"node n1: no underlay address for VXLAN", "node n3: not on a shared link"},
			mtu:      1500,
		},
		{
			name:    "explicit underlay address and jumbo frames",
			entries: testEntries[:6],
			peers:   testPeers[1:],
			links:   []Link{{Name: "eth0", Index: 2, MTU: 9000, Prefixes: []netip.Prefix{pfx("192.168.1.1/24")}}},
			cfg:     Config{Underlay: ip("192.168.1.1")},
			routes: []string{
				"10.88.2.0/24 via 192.168.1.2 dev eth0",
				"10.88.3.0/24 via 10.88.3.0 dev berth.vx onlink",
				"fd5a:0:0:2::/64 via fe80::bf:aff:fe58:200 dev berth.vx",
				"fd5a:0:0:3::/64 via fe80::bf:aff:fe58:300 dev berth.vx",
			},
			vxlan: true, mtu: 8950,
		},
		{
			name:     "unknown mode falls back to vxlan and says so",
			entries:  testEntries[:4],
			cfg:      Config{Mode: "bgp"},
			routes:   []string{"10.88.2.0/24 via 10.88.2.0 dev berth.vx onlink", "fd5a:0:0:2::/64 via fe80::bf:aff:fe58:200 dev berth.vx"},
			problems: []string{`route mode "bgp"`},
			vxlan:    true, mtu: 1450,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.entries == nil {
				tc.entries = testEntries
			}
			if tc.peers == nil {
				tc.peers = testPeers
			}
			if tc.links == nil {
				tc.links = testLinks
			}
			d, probs := Plan("n1", tc.entries, tc.peers, tc.links, tc.cfg)
			if got := routeStrings(d); !slices.Equal(got, tc.routes) {
				t.Errorf("routes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.routes, "\n"))
			}
			all := problemStrings(probs)
			for _, want := range tc.problems {
				if !strings.Contains(all, want) {
					t.Errorf("problems %q lack %q", all, want)
				}
			}
			if len(tc.problems) == 0 && len(probs) > 0 {
				t.Errorf("unexpected problems: %s", all)
			}
			if (d.VXLAN != nil) != tc.vxlan {
				t.Fatalf("vxlan device %+v, want one: %v", d.VXLAN, tc.vxlan)
			}
			if d.MTU != tc.mtu {
				t.Errorf("MTU %d, want %d", d.MTU, tc.mtu)
			}
			if d.VXLAN == nil {
				if len(d.Neighbors)+len(d.FDB) > 0 {
					t.Errorf("neighbors %v or FDB %v without a device", d.Neighbors, d.FDB)
				}
				return
			}
			// Every VXLAN route's nexthop has a neighbor whose MAC has an FDB entry.
			for _, r := range d.Routes {
				if r.Dev != d.VXLAN.Name {
					continue
				}
				i := slices.IndexFunc(d.Neighbors, func(n Neighbor) bool { return n.IP == r.Gw })
				if i < 0 {
					t.Fatalf("route %s: no neighbor for its nexthop in %v", r, d.Neighbors)
				}
				if !slices.ContainsFunc(d.FDB, func(f FDB) bool { return f.MAC.String() == d.Neighbors[i].MAC.String() }) {
					t.Fatalf("route %s: no FDB entry for %s", r, d.Neighbors[i].MAC)
				}
			}
		})
	}
}

func TestPlanVXLANDevice(t *testing.T) {
	d, _ := Plan("n1", testEntries, testPeers, testLinks, Config{})
	v := d.VXLAN
	if v.Name != "berth.vx" || v.VNI != 1 || v.Port != 4789 || v.Local != ip("192.168.1.1") || v.Parent != "eth0" || v.MTU != 1450 {
		t.Fatalf("device %+v", v)
	}
	// Our own MAC is what the peers derive for us from our subnet.
	if v.MAC.String() != "02:bf:0a:58:01:00" || !slices.Equal(v.Addrs, []netip.Prefix{pfx("10.88.1.0/32")}) {
		t.Fatalf("own VTEP %s %v", v.MAC, v.Addrs)
	}
	var fdb []string
	for _, f := range d.FDB {
		fdb = append(fdb, f.MAC.String()+" dst "+f.Dst.String())
	}
	want := []string{"02:bf:0a:58:03:00 dst 172.16.0.3", "02:bf:0a:58:04:00 dst 192.168.1.4"}
	if !slices.Equal(fdb, want) {
		t.Fatalf("FDB %v, want %v", fdb, want)
	}
	// Deterministic: the same input gives the same answer in any order.
	rev := slices.Clone(testEntries)
	slices.Reverse(rev)
	d2, _ := Plan("n1", rev, testPeers, testLinks, Config{})
	if !slices.Equal(routeStrings(d), routeStrings(d2)) {
		t.Fatalf("order changes the plan")
	}
}

func TestPeerFromDoc(t *testing.T) {
	p, probs := PeerFromDoc("n2", []string{"192.168.1.2", "node-2.example", "::ffff:10.0.0.1"})
	if !slices.Equal(p.Addrs, []netip.Addr{ip("192.168.1.2"), ip("10.0.0.1")}) || len(probs) != 1 {
		t.Fatalf("peer %v problems %v", p, probs)
	}
}
