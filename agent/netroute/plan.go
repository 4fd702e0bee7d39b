// Package netroute programs the routes between nodes' container subnets
// (issue 16, "One cluster network"): a direct route through the peer's
// address when the peer shares a link with this node, a kernel VXLAN
// device otherwise (or always, in ModeVXLAN). Containers keep their own
// source addresses across nodes: nothing here translates addresses.
//
// Plan is the pure decision (entries, peers and local links in; the
// wanted kernel state out); Programmer.Apply makes the kernel match it.
// A controller calls both whenever leases, node documents or links change.
package netroute

import (
	"cmp"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Modes of Config.Mode.
const (
	// ModeAuto routes directly to peers that share a link, VXLAN otherwise.
	ModeAuto = "auto"
	// ModeVXLAN sends to every peer over VXLAN (underlays that drop
	// foreign source addresses, e.g. cloud networks).
	ModeVXLAN = "vxlan"
)

// Defaults used when a Config field is left zero.
const (
	DefaultDevice = "berth.vx"
	DefaultVNI    = 1
	DefaultPort   = 4789 // IANA VXLAN
)

// VXLAN encapsulation overhead: outer Ethernet 14 + IP + UDP 8 + VXLAN 8.
const (
	overhead4 = 14 + 20 + 8 + 8
	overhead6 = 14 + 40 + 8 + 8
)

// Config chooses how peers are reached. Zero fields take the defaults.
type Config struct {
	Mode   string // ModeAuto (default) or ModeVXLAN
	Device string // VXLAN device name, default "berth.vx"
	VNI    uint32 // default 1
	Port   uint16 // UDP port, default 4789
	// Underlay is this node's address that VXLAN packets leave from;
	// default: the first of its own addresses (IPv4 first) that is
	// configured on a local link.
	Underlay netip.Addr
}

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.Device == "" {
		c.Device = DefaultDevice
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	return c
}

// Validate checks the settings a node operator writes.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Mode != ModeAuto && c.Mode != ModeVXLAN {
		return fmt.Errorf("route mode %q: want %q or %q", c.Mode, ModeAuto, ModeVXLAN)
	}
	if len(c.Device) > 15 || strings.ContainsAny(c.Device, "/ \t\n:") {
		return fmt.Errorf("vxlan device name %q: 1-15 characters, no '/', ':' or spaces", c.Device)
	}
	if c.VNI > 1<<24-1 {
		return fmt.Errorf("vni %d: at most %d (24 bits)", c.VNI, 1<<24-1)
	}
	return nil
}

// Peer is a node and its addresses (from its node document).
type Peer struct {
	Node  string
	Addrs []netip.Addr
}

// PeerFromDoc parses a node document's address strings; ones that are not
// IP addresses (a host name) are returned as problems and left out.
func PeerFromDoc(node string, addrs []string) (Peer, []Problem) {
	p := Peer{Node: node}
	var probs []Problem
	for _, s := range addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			probs = append(probs, Problem{Node: node, Msg: fmt.Sprintf("address %q in its node document is not an IP address: ignored", s)})
			continue
		}
		p.Addrs = append(p.Addrs, a.Unmap())
	}
	return p, probs
}

// Entry says that Prefix is reached through Node: a node's leased subnet,
// or later a single moved container's /32 or /128 (the longer prefix wins
// in the kernel).
type Entry struct {
	Prefix netip.Prefix
	Node   string
}

// Link is a local interface as the decision needs it. Prefixes are its
// addresses with their prefix length (192.168.1.5/24).
type Link struct {
	Name     string
	Index    int
	MTU      int
	Prefixes []netip.Prefix
}

// Problem is something Plan could not route; the rest is still planned.
type Problem struct {
	Node   string
	Prefix netip.Prefix // invalid when the problem is the node's, not one entry's
	Msg    string
}

func (p Problem) String() string {
	if p.Prefix.IsValid() {
		return fmt.Sprintf("%s (node %s): %s", p.Prefix, p.Node, p.Msg)
	}
	return fmt.Sprintf("node %s: %s", p.Node, p.Msg)
}

