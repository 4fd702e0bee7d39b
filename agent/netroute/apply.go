package netroute

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol marks the routes berth makes (rtm_protocol, `ip route ...
// proto 98`; 0x62 is 'b'). The kernel and routing daemons use other
// numbers (see /etc/iproute2/rt_protos), so Apply and Teardown find
// berth's routes by it and never touch another route.
const Protocol netlink.RouteProtocol = 0x62

// ownerAlias labels berth's VXLAN device (IFLA_IFALIAS, set at creation),
// so a foreign device of the same name is never changed or deleted.
const ownerAlias = "berth:netroute"

// Programmer makes a network namespace's kernel state match a Desired.
// It keeps no state of its own: everything is read back from the kernel,
// so a restarted agent picks up where the last one stopped.
type Programmer struct {
	h   *netlink.Handle
	log *slog.Logger
}

// NewProgrammer works through h (a handle bound to a namespace); nil means
// the network namespace of the calling thread at each call.
func NewProgrammer(h *netlink.Handle, log *slog.Logger) *Programmer {
	if h == nil {
		h = &netlink.Handle{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Programmer{h: h, log: log}
}

// LinksFromKernel reads the calling thread's namespace's links that are
// up, with their addresses, for Plan.
func LinksFromKernel() ([]Link, error) {
	return NewProgrammer(nil, nil).Links()
}

// Links reads the programmer's namespace's links that are up (loopback
// left out) with their addresses.
func (p *Programmer) Links() ([]Link, error) {
	links, err := retryDump(func() ([]netlink.Link, error) { return p.h.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return p.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Flags&net.FlagUp == 0 {
			continue
		}
		lk := Link{Name: a.Name, Index: a.Index, MTU: a.MTU}
		for _, ad := range addrs {
			if ad.LinkIndex != a.Index || ad.IPNet == nil {
				continue
			}
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			bits, _ := ad.Mask.Size()
			lk.Prefixes = append(lk.Prefixes, netip.PrefixFrom(ip.Unmap(), bits))
		}
		out = append(out, lk)
	}
	return out, nil
}

// retryDump repeats a netlink dump the kernel interrupted (the table
// changed while it was read), since its partial answer would make stale
// objects look missing.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var v []T
		if v, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return nil, err
}

// Apply adds or replaces what d wants and removes what berth made earlier
// that d no longer wants. It goes on past a failing object and returns
// every failure, so one bad peer does not cut the others off; calling it
// again repairs whatever a failure (or a crash) left.
func (p *Programmer) Apply(d Desired) error {
	var errs []error
	vxIndex := 0
	keep := ""
	if d.VXLAN != nil {
		keep = d.VXLAN.Name
	}
	if err := p.removeDevices(keep); err != nil {
		errs = append(errs, err)
	}
	if d.VXLAN != nil {
		idx, err := p.ensureDevice(*d.VXLAN)
		if err != nil {
			errs = append(errs, err)
		} else {
			vxIndex = idx
			errs = append(errs, p.syncDevice(idx, d)...)
		}
	}
	errs = append(errs, p.syncRoutes(d, vxIndex)...)
	return errors.Join(errs...)
}

// Teardown removes every route berth made and its VXLAN device (with the
// device go its addresses, neighbors and FDB entries).
func (p *Programmer) Teardown() error {
	var errs []error
	routes, err := p.ownRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		if err := p.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	if err := p.removeDevices(""); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeDevices deletes berth's VXLAN devices other than keep (a renamed
// device, or all with keep "").
func (p *Programmer) removeDevices(keep string) error {
	links, err := retryDump(func() ([]netlink.Link, error) { return p.h.LinkList() })
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if a.Alias != ownerAlias || a.Name == keep || l.Type() != "vxlan" {
			continue
		}
		if err := p.h.LinkDel(l); err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete VXLAN device %s: %w", a.Name, err))
				continue
			}
		}
		p.log.Info("removed VXLAN device", "device", a.Name)
	}
	return errors.Join(errs...)
}

