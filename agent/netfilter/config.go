// Package netfilter keeps the node's nftables rules: outbound NAT for the
// container ranges, published ports (DNAT in the kernel) and the separation
// of tenants on the wire.
//
// The package is split like a controller: Validate and Rules are pure
// (Config in, berth's own Ruleset model out), and Apply/Remove are the thin
// I/O that turn a Ruleset into one nftables transaction through
// github.com/google/nftables. berth owns the tables "inet berth" and
// "bridge berth" and never touches any other table.
//
// Decisions worth knowing:
//   - Every DNAT'ed flow to a published port is accepted before the tenant
//     rules, so a container of another tenant may reach a published port
//     through a node address, like any outside client.
//   - Sources outside the container ranges (outside hosts, other nodes'
//     own processes) are not restricted by tenant rules; only container
//     sources are.
//   - A container address inside the ranges that is not in Config.Containers
//     (not yet known, or stale) can reach no container: fail closed.
package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// Config is everything the node's rules depend on.
type Config struct {
	// ClusterV4 and ClusterV6 are the cluster's container ranges (all nodes'
	// subnets). ClusterV6 may be invalid when the cluster has no IPv6.
	ClusterV4, ClusterV6 netip.Prefix
	// LocalV4 and LocalV6 are this node's bridge subnets; they are inside the
	// cluster ranges, or apart from them for an explicitly configured subnet.
	// LocalV6 may be invalid when the node has no IPv6.
	LocalV4, LocalV6 netip.Prefix
	// Bridge is the node's container bridge, e.g. "berth0".
	Bridge string
	// Ports are the ports published on this node.
	Ports []Port
	// Containers are all running containers of the cluster, not only the
	// local ones: routed traffic from other nodes is checked too.
	Containers []Container
}

// Port publishes ContainerPort of the local container at Addr on HostPort of
// the node's addresses.
type Port struct {
	Proto         string     // "tcp" or "udp"
	HostIP        netip.Addr // invalid: every address of the node (of Addr's family)
	HostPort      uint16
	Addr          netip.Addr // the container's address, in LocalV4 or LocalV6
	ContainerPort uint16
	Owner         string // who published it (a container or workload id); kept as a rule comment
}

// Container is one container address and the tenant it belongs to. A
// container with IPv4 and IPv6 addresses appears twice.
type Container struct {
	Addr   netip.Addr
	Tenant string
}

var bridgePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

