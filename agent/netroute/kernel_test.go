package netroute

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/agent/netsetup"
	"github.com/berth-os/berth/internal/netnstest"
)

// world is a small cluster in network namespaces: the test thread sits in
// a fresh "switch" namespace holding two underlay bridges joined by
// routing (ul1 192.168.71.0/24 + fd71::/64, ul2 192.168.72.0/24); each
// node is a namespace with eth0 on one of them, a netsetup bridge and one
// container. The switch has no route to any container range, so a
// container packet crosses it only encapsulated or on the shared L2.
type world struct {
	t     testing.TB
	lab   *netnstest.Lab // home: the switch
	nodes []*node
}

type node struct {
	name       string
	ns         netns.NsHandle
	h          *netlink.Handle
	prog       *Programmer
	ul4, ul6   netip.Prefix // eth0's addresses (ul6 may be invalid)
	sub4, sub6 netip.Prefix
	net        *netsetup.Network
	ctr        netsetup.Attachment
	ctrNS      netns.NsHandle
	clean      string // snapshot before the first Apply
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{t: t, lab: netnstest.New(t)}
	for _, f := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		must(t, os.WriteFile("/proc/sys/"+f, []byte("1"), 0o644))
	}
	for name, addrs := range map[string][]string{"ul1": {"192.168.71.254/24", "fd71::fe/64"}, "ul2": {"192.168.72.254/24"}} {
		must(t, netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}))
		br, err := netlink.LinkByName(name)
		must(t, err)
		for _, a := range addrs {
			must(t, netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(pfx(a)), Flags: unix.IFA_F_NODAD}))
		}
		must(t, netlink.LinkSetUp(br))
	}
	return w
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sub is the world for subtest t, run on a thread of its own (see
// netnstest.Lab.Sub).
func (w *world) sub(t *testing.T) *world {
	return &world{t: t, lab: w.lab.Sub(t), nodes: w.nodes}
}

// addNode makes node i (1-based: subnets 10.88.i.0/24, fd5a:0:0:i::/64)
// on underlay bridge br.
func (w *world) addNode(i int, br, ul4, ul6 string) *node {
	t := w.t
	t.Helper()
	n := &node{name: fmt.Sprintf("n%d", i), ul4: pfx(ul4), ctrNS: netns.None(),
		sub4: pfx(fmt.Sprintf("10.88.%d.0/24", i)), sub6: pfx(fmt.Sprintf("fd5a:0:0:%d::/64", i))}
	if ul6 != "" {
		n.ul6 = pfx(ul6)
	}
	ns := w.lab.NewNS()
	n.ns = ns
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "u-" + n.name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}))
	sw, _ := netlink.LinkByName("u-" + n.name)
	bridge, _ := netlink.LinkByName(br)
	must(t, netlink.LinkSetMaster(sw, bridge))
	must(t, netlink.LinkSetUp(sw))

	var err error
	if n.h, err = netlink.NewHandleAt(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.h.Close)
	n.prog = NewProgrammer(n.h, nil)
	eth0, err := n.h.LinkByName("eth0")
	must(t, err)
	must(t, n.h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(n.ul4)}))
	if n.ul6.IsValid() {
		must(t, n.h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(n.ul6), Flags: unix.IFA_F_NODAD}))
	}
	must(t, n.h.LinkSetUp(eth0))
	gw := n.ul4.Masked().Addr().As4()
	gw[3] = 254
	must(t, n.h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw[:])}))

	dir := t.TempDir()
	w.lab.In(ns, func() {
		n.net, err = netsetup.Open(netsetup.Config{Bridge: "berth0", Subnet4: n.sub4, Subnet6: n.sub6,
			StateDir: filepath.Join(dir, "state"), NetNSDir: filepath.Join(dir, "netns")})
	})
	must(t, err)
	t.Cleanup(func() {
		n.net.Detach("ctr")
		n.net.Close()
		unix.Unmount(filepath.Join(dir, "netns"), unix.MNT_DETACH)
	})
	w.nodes = append(w.nodes, n)
	return n
}

func (w *world) entries() []Entry {
	var es []Entry
	for _, n := range w.nodes {
		es = append(es, Entry{n.sub4, n.name}, Entry{n.sub6, n.name})
	}
	return es
}

func (w *world) peers() []Peer {
	var ps []Peer
	for _, n := range w.nodes {
		p := Peer{Node: n.name, Addrs: []netip.Addr{n.ul4.Addr()}}
		if n.ul6.IsValid() {
			p.Addrs = append(p.Addrs, n.ul6.Addr())
		}
		ps = append(ps, p)
	}
	return ps
}

