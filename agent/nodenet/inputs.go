package nodenet

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/netfilter"
	"github.com/berth-os/berth/agent/netroute"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/agent/workload"
)

// routeInputs turns the leases and node documents into netroute's inputs:
// one entry per leased subnet, one peer per node document.
func routeInputs(s snapshot) ([]netroute.Entry, []netroute.Peer) {
	entries := make([]netroute.Entry, 0, len(s.Leases))
	for _, l := range s.Leases {
		entries = append(entries, netroute.Entry{Prefix: l.Subnet, Node: l.Node})
	}
	slices.SortFunc(entries, func(a, b netroute.Entry) int { return strings.Compare(a.Prefix.String(), b.Prefix.String()) })
	peers := make([]netroute.Peer, 0, len(s.Nodes))
	for n, addrs := range s.Nodes {
		peers = append(peers, netroute.Peer{Node: n, Addrs: slices.Clone(addrs)})
	}
	slices.SortFunc(peers, func(a, b netroute.Peer) int { return strings.Compare(a.Node, b.Node) })
	return entries, peers
}

// filterConfig is the node's nftables input: the cluster ranges and this
// node's subnets, the ports its containers publish, and every container
// address of the cluster with its tenant.
//
// This node's own containers come from the workload manager (known the
// moment they are attached, before any status is written); other nodes'
// from their status documents. When two documents claim one address (a
// stale status of a removed container, an address reused), a running
// replica wins over others, then the newest document.
func filterConfig(s snapshot, local []workload.Endpoint, a subnet.Assigned, bridge string, bind netip.Addr) netfilter.Config {
	c := netfilter.Config{
		ClusterV4: a.Ranges.IPv4, ClusterV6: a.Ranges.IPv6,
		LocalV4: a.IPv4, LocalV6: a.IPv6, Bridge: bridge,
	}
	if !c.LocalV6.IsValid() {
		c.ClusterV6 = netip.Prefix{} // containers here have no IPv6
	}
	if bind.IsUnspecified() {
		bind = netip.Addr{}
	}
	owner := map[netip.Addr]string{}
	for _, ep := range local {
		for _, addr := range []netip.Addr{ep.IPv4, ep.IPv6} {
			if addr.IsValid() {
				owner[addr] = ep.Tenant
			}
		}
		for _, p := range ep.Ports {
			for _, addr := range []netip.Addr{ep.IPv4, ep.IPv6} {
				if !addr.IsValid() || (bind.IsValid() && bind.Is6() != addr.Is6()) {
					continue
				}
				c.Ports = append(c.Ports, netfilter.Port{
					Proto: cmp.Or(p.Protocol, "tcp"), HostIP: bind, HostPort: uint16(p.Host),
					Addr: addr, ContainerPort: uint16(p.Container), Owner: ep.ContainerID,
				})
			}
		}
	}
	statuses := slices.Clone(s.Statuses)
	// Best claim last, so it overwrites: running after not running, then
	// older before newer.
	slices.SortFunc(statuses, func(x, y jobs.ReplicaStatus) int {
		if r := cmp.Compare(rank(x), rank(y)); r != 0 {
			return r
		}
		return x.Updated.Compare(y.Updated)
	})
	remote := map[netip.Addr]string{}
	for _, st := range statuses {
		for _, str := range []string{st.IPv4, st.IPv6} {
			addr, err := netip.ParseAddr(str)
			if err != nil {
				continue
			}
			if (c.LocalV4.IsValid() && c.LocalV4.Contains(addr)) || (c.LocalV6.IsValid() && c.LocalV6.Contains(addr)) {
				continue // this node's own: the workload manager knows better
			}
			remote[addr] = st.Tenant
		}
	}
	for addr, t := range remote {
		owner[addr] = t
	}
	for addr, t := range owner {
		c.Containers = append(c.Containers, netfilter.Container{Addr: addr, Tenant: t})
	}
	slices.SortFunc(c.Containers, func(x, y netfilter.Container) int { return x.Addr.Compare(y.Addr) })
	slices.SortFunc(c.Ports, func(x, y netfilter.Port) int {
		return cmp.Or(cmp.Compare(x.HostPort, y.HostPort), strings.Compare(x.Proto, y.Proto), x.Addr.Compare(y.Addr))
	})
	return c
}

func rank(st jobs.ReplicaStatus) int {
	if st.State == jobs.StateRunning {
		return 1
	}
	return 0
}