// Validate reports every problem of c, one line each, naming the remedy.
// It is pure: nothing is read from or written to the kernel.
func Validate(c Config) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	checkPrefix := func(name string, p netip.Prefix, v6, optional bool) bool {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		switch {
		case !p.IsValid():
			if !optional {
				bad("netfilter: %s is missing: set it to the %s prefix (e.g. from the subnet lease)", name, fam)
			}
			return false
		case p.Addr().Is6() != v6 || p.Addr().Is4In6():
			bad("netfilter: %s %s is not an %s prefix: use the %s range there", name, p, fam, fam)
			return false
		case p.Masked() != p:
			bad("netfilter: %s %s has host bits set: write it as %s", name, p, p.Masked())
			return false
		}
		return true
	}
	ok4 := checkPrefix("ClusterV4", c.ClusterV4, false, false)
	okL4 := checkPrefix("LocalV4", c.LocalV4, false, false)
	ok6 := checkPrefix("ClusterV6", c.ClusterV6, true, true)
	okL6 := checkPrefix("LocalV6", c.LocalV6, true, true)
	checkNesting := func(local, cluster netip.Prefix, lname string) {
		// A local subnet is either one of the cluster's or apart from it;
		// a partial overlap would make "inside the ranges" ambiguous.
		if local.Overlaps(cluster) && !within(local, cluster) {
			bad("netfilter: %s %s straddles the cluster range %s: use a subnet leased from it or one apart from it", lname, local, cluster)
		}
	}
	if ok4 && okL4 {
		checkNesting(c.LocalV4, c.ClusterV4, "LocalV4")
	}
	if okL6 && !ok6 && !c.ClusterV6.IsValid() {
		bad("netfilter: LocalV6 %s is set but ClusterV6 is not: set ClusterV6 to the cluster's IPv6 range or leave LocalV6 empty", c.LocalV6)
	}
	if ok6 && okL6 {
		checkNesting(c.LocalV6, c.ClusterV6, "LocalV6")
	}
	if !bridgePattern.MatchString(c.Bridge) {
		bad("netfilter: bridge name %q is not an interface name: use 1-15 characters of A-Za-z0-9_.- (e.g. berth0)", c.Bridge)
	}

	for i, p := range c.Ports {
		where := fmt.Sprintf("netfilter: port %d (%s %s:%d -> %s:%d, owner %q)", i, p.Proto, hostIPString(p.HostIP), p.HostPort, p.Addr, p.ContainerPort, p.Owner)
		if p.Proto != "tcp" && p.Proto != "udp" {
			bad("%s: protocol %q is not supported: use \"tcp\" or \"udp\"", where, p.Proto)
		}
		if p.HostPort == 0 || p.ContainerPort == 0 {
			bad("%s: port 0 cannot be published: give host and container ports from 1 to 65535", where)
		}
		if !p.Addr.IsValid() || p.Addr.Is4In6() {
			bad("%s: container address is missing or IPv4-mapped: give the container's own IPv4 or IPv6 address", where)
			continue
		}
		local := c.LocalV4
		if p.Addr.Is6() {
			local = c.LocalV6
		}
		if !local.IsValid() || !local.Contains(p.Addr) {
			bad("%s: %s is not in this node's container subnet %s: publish only ports of containers on this node", where, p.Addr, prefixString(local))
		}
		if p.HostIP.IsValid() && (p.HostIP.Is6() != p.Addr.Is6() || p.HostIP.Is4In6()) {
			bad("%s: host address %s and container address %s are of different families: the kernel cannot NAT between IPv4 and IPv6; publish one port per family", where, p.HostIP, p.Addr)
		}
	}
	// A port published twice: same protocol and host port in the same
	// family, and host addresses that overlap (equal, or one is "all").
	for i, a := range c.Ports {
		for j := i + 1; j < len(c.Ports); j++ {
			b := c.Ports[j]
			if a.Proto != b.Proto || a.HostPort != b.HostPort || a.Addr.Is6() != b.Addr.Is6() {
				continue
			}
			if a.HostIP.IsValid() && b.HostIP.IsValid() && a.HostIP != b.HostIP {
				continue
			}
			bad("netfilter: %s port %d on %s is published twice (owners %q and %q): unpublish one or bind them to different host addresses",
				a.Proto, a.HostPort, hostIPString(overlapIP(a.HostIP, b.HostIP)), a.Owner, b.Owner)
		}
	}

	tenantOf := map[netip.Addr]string{}
	for _, ct := range c.Containers {
		if ct.Tenant == "" {
			bad("netfilter: container %s has no tenant: give every container its tenant (\"default\" for untenanted workloads)", ct.Addr)
			continue
		}
		if !ct.Addr.IsValid() || ct.Addr.Is4In6() {
			bad("netfilter: a container of tenant %q has a missing or IPv4-mapped address: give its own IPv4 or IPv6 address", ct.Tenant)
			continue
		}
		if !inRanges(c, ct.Addr) {
			bad("netfilter: container %s of tenant %q is outside the container ranges (%s): its address must come from the cluster or node subnets", ct.Addr, ct.Tenant, strings.Join(rangeStrings(c), ", "))
			continue
		}
		if t, dup := tenantOf[ct.Addr]; dup && t != ct.Tenant {
			bad("netfilter: address %s belongs to tenants %q and %q: one address has one owner; drop the stale container", ct.Addr, t, ct.Tenant)
			continue
		}
		tenantOf[ct.Addr] = ct.Tenant
	}
	return errors.Join(errs...)
}

func overlapIP(a, b netip.Addr) netip.Addr {
	if a.IsValid() {
		return a
	}
	return b
}

func hostIPString(a netip.Addr) string {
	if !a.IsValid() {
		return "all node addresses"
	}
	return a.String()
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return "(none: IPv6 is off)"
	}
	return p.String()
}

// ranges returns the container ranges of one family: the cluster range and
// the local subnet when it lies apart from it.
func ranges(c Config, v6 bool) []netip.Prefix {
	cl, lo := c.ClusterV4, c.LocalV4
	if v6 {
		cl, lo = c.ClusterV6, c.LocalV6
	}
	var out []netip.Prefix
	if cl.IsValid() {
		out = append(out, cl)
	}
	if lo.IsValid() && !(cl.IsValid() && within(lo, cl)) {
		out = append(out, lo)
	}
	return out
}

// within reports whether p lies entirely inside outer.
func within(p, outer netip.Prefix) bool {
	return p.Bits() >= outer.Bits() && outer.Contains(p.Addr())
}

func inRanges(c Config, a netip.Addr) bool {
	for _, p := range ranges(c, a.Is6()) {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func rangeStrings(c Config) []string {
	var s []string
	for _, p := range append(ranges(c, false), ranges(c, true)...) {
		s = append(s, p.String())
	}
	return s
}

// tenants maps each tenant to its sorted, de-duplicated addresses.
func tenants(c Config) (names []string, addrs map[string][]netip.Addr) {
	addrs = map[string][]netip.Addr{}
	seen := map[netip.Addr]bool{}
	for _, ct := range c.Containers {
		if seen[ct.Addr] {
			continue
		}
		seen[ct.Addr] = true
		if _, ok := addrs[ct.Tenant]; !ok {
			names = append(names, ct.Tenant)
		}
		addrs[ct.Tenant] = append(addrs[ct.Tenant], ct.Addr)
	}
	sort.Strings(names)
	for _, n := range names {
		a := addrs[n]
		sort.Slice(a, func(i, j int) bool { return a[i].Less(a[j]) })
	}
	return names, addrs
}
