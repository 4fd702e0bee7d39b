package cluster

import (
	"net"
	"net/netip"
	"slices"
)

// linkAddrs is one network interface's addresses.
type linkAddrs struct {
	Name  string
	Addrs []netip.Prefix
}

// nodeAddresses is the address list of the node document: the advertise
// address first, then the other global unicast addresses (IPv4 and IPv6,
// ULAs included) of the interface that carries it. Peers route this
// node's container subnets to these addresses: with the node's IPv6
// address listed, an IPv6 subnet goes straight over a shared link instead
// of through VXLAN (and the containers keep the link's MTU). An advertise
// address found on no interface is listed alone.
func nodeAddresses(advertise string, links []linkAddrs) []string {
	adv, err := netip.ParseAddr(advertise)
	if err != nil {
		return []string{advertise} // a host name: nothing to add
	}
	adv = adv.Unmap()
	out := []string{adv.String()}
	for _, l := range links {
		if !slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr().Unmap() == adv }) {
			continue
		}
		for _, p := range l.Addrs {
			a := p.Addr().Unmap()
			if a != adv && a.IsGlobalUnicast() && !slices.Contains(out, a.String()) {
				out = append(out, a.String())
			}
		}
		break
	}
	return out
}

// hostLinks reads the host's interfaces and their addresses; an error
// gives none (the document then lists the advertise address alone).
func hostLinks() []linkAddrs {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []linkAddrs
	for _, ifc := range ifaces {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		l := linkAddrs{Name: ifc.Name}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if addr, ok := netip.AddrFromSlice(ipn.IP); ok {
					ones, _ := ipn.Mask.Size()
					l.Addrs = append(l.Addrs, netip.PrefixFrom(addr.Unmap(), ones))
				}
			}
		}
		out = append(out, l)
	}
	return out
}