// plan runs Plan for n with its kernel's links.
func (w *world) plan(n *node, entries []Entry, cfg Config) Desired {
	w.t.Helper()
	links, err := n.prog.Links()
	must(w.t, err)
	d, probs := Plan(n.name, entries, w.peers(), links, cfg)
	if len(probs) > 0 {
		w.t.Fatalf("%s: problems: %s", n.name, problemStrings(probs))
	}
	return d
}

// program plans and applies on every node, then gives every node its
// container with the MTU the plan asks for.
func (w *world) program(cfg Config) map[string]Desired {
	w.t.Helper()
	out := map[string]Desired{}
	for _, n := range w.nodes {
		d := w.plan(n, w.entries(), cfg)
		out[n.name] = d
		if !n.ctrNS.IsOpen() {
			w.attach(n, d.MTU)
			n.clean = snapshot(w.t, n)
		}
		if err := n.prog.Apply(d); err != nil {
			w.t.Fatalf("%s: Apply: %v", n.name, err)
		}
	}
	return out
}

// attach gives n its container, with the plan's MTU on the bridge as the
// caller of Plan must do.
func (w *world) attach(n *node, mtu int) {
	br, err := n.h.LinkByName("berth0")
	must(w.t, err)
	must(w.t, n.h.LinkSetMTU(br, mtu))
	if n.ctr, err = n.net.Attach("ctr"); err != nil {
		w.t.Fatalf("%s: Attach: %v", n.name, err)
	}
	if n.ctrNS, err = netns.GetFromPath(n.ctr.NetNSPath); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { n.ctrNS.Close() })
	for _, a := range []netip.Addr{n.ctr.IPv4, n.ctr.IPv6} {
		w.serve(n.ctrNS, a)
	}
}

const port = 7000

// serve answers each connection with the address it came from.
func (w *world) serve(ns netns.NsHandle, a netip.Addr) {
	w.lab.ServeTCP(ns, netip.AddrPortFrom(a, port).String(), netnstest.TellPeer)
}

// ask connects from ns to a's server and returns the source address it saw.
func (w *world) ask(ns netns.NsHandle, a netip.Addr, timeout time.Duration) (string, error) {
	return w.lab.Ask(ns, "tcp", netip.AddrPortFrom(a, port).String(), timeout)
}

// mustReach checks from's container reaches to's, both families, and is
// seen with its own address.
func (w *world) mustReach(from, to *node) {
	w.t.Helper()
	for _, fam := range [][2]netip.Addr{{from.ctr.IPv4, to.ctr.IPv4}, {from.ctr.IPv6, to.ctr.IPv6}} {
		got, err := w.ask(from.ctrNS, fam[1], 3*time.Second)
		if err != nil {
			w.t.Fatalf("%s container -> %s container %s: %v", from.name, to.name, fam[1], err)
		}
		if got != fam[0].String() {
			w.t.Fatalf("%s container -> %s: server saw source %s, want %s (translated?)", from.name, to.name, got, fam[0])
		}
	}
}

// routeTo describes the kernel's route for dst in n ("dev X via Y").
func routeTo(t testing.TB, n *node, dst netip.Prefix) string {
	t.Helper()
	rs, err := n.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: ipNet(dst), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	must(t, err)
	var s []string
	for _, r := range rs {
		l, _ := n.h.LinkByIndex(r.LinkIndex)
		gw := r.Gw.String()
		if r.Via != nil {
			gw = r.Via.String()
		}
		s = append(s, fmt.Sprintf("dev %s via %s proto %d", l.Attrs().Name, gw, r.Protocol))
	}
	return strings.Join(s, "; ")
}

// snapshot is a node's routes, neighbors (permanent) and links, to
// compare before and after.
func snapshot(t testing.TB, n *node) string {
	t.Helper()
	var s []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := n.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		must(t, err)
		for _, r := range rs {
			// The kernel adds fe80::/64 to a link some time after it goes
			// up (seen landing after the "clean" snapshot); berth never
			// routes link-local destinations, so they say nothing here.
			if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() && r.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			s = append(s, fmt.Sprintf("route %s %v dev %d proto %d table %d", r.Dst, r.Gw, r.LinkIndex, r.Protocol, r.Table))
		}
	}
	ls, err := n.h.LinkList()
	must(t, err)
	for _, l := range ls {
		s = append(s, fmt.Sprintf("link %s mtu %d", l.Attrs().Name, l.Attrs().MTU))
		for _, fam := range []int{netlink.FAMILY_V4, unix.AF_BRIDGE} {
			ns, err := n.h.NeighList(l.Attrs().Index, fam)
			must(t, err)
			for _, nb := range ns {
				// Multicast entries come and go with MLD/IGMP joins.
				if nb.State == netlink.NUD_PERMANENT && len(nb.HardwareAddr) == 6 && nb.HardwareAddr[0]&1 == 0 {
					s = append(s, fmt.Sprintf("neigh %s %s dev %s", nb.IP, nb.HardwareAddr, l.Attrs().Name))
				}
			}
		}
	}
	as, err := n.h.AddrList(nil, netlink.FAMILY_V4)
	must(t, err)
	for _, a := range as {
		s = append(s, fmt.Sprintf("addr %s dev %d", a.IPNet, a.LinkIndex))
	}
	return strings.Join(s, "\n")
}