// Desired is the kernel state Apply makes real.
type Desired struct {
	// VXLAN is the device to have; nil removes berth's device.
	VXLAN     *VXLAN
	Routes    []Route
	Neighbors []Neighbor // on the VXLAN device
	FDB       []FDB      // on the VXLAN device
	// MTU is the largest MTU the node bridge and containers may use for
	// the paths in use (the VXLAN device's when it is used); 0 when no
	// underlay link is known. It can drop when the first VXLAN peer
	// appears in ModeAuto.
	MTU int
}

// VXLAN is berth's VXLAN device.
type VXLAN struct {
	Name   string
	VNI    uint32
	Port   uint16
	Local  netip.Addr // underlay source address
	Parent string     // underlay link
	MTU    int
	MAC    net.HardwareAddr
	Addrs  []netip.Prefix // the node's VTEP address(es), /32
}

// Route is one route in the main table. Gw of the other family than Dst
// is an RFC 5549 nexthop (IPv4 via IPv6, RTA_VIA).
type Route struct {
	Dst    netip.Prefix
	Gw     netip.Addr
	Dev    string
	Onlink bool
}

func (r Route) String() string {
	s := r.Dst.String() + " via " + r.Gw.String() + " dev " + r.Dev
	if r.Onlink {
		s += " onlink"
	}
	return s
}

// Neighbor is a permanent neighbor entry for a peer's VTEP nexthop.
type Neighbor struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// FDB sends frames for a peer's VTEP MAC to its underlay address.
type FDB struct {
	MAC net.HardwareAddr
	Dst netip.Addr
}

// vtep is what every node derives alike for a node reached over VXLAN.
type vtep struct {
	mac  net.HardwareAddr
	ip4  netip.Addr // IPv4 nexthop: the subnet's first address (invalid: none)
	ip6  netip.Addr // IPv6 nexthop: link-local from the MAC
	key  netip.Prefix
	seen bool
}

// vtepOf derives a node's VTEP from its subnet: the shortest IPv4 entry
// (a node's lease, not a moved container's /32), else the shortest IPv6
// one. Every node sees the same entries, so all agree without storing
// MACs in etcd.
func vtepOf(entries []Entry) (vtep, bool) {
	var best netip.Prefix
	better := func(p netip.Prefix) bool {
		if !best.IsValid() {
			return true
		}
		if p.Addr().Is4() != best.Addr().Is4() {
			return p.Addr().Is4()
		}
		if p.Bits() != best.Bits() {
			return p.Bits() < best.Bits()
		}
		return p.Addr().Less(best.Addr())
	}
	for _, e := range entries {
		if better(e.Prefix) {
			best = e.Prefix
		}
	}
	if !best.IsValid() {
		return vtep{}, false
	}
	v := vtep{key: best, seen: true}
	if best.Addr().Is4() {
		b := best.Addr().As4()
		// 02:bf:<subnet address>: readable, unique among non-overlapping
		// subnets, locally administered; netsetup uses 02:be / 02:bb.
		v.mac = net.HardwareAddr{0x02, 0xbf, b[0], b[1], b[2], b[3]}
		v.ip4 = best.Addr()
	} else {
		sum := sha256.Sum256([]byte(best.String()))
		v.mac = net.HardwareAddr{0x02, 0xb6, sum[0], sum[1], sum[2], sum[3]}
	}
	v.ip6 = linkLocal(v.mac)
	return v, true
}

// linkLocal is the EUI-64 link-local address of mac: what the peer's own
// device configures, so the nexthop answers pings there too.
func linkLocal(mac net.HardwareAddr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8], b[9], b[10] = mac[0]^0x02, mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}

// usableAddr leaves out addresses that cannot name a peer on a link.
func usableAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsLinkLocalUnicast() && !a.IsMulticast()
}

type path struct {
	direct bool
	gw     netip.Addr
	dev    string
	mtu    int
}