// ensureDevice makes berth's VXLAN device match v and returns its index.
// VNI, port, source and underlay cannot change on a live device, so a
// mismatch recreates it (its routes are re-added right after).
func (p *Programmer) ensureDevice(v VXLAN) (int, error) {
	parent, err := p.h.LinkByName(v.Parent)
	if err != nil {
		return 0, fmt.Errorf("VXLAN underlay link %s: %w (is it up and does it hold %s?)", v.Parent, err, v.Local)
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: v.Name, MTU: v.MTU, HardwareAddr: v.MAC},
		VxlanId:      int(v.VNI),
		VtepDevIndex: parent.Attrs().Index,
		SrcAddr:      net.IP(v.Local.AsSlice()),
		Port:         int(v.Port),
		Learning:     false, // peers are programmed, never learned from traffic
	}
	link, err := p.h.LinkByName(v.Name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		link = nil
	case err != nil:
		return 0, fmt.Errorf("find VXLAN device %s: %w", v.Name, err)
	case link.Attrs().Alias == "" && sameVXLAN(link, want):
		// The kernel ignores an alias given at creation, so it is set
		// right after: an unlabelled device of our name with exactly our
		// settings is the one a crash left between the two steps.
		if err := p.h.LinkSetAlias(link, ownerAlias); err != nil {
			return 0, fmt.Errorf("label VXLAN device %s: %w", v.Name, err)
		}
	case link.Attrs().Alias != ownerAlias || link.Type() != "vxlan":
		return 0, fmt.Errorf("interface %s exists but is not berth's VXLAN device (type %s, alias %q): delete it or configure another device name", v.Name, link.Type(), link.Attrs().Alias)
	default:
		if !sameVXLAN(link, want) {
			p.log.Info("recreating VXLAN device with new settings", "device", v.Name,
				"vni", v.VNI, "port", v.Port, "local", v.Local, "underlay", v.Parent)
			if err := p.h.LinkDel(link); err != nil {
				return 0, fmt.Errorf("delete outdated VXLAN device %s: %w", v.Name, err)
			}
			link = nil
		}
	}
	if link == nil {
		if err := p.h.LinkAdd(want); err != nil {
			hint := ""
			if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EEXIST) {
				hint = fmt.Sprintf(" (another VXLAN device uses VNI %d on UDP port %d: choose another VNI or port)", v.VNI, v.Port)
			}
			return 0, fmt.Errorf("create VXLAN device %s (VNI %d, port %d, local %s): %w%s", v.Name, v.VNI, v.Port, v.Local, err, hint)
		}
		p.log.Info("created VXLAN device", "device", v.Name, "vni", v.VNI, "port", v.Port, "local", v.Local, "mtu", v.MTU)
		if link, err = p.h.LinkByName(v.Name); err != nil {
			return 0, fmt.Errorf("find new VXLAN device %s: %w", v.Name, err)
		}
		if err := p.h.LinkSetAlias(link, ownerAlias); err != nil {
			return 0, fmt.Errorf("label VXLAN device %s: %w (the next Apply labels it)", v.Name, err)
		}
	}
	if v.MTU > 0 && link.Attrs().MTU != v.MTU {
		if err := p.h.LinkSetMTU(link, v.MTU); err != nil {
			return 0, fmt.Errorf("set MTU %d on %s: %w", v.MTU, v.Name, err)
		}
	}
	if v.MAC != nil && link.Attrs().HardwareAddr.String() != v.MAC.String() {
		if err := p.h.LinkSetHardwareAddr(link, v.MAC); err != nil {
			return 0, fmt.Errorf("set MAC %s on %s: %w", v.MAC, v.Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := p.h.LinkSetUp(link); err != nil {
			return 0, fmt.Errorf("bring up %s: %w", v.Name, err)
		}
	}
	return link.Attrs().Index, nil
}

// syncDevice sets the device's VTEP addresses, FDB and neighbor entries.
// Everything on the device is berth's, so whatever d does not list goes.
func (p *Programmer) syncDevice(idx int, d Desired) []error {
	var errs []error
	link := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: d.VXLAN.Name}}
	dev := d.VXLAN.Name

	addrs, err := retryDump(func() ([]netlink.Addr, error) { return p.h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list addresses of %s: %w", dev, err))
	}
	for _, a := range addrs {
		pf, ok := addrPrefix(a)
		if ok && !slices.Contains(d.VXLAN.Addrs, pf) {
			if err := p.h.AddrDel(link, &a); err != nil {
				errs = append(errs, fmt.Errorf("delete address %s from %s: %w", pf, dev, err))
			}
		}
	}
	for _, pf := range d.VXLAN.Addrs {
		if slices.ContainsFunc(addrs, func(a netlink.Addr) bool { q, ok := addrPrefix(a); return ok && q == pf }) {
			continue
		}
		if err := p.h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(pf)}); err != nil {
			errs = append(errs, fmt.Errorf("address %s on %s: %w", pf, dev, err))
		}
	}

	// FDB: one remote per peer MAC; NeighSet replaces a changed one.
	fdb, err := retryDump(func() ([]netlink.Neigh, error) { return p.h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list FDB of %s: %w", dev, err))
	}
	for _, f := range d.FDB {
		if slices.ContainsFunc(fdb, func(n netlink.Neigh) bool {
			return n.HardwareAddr.String() == f.MAC.String() && ipEqual(n.IP, f.Dst)
		}) {
			continue
		}
		n := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, IP: net.IP(f.Dst.AsSlice()), HardwareAddr: f.MAC}
		if err := p.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("FDB %s dst %s on %s: %w", f.MAC, f.Dst, dev, err))
		} else {
			p.log.Info("FDB entry set", "mac", f.MAC.String(), "dst", f.Dst, "device", dev)
		}
	}
	for _, n := range fdb {
		if slices.ContainsFunc(d.FDB, func(f FDB) bool { return f.MAC.String() == n.HardwareAddr.String() }) {
			continue
		}
		if err := p.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete FDB %s on %s: %w", n.HardwareAddr, dev, err))
		} else {
			p.log.Info("FDB entry removed", "mac", n.HardwareAddr.String(), "dst", n.IP, "device", dev)
		}
	}

	// Neighbors: the peers' VTEP nexthops, permanent, so no ARP or ND
	// ever crosses the overlay.
	var neighs []netlink.Neigh
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return p.h.NeighList(idx, fam) })
		if err != nil {
			errs = append(errs, fmt.Errorf("list neighbors of %s: %w", dev, err))
		}
		neighs = append(neighs, ns...)
	}
	for _, w := range d.Neighbors {
		if slices.ContainsFunc(neighs, func(n netlink.Neigh) bool {
			return ipEqual(n.IP, w.IP) && n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == w.MAC.String()
		}) {
			continue
		}
		fam := netlink.FAMILY_V4
		if w.IP.Is6() {
			fam = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: net.IP(w.IP.AsSlice()), HardwareAddr: w.MAC}
		if err := p.h.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("neighbor %s lladdr %s on %s: %w", w.IP, w.MAC, dev, err))
		}
	}
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP)
		if n.State != netlink.NUD_PERMANENT || slices.ContainsFunc(d.Neighbors, func(w Neighbor) bool { return w.IP == ip.Unmap() }) {
			continue
		}
		if err := p.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbor %s on %s: %w", n.IP, dev, err))
		}
	}
	return errs
}