func TestKernelAutoMode(t *testing.T) {
	w := newWorld(t)
	a := w.addNode(1, "ul1", "192.168.71.1/24", "fd71::1/64")
	b := w.addNode(2, "ul1", "192.168.71.2/24", "fd71::2/64")
	c := w.addNode(3, "ul2", "192.168.72.3/24", "")
	ds := w.program(Config{})

	// a-b share ul1: direct routes in both families; c is behind the
	// router: VXLAN, and the bridge MTU drops for it.
	for dst, want := range map[netip.Prefix]string{
		b.sub4: "dev eth0 via 192.168.71.2 proto 98",
		b.sub6: "dev eth0 via fd71::2 proto 98",
		c.sub4: "dev berth.vx via 10.88.3.0 proto 98",
		c.sub6: "dev berth.vx via fe80::bf:aff:fe58:300 proto 98",
	} {
		if got := routeTo(t, a, dst); got != want {
			t.Errorf("n1 route to %s: %q, want %q", dst, got, want)
		}
	}
	if ds["n1"].MTU != 1450 || ds["n2"].MTU != 1450 || ds["n3"].MTU != 1450 {
		t.Errorf("MTUs %d %d %d, want 1450 (a VXLAN peer each)", ds["n1"].MTU, ds["n2"].MTU, ds["n3"].MTU)
	}
	w.mustReach(a, b)
	w.mustReach(b, a)
	w.mustReach(a, c)
	w.mustReach(c, b)

	// Apply is idempotent: nothing changes the second time.
	mid := snapshot(t, a)
	must(t, a.prog.Apply(ds["n1"]))
	if got := snapshot(t, a); got != mid {
		t.Fatalf("second Apply changed the kernel:\n%s\nwas:\n%s", got, mid)
	}

	t.Run("repairs half state", func(t *testing.T) {
		w := w.sub(t)
		vx, err := a.h.LinkByName("berth.vx")
		must(t, err)
		ns, _ := a.h.NeighList(vx.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range ns {
			must(t, a.h.NeighDel(&n))
		}
		fdb, _ := a.h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
		for _, n := range fdb {
			must(t, a.h.NeighDel(&n))
		}
		must(t, a.h.LinkSetMTU(vx, 1300))
		must(t, a.h.RouteDel(&netlink.Route{Dst: ipNet(b.sub4), Table: unix.RT_TABLE_MAIN}))
		if _, err := w.ask(a.ctrNS, c.ctr.IPv4, 500*time.Millisecond); err == nil {
			t.Fatal("reached n3 with its neighbor and FDB entries gone: the test proves nothing")
		}
		must(t, a.prog.Apply(ds["n1"]))
		if got := snapshot(t, a); got != mid {
			t.Fatalf("Apply did not restore the state:\n%s\nwant:\n%s", got, mid)
		}
		w.mustReach(a, c)
		w.mustReach(a, b)
	})

	t.Run("foreign route is left alone and named", func(t *testing.T) {
		w := w.sub(t)
		other := pfx("10.88.9.0/24")
		eth0, _ := a.h.LinkByName("eth0")
		foreign := &netlink.Route{Dst: ipNet(other), Gw: net.ParseIP("192.168.71.254"), LinkIndex: eth0.Attrs().Index, Protocol: unix.RTPROT_STATIC}
		must(t, a.h.RouteAdd(foreign))
		defer a.h.RouteDel(foreign)
		es := append(w.entries(), Entry{other, "n2"})
		err := a.prog.Apply(w.plan(a, es, Config{}))
		if err == nil || !strings.Contains(err.Error(), "10.88.9.0/24") || !strings.Contains(err.Error(), "did not make") {
			t.Fatalf("Apply over a foreign route: %v", err)
		}
		if got := routeTo(t, a, other); got != "dev eth0 via 192.168.71.254 proto 4" {
			t.Fatalf("foreign route changed: %s", got)
		}
		w.mustReach(a, b) // the rest was applied
		must(t, a.prog.Apply(ds["n1"]))
		if got := routeTo(t, a, other); got != "dev eth0 via 192.168.71.254 proto 4" {
			t.Fatalf("foreign route removed as stale: %s", got)
		}
	})

	t.Run("moved container's /32 overrides its subnet", func(t *testing.T) {
		w := w.sub(t)
		// Pretend b's container moved to c: n1 sends its /32 over VXLAN
		// to n3 (which, not having it, relays it to n2 by its /24), while
		// the rest of n2's subnet still goes direct.
		moved := netip.PrefixFrom(b.ctr.IPv4, 32)
		es := append(w.entries(), Entry{moved, "n3"})
		must(t, a.prog.Apply(w.plan(a, es, Config{})))
		if got := routeTo(t, a, moved); got != "dev berth.vx via 10.88.3.0 proto 98" {
			t.Fatalf("route to %s: %s", moved, got)
		}
		if got := routeTo(t, a, b.sub4); got != "dev eth0 via 192.168.71.2 proto 98" {
			t.Fatalf("route to %s: %s", b.sub4, got)
		}
		tx := func() uint64 {
			l, err := a.h.LinkByName("berth.vx")
			must(t, err)
			return l.Attrs().Statistics.TxPackets
		}
		before := tx()
		w.mustReach(a, b)
		if sent := tx() - before; sent < 3 {
			t.Fatalf("%d packets left over berth.vx for a connection to the moved /32", sent)
		}
		must(t, a.prog.Apply(ds["n1"]))
		if got := routeTo(t, a, moved); got != "" {
			t.Fatalf("route to %s left after its entry went: %s", moved, got)
		}
		w.mustReach(a, b)
	})

	t.Run("peer loses its ipv6 underlay: ipv6 goes over vxlan", func(t *testing.T) {
		w := w.sub(t)
		// The kernel refuses IPv6 routes via an IPv4 nexthop, so a peer
		// sharing only IPv4 gets its IPv6 subnet over VXLAN.
		w.nodes[1].ul6 = netip.Prefix{}
		defer func() { w.nodes[1].ul6 = pfx("fd71::2/64") }()
		da := w.plan(a, w.entries(), Config{})
		must(t, a.prog.Apply(da))
		db := w.plan(b, w.entries(), Config{})
		must(t, b.prog.Apply(db))
		if got := routeTo(t, a, b.sub6); got != "dev berth.vx via fe80::bf:aff:fe58:200 proto 98" {
			t.Fatalf("n1 route to %s: %s", b.sub6, got)
		}
		if got := routeTo(t, a, b.sub4); got != "dev eth0 via 192.168.71.2 proto 98" {
			t.Fatalf("n1 route to %s: %s", b.sub4, got)
		}
		w.mustReach(a, b)
		w.mustReach(b, a)
		must(t, a.prog.Apply(ds["n1"]))
		must(t, b.prog.Apply(ds["n2"]))
	})

	t.Run("removing an entry removes its route, neighbor and FDB entry", func(t *testing.T) {
		w := w.sub(t)
		var es []Entry
		for _, e := range w.entries() {
			if e.Node != "n3" {
				es = append(es, e)
			}
		}
		d := w.plan(a, es, Config{})
		if d.VXLAN != nil {
			t.Fatalf("no VXLAN peer left but the plan keeps the device")
		}
		must(t, a.prog.Apply(d))
		for _, p := range []netip.Prefix{c.sub4, c.sub6} {
			if got := routeTo(t, a, p); got != "" {
				t.Fatalf("route to %s left: %s", p, got)
			}
		}
		if _, err := a.h.LinkByName("berth.vx"); err == nil {
			t.Fatal("berth.vx left with no VXLAN peer")
		}
		if _, err := w.ask(a.ctrNS, c.ctr.IPv4, 500*time.Millisecond); err == nil {
			t.Fatal("n3 still reachable")
		}
		w.mustReach(a, b)
		must(t, a.prog.Apply(ds["n1"]))
		w.mustReach(a, c)
	})

	t.Run("teardown leaves nothing", func(t *testing.T) {
		must(t, a.prog.Teardown())
		must(t, a.prog.Teardown())
		if got := snapshot(t, a); got != a.clean {
			t.Fatalf("after Teardown:\n%s\nbefore the first Apply:\n%s", got, a.clean)
		}
	})
}

func TestKernelForcedVXLAN(t *testing.T) {
	w := newWorld(t)
	a := w.addNode(1, "ul1", "192.168.71.1/24", "fd71::1/64")
	b := w.addNode(2, "ul1", "192.168.71.2/24", "fd71::2/64")
	ds := w.program(Config{Mode: ModeVXLAN, VNI: 42})
	if got := routeTo(t, a, b.sub4); got != "dev berth.vx via 10.88.2.0 proto 98" {
		t.Fatalf("route to %s: %s", b.sub4, got)
	}
	if ds["n1"].MTU != 1450 {
		t.Fatalf("MTU %d", ds["n1"].MTU)
	}
	ctrEth, err := netlink.NewHandleAt(a.ctrNS)
	must(t, err)
	defer ctrEth.Close()
	if l, err := ctrEth.LinkByName("eth0"); err != nil || l.Attrs().MTU != 1450 {
		t.Fatalf("container eth0 MTU: %v %v", l, err)
	}
	w.mustReach(a, b)
	w.mustReach(b, a)

	// Changing the VNI recreates the device; both ends must agree again.
	for _, n := range w.nodes {
		must(t, n.prog.Apply(w.plan(n, w.entries(), Config{Mode: ModeVXLAN, VNI: 43})))
	}
	vx, err := a.h.LinkByName("berth.vx")
	must(t, err)
	if vx.(*netlink.Vxlan).VxlanId != 43 {
		t.Fatalf("VNI %d", vx.(*netlink.Vxlan).VxlanId)
	}
	w.mustReach(a, b)

	// A device of our name that is not ours is refused, not replaced.
	must(t, b.prog.Teardown())
	must(t, b.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "berth.vx"}}))
	err = b.prog.Apply(ds["n2"])
	if err == nil || !strings.Contains(err.Error(), "not berth's VXLAN device") {
		t.Fatalf("Apply over a foreign berth.vx: %v", err)
	}
	if l, err := b.h.LinkByName("berth.vx"); err != nil || l.Type() != "bridge" {
		t.Fatalf("foreign device touched: %v %v", l, err)
	}
	must(t, b.prog.Teardown())
	if _, err := b.h.LinkByName("berth.vx"); err != nil {
		t.Fatal("Teardown deleted a device berth did not make")
	}
}