// Plan decides the routes, neighbors and FDB entries that make every
// entry of another node reachable from self. It never fails as a whole:
// what it cannot route is returned as a Problem and left out.
func Plan(self string, entries []Entry, peers []Peer, links []Link, cfg Config) (Desired, []Problem) {
	cfg = cfg.withDefaults()
	var probs []Problem
	if err := cfg.Validate(); err != nil {
		probs = append(probs, Problem{Node: self, Msg: err.Error() + ": using vxlan for every peer"})
		cfg.Mode = ModeVXLAN
	}

	byNode := map[string][]Entry{}
	var valid []Entry
	for _, e := range entries {
		switch {
		case !e.Prefix.IsValid():
			probs = append(probs, Problem{Node: e.Node, Msg: "entry with no prefix: ignored"})
		case e.Prefix != e.Prefix.Masked():
			probs = append(probs, Problem{Node: e.Node, Prefix: e.Prefix, Msg: "host bits set: write it as " + e.Prefix.Masked().String()})
		case e.Prefix.Addr().Is4In6():
			probs = append(probs, Problem{Node: e.Node, Prefix: e.Prefix, Msg: "IPv4-mapped prefix: write it as IPv4"})
		default:
			byNode[e.Node] = append(byNode[e.Node], e)
			valid = append(valid, e)
		}
	}
	// One owner per prefix; a duplicate is a store bug, so say it and
	// keep the lower node name (own first) so every node decides alike.
	slices.SortFunc(valid, func(a, b Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(a.Node, b.Node)
	})
	owner := map[netip.Prefix]string{}
	for _, e := range valid {
		if o, dup := owner[e.Prefix]; dup {
			if o != e.Node {
				probs = append(probs, Problem{Node: e.Node, Prefix: e.Prefix, Msg: "also claimed by node " + o + ": routed to " + o})
			}
			continue
		}
		owner[e.Prefix] = e.Node
	}

	// Links that can carry the underlay: not berth's own device, and no
	// address inside a container prefix (the node bridge).
	var under []Link
	for _, l := range links {
		if l.Name == cfg.Device {
			continue
		}
		overlaps := slices.ContainsFunc(l.Prefixes, func(lp netip.Prefix) bool {
			return slices.ContainsFunc(valid, func(e Entry) bool { return lp.Overlaps(e.Prefix) })
		})
		if !overlaps {
			under = append(under, l)
		}
	}

	peerOf := map[string]Peer{}
	for _, p := range peers {
		peerOf[p.Node] = p
	}

	// This node's underlay address and link for VXLAN.
	var local netip.Addr
	var localLink Link
	candidates := peerOf[self].Addrs
	if cfg.Underlay.IsValid() {
		candidates = []netip.Addr{cfg.Underlay}
	}
	for _, want4 := range []bool{true, false} {
		for _, a := range candidates {
			if a.Is4() != want4 || local.IsValid() {
				continue
			}
			for _, l := range under {
				if slices.ContainsFunc(l.Prefixes, func(lp netip.Prefix) bool { return lp.Addr() == a }) {
					local, localLink = a, l
					break
				}
			}
		}
	}

	var d Desired
	own, _ := vtepOf(byNode[self])
	vx := &VXLAN{Name: cfg.Device, VNI: cfg.VNI, Port: cfg.Port, Local: local, Parent: localLink.Name, MAC: own.mac}
	if local.IsValid() && localLink.MTU > overhead6 {
		vx.MTU = localLink.MTU - overhead4
		if local.Is6() {
			vx.MTU = localLink.MTU - overhead6
		}
	}
	if own.mac == nil {
		// No subnet: nothing comes back to this VTEP, any stable MAC does.
		sum := sha256.Sum256([]byte(self))
		vx.MAC = net.HardwareAddr{0x02, 0xb6, sum[0], sum[1], sum[2], sum[3]}
	}
	if own.ip4.IsValid() {
		vx.Addrs = []netip.Prefix{netip.PrefixFrom(own.ip4, 32)}
	}
	useVXLAN := cfg.Mode == ModeVXLAN
	mtu := 0
	lower := func(m int) {
		if m > 0 && (mtu == 0 || m < mtu) {
			mtu = m
		}
	}

	// pathTo decides, once per peer and family, how prefixes of that
	// family reach the peer.
	type famKey struct {
		node string
		v4   bool
	}
	paths := map[famKey]*path{}
	reported := map[string]bool{}
	problem := func(node string, pfx netip.Prefix, msg string) {
		if !reported[node+msg] {
			reported[node+msg] = true
			probs = append(probs, Problem{Node: node, Prefix: pfx, Msg: msg})
		}
	}
	vteps := map[string]vtep{}
	pathTo := func(peer Peer, v4 bool, pfx netip.Prefix) *path {
		k := famKey{peer.Node, v4}
		if p, ok := paths[k]; ok {
			return p
		}
		var p *path
		defer func() { paths[k] = p }()
		if cfg.Mode == ModeAuto {
			var same, other *path
			for _, a := range peer.Addrs {
				if !usableAddr(a) {
					continue
				}
				for _, l := range under {
					on := slices.ContainsFunc(l.Prefixes, func(lp netip.Prefix) bool { return lp.Contains(a) && lp.Addr() != a })
					switch {
					case !on:
					case a.Is4() == v4 && same == nil:
						same = &path{direct: true, gw: a, dev: l.Name, mtu: l.MTU}
					case a.Is4() != v4 && other == nil:
						other = &path{direct: true, gw: a, dev: l.Name, mtu: l.MTU}
					}
				}
			}
			switch {
			case same != nil:
				p = same
				return p
			case other != nil && v4:
				p = other // IPv4 via an IPv6 nexthop (RFC 5549)
				return p
			}
			// The kernel has no IPv6 route via an IPv4 nexthop ("IPv6 does
			// not support RTA_VIA attribute"): such a peer's IPv6 goes over
			// VXLAN below.
		}
		if !local.IsValid() {
			problem(self, netip.Prefix{}, "no underlay address for VXLAN: none of this node's document addresses is configured on a local link (set the VXLAN underlay address)")
			problem(peer.Node, netip.Prefix{}, "not on a shared link and VXLAN has no underlay address here: not routed")
			return nil
		}
		var dst netip.Addr
		for _, a := range peer.Addrs {
			if usableAddr(a) && a.Is4() == local.Is4() {
				dst = a
				break
			}
		}
		if !dst.IsValid() {
			fam := "IPv4"
			if local.Is6() {
				fam = "IPv6"
			}
			problem(peer.Node, netip.Prefix{}, fmt.Sprintf("no %s address in its node document for the VXLAN underlay (this node sends from %s): not routed", fam, local))
			return nil
		}
		v, ok := vtepOf(byNode[peer.Node])
		if !ok {
			return nil // cannot happen: the peer has the entry we route
		}
		nh := v.ip6
		if v4 {
			if !v.ip4.IsValid() {
				problem(peer.Node, pfx, "the node has no IPv4 subnet, so its VTEP has no IPv4 nexthop: not routed over VXLAN")
				return nil
			}
			nh = v.ip4
		}
		if _, ok := vteps[peer.Node]; !ok {
			d.FDB = append(d.FDB, FDB{MAC: v.mac, Dst: dst})
		}
		vteps[peer.Node] = v
		d.Neighbors = append(d.Neighbors, Neighbor{IP: nh, MAC: v.mac})
		useVXLAN = true
		p = &path{gw: nh, dev: cfg.Device}
		return p
	}

	for _, e := range valid {
		if owner[e.Prefix] != e.Node || e.Node == self {
			continue
		}
		peer, ok := peerOf[e.Node]
		if !ok {
			probs = append(probs, Problem{Node: e.Node, Prefix: e.Prefix, Msg: "no node document (node down?): not routed"})
			continue
		}
		p := pathTo(peer, e.Prefix.Addr().Is4(), e.Prefix)
		if p == nil {
			continue
		}
		// Over VXLAN the nexthop is not on any configured prefix of the
		// device (IPv4 .0 of the peer's subnet), so it is onlink.
		r := Route{Dst: e.Prefix, Gw: p.gw, Dev: p.dev, Onlink: !p.direct && p.gw.Is4()}
		d.Routes = append(d.Routes, r)
		if p.direct {
			lower(p.mtu)
		}
	}
	if useVXLAN {
		if local.IsValid() {
			d.VXLAN = vx
			lower(vx.MTU)
		} else {
			problem(self, netip.Prefix{}, "no underlay address for VXLAN: none of this node's document addresses is configured on a local link (set the VXLAN underlay address)")
		}
	}
	if mtu == 0 && local.IsValid() {
		mtu = localLink.MTU
	}
	d.MTU = mtu
	slices.SortFunc(d.Routes, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })
	slices.SortFunc(d.Neighbors, func(a, b Neighbor) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(d.FDB, func(a, b FDB) int { return strings.Compare(a.MAC.String(), b.MAC.String()) })
	return d, probs
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