// ownRoutes lists berth's routes in the main table, both families.
func (p *Programmer) ownRoutes() ([]netlink.Route, error) {
	all, err := p.mainRoutes()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(r netlink.Route) bool { return r.Protocol != Protocol }), nil
}

func (p *Programmer) mainRoutes() ([]netlink.Route, error) {
	var out []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := retryDump(func() ([]netlink.Route, error) {
			return p.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

func (p *Programmer) syncRoutes(d Desired, vxIndex int) []error {
	have, err := p.mainRoutes()
	if err != nil {
		return []error{err}
	}
	var errs []error
	index := map[string]int{}
	if d.VXLAN != nil {
		index[d.VXLAN.Name] = vxIndex // 0: its failure is reported already
	}
	wanted := map[netip.Prefix]bool{}
	for _, r := range d.Routes {
		wanted[r.Dst] = true
		idx, ok := index[r.Dev]
		if !ok {
			l, err := p.h.LinkByName(r.Dev)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %s: link %s: %w", r, r.Dev, err))
			} else {
				idx = l.Attrs().Index
			}
			index[r.Dev] = idx
		}
		if idx == 0 {
			continue
		}
		nr := toKernel(r, idx)
		same, foreign := false, ""
		for _, h := range have {
			if routeDst(h) != r.Dst {
				continue
			}
			if h.Protocol != Protocol {
				foreign = fmt.Sprintf("proto %s, dev index %d", h.Protocol, h.LinkIndex)
				continue
			}
			same = same || sameNexthop(h, nr)
		}
		switch {
		case foreign != "":
			errs = append(errs, fmt.Errorf("route %s: a route to %s that berth did not make exists (%s): delete it, since it shadows the cluster route", r, r.Dst, foreign))
		case same:
		default:
			if err := p.h.RouteReplace(nr); err != nil {
				errs = append(errs, fmt.Errorf("route %s: %w", r, err))
				continue
			}
			p.log.Info("route set", "route", r.String())
		}
	}
	for _, h := range have {
		dst := routeDst(h)
		if h.Protocol != Protocol || wanted[dst] {
			continue
		}
		if err := p.h.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete stale route to %s: %w", dst, err))
			continue
		}
		p.log.Info("route removed", "dst", dst)
	}
	return errs
}

// sameVXLAN compares what cannot change on a live VXLAN device.
func sameVXLAN(l netlink.Link, want *netlink.Vxlan) bool {
	have, ok := l.(*netlink.Vxlan)
	return ok && have.VxlanId == want.VxlanId && have.Port == want.Port && have.SrcAddr.Equal(want.SrcAddr) &&
		have.VtepDevIndex == want.VtepDevIndex && !have.Learning
}

func toKernel(r Route, idx int) *netlink.Route {
	nr := &netlink.Route{LinkIndex: idx, Dst: ipNet(r.Dst), Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
	gw := net.IP(r.Gw.AsSlice())
	if r.Gw.Is4() == r.Dst.Addr().Is4() {
		nr.Gw = gw
	} else {
		nr.Via = &netlink.Via{AddrFamily: netlink.FAMILY_V6, Addr: gw}
	}
	if r.Onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func sameNexthop(h netlink.Route, w *netlink.Route) bool {
	if h.LinkIndex != w.LinkIndex || h.Flags&int(netlink.FLAG_ONLINK) != w.Flags&int(netlink.FLAG_ONLINK) {
		return false
	}
	if w.Via != nil {
		return h.Via != nil && h.Via.Equal(w.Via)
	}
	return h.Gw.Equal(w.Gw)
}

func routeDst(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}
	}
	bits, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

func addrPrefix(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	bits, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), bits), ok
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipEqual(ip net.IP, a netip.Addr) bool {
	b, ok := netip.AddrFromSlice(ip)
	return ok && b.Unmap() == a
}