// BenchmarkThroughput compares TCP throughput container to container
// across two node namespaces with the underlay node to node, in the same
// run, for direct routes and forced VXLAN. Each iteration moves 16 MiB on
// each path; "ratio" is container/underlay.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []string{ModeAuto, ModeVXLAN} {
		name := map[string]string{ModeAuto: "direct", ModeVXLAN: "vxlan"}[mode]
		b.Run(name, func(b *testing.B) {
			w := newWorld(b)
			n1 := w.addNode(1, "ul1", "192.168.71.1/24", "fd71::1/64")
			n2 := w.addNode(2, "ul1", "192.168.71.2/24", "fd71::2/64")
			w.program(Config{Mode: mode})
			ctrSink := w.sink(n2.ctrNS, n2.ctr.IPv4)
			ulSink := w.sink(n2.ns, n2.ul4.Addr())
			const size = 16 << 20
			var ctrTime, ulTime time.Duration
			b.SetBytes(2 * size)
			b.ResetTimer()
			for b.Loop() {
				ctrTime += w.send(n1.ctrNS, ctrSink, size)
				ulTime += w.send(n1.ns, ulSink, size)
			}
			ctr := float64(b.N) * size / ctrTime.Seconds() / 1e6
			ul := float64(b.N) * size / ulTime.Seconds() / 1e6
			b.ReportMetric(ctr, "ctr-MB/s")
			b.ReportMetric(ul, "underlay-MB/s")
			b.ReportMetric(ctr/ul, "ratio")
		})
	}
}

// sink accepts connections in ns and discards what they send.
func (w *world) sink(ns netns.NsHandle, a netip.Addr) netip.AddrPort {
	return w.lab.ServeTCP(ns, netip.AddrPortFrom(a, 0).String(), func(c net.Conn) { io.Copy(io.Discard, c) })
}

// send connects from ns to dst and writes n bytes, timing connect to close.
func (w *world) send(ns netns.NsHandle, dst netip.AddrPort, n int64) time.Duration {
	buf := make([]byte, 256<<10)
	start := time.Now()
	c, err := w.lab.Dial(ns, "tcp", dst.String(), 3*time.Second)
	must(w.t, err)
	defer c.Close()
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := c.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			w.t.Fatal(err)
		}
	}
	// Half-close and wait for the sink's close, so the time covers delivery.
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	return time.Since(start)
}
