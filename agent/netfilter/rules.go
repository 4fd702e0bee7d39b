package netfilter

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// TableName is the name of berth's tables in both families.
const TableName = "berth"

// Chain and map names shared by the generator, Apply and the tests.
const (
	chainPorts       = "ports"        // DNAT of published ports
	chainOutbound    = "outbound"     // masquerade unless the destination is a container
	chainPublished   = "published"    // accepts DNAT'ed flows to published ports
	chainToContainer = "to_container" // tenant check for traffic to container addresses
	chainInfo        = "info"         // holds the fingerprint comment
	mapTenant4       = "tenant4"      // container IPv4 address : jump <tenant chain>
	mapTenant6       = "tenant6"
)

// Rules validates c and builds the node's ruleset. The result depends on c
// only (sorted, no maps iterated unsorted), so equal configs give equal
// rulesets and Apply can tell that nothing changed.
func Rules(c Config) (Ruleset, error) {
	if err := Validate(c); err != nil {
		return Ruleset{}, err
	}
	fams := []bool{false}
	if c.ClusterV6.IsValid() || c.LocalV6.IsValid() {
		fams = append(fams, true)
	}
	inet := Table{Family: FamilyInet, Name: TableName}
	bridge := Table{Family: FamilyBridge, Name: TableName}

	names, addrs := tenants(c)
	sets, tenantChains := tenantSets(names, addrs, fams)
	inet.Sets, bridge.Sets = sets, sets

	// NAT: published ports, from outside (prerouting) and from the node (output).
	var ports []Rule
	for _, p := range c.Ports {
		ports = append(ports, portRule(p, []Stmt{DNAT{To: netip.AddrPortFrom(p.Addr, p.ContainerPort)}}))
	}
	pre := Chain{Name: "prerouting", Type: "nat", Hook: "prerouting", Priority: -100, Rules: []Rule{
		{Stmts: []Stmt{FibDaddrLocal{}, Verdict{"jump", chainPorts}}},
	}}
	out := Chain{Name: "output", Type: "nat", Hook: "output", Priority: -100}
	// Loopback clients are left alone: a DNAT'ed 127.0.0.1 source cannot
	// leave through the bridge (it would need route_localnet and SNAT).
	out.Rules = append(out.Rules, Rule{Stmts: []Stmt{NFProto{false}, AddrPrefix{Dst, netip.MustParsePrefix("127.0.0.0/8")}, Verdict{Kind: "return"}}})
	if len(fams) == 2 {
		out.Rules = append(out.Rules, Rule{Stmts: []Stmt{NFProto{true}, AddrPrefix{Dst, netip.MustParsePrefix("::1/128")}, Verdict{Kind: "return"}}})
	}
	out.Rules = append(out.Rules, Rule{Stmts: []Stmt{FibDaddrLocal{}, Verdict{"jump", chainPorts}}})

	// NAT: hairpin and outbound masquerade.
	post := Chain{Name: "postrouting", Type: "nat", Hook: "postrouting", Priority: 100}
	outbound := Chain{Name: chainOutbound}
	for _, v6 := range fams {
		local := c.LocalV4
		if v6 {
			local = c.LocalV6
		}
		if local.IsValid() {
			// A local container reaching a published port of its own node is
			// DNAT'ed to a neighbour on the bridge, which would answer it
			// directly; masquerading makes the reply return through the node.
			post.Rules = append(post.Rules, Rule{Stmts: []Stmt{NFProto{v6}, OIFName{c.Bridge}, CtDNAT{}, AddrPrefix{Src, local}, AddrPrefix{Dst, local}, Masquerade{}}, Comment: "hairpin"})
		}
		for _, r := range ranges(c, v6) {
			post.Rules = append(post.Rules, Rule{Stmts: []Stmt{NFProto{v6}, AddrPrefix{Src, r}, Verdict{"jump", chainOutbound}}})
			outbound.Rules = append(outbound.Rules, Rule{Stmts: []Stmt{NFProto{v6}, AddrPrefix{Dst, r}, Verdict{Kind: "return"}}})
		}
	}
	outbound.Rules = append(outbound.Rules, Rule{Stmts: []Stmt{Masquerade{}}})

	// Filter: published ports pass, then the tenant check for every packet
	// addressed to a container.
	var published []Rule
	for _, p := range c.Ports {
		published = append(published, Rule{
			Stmts:   []Stmt{NFProto{p.Addr.Is6()}, AddrPrefix{Dst, netip.PrefixFrom(p.Addr, p.Addr.BitLen())}, L4Port{p.Proto, p.ContainerPort}, Verdict{Kind: "accept"}},
			Comment: commentSafe(p.Owner),
		})
	}
	fwd := Chain{Name: "forward", Type: "filter", Hook: "forward", Priority: 0, Rules: []Rule{
		{Stmts: []Stmt{CtEstablished{}, Verdict{Kind: "accept"}}},
		{Stmts: []Stmt{CtDNAT{}, Verdict{"jump", chainPublished}}},
	}}
	fwd.Rules = append(fwd.Rules, toContainerJumps(c, fams, func(v6 bool) Stmt { return NFProto{v6} })...)

	inet.Chains = []Chain{
		{Name: chainInfo},
		pre, out, {Name: chainPorts, Rules: ports},
		post, outbound,
		fwd, {Name: chainPublished, Rules: published},
		toContainer(c, fams, func(v6 bool) Stmt { return NFProto{v6} }),
	}
	inet.Chains = append(inet.Chains, tenantChainsFor(tenantChains, fams, func(v6 bool) Stmt { return NFProto{v6} })...)

	// The bridge family sees frames switched between two containers of this
	// node, which the inet hooks do not (no br_netfilter). No conntrack
	// here: no allowed flow runs directly between two tenants' containers
	// (published ports are routed through the node), so both directions of
	// such frames are dropped. The chain is not limited to c.Bridge: "meta
	// ibrname" needs nft_meta_bridge, which kernels may lack (this host's
	// does), and the address match already confines it to container traffic.
	ether := func(v6 bool) Stmt { return EtherType{v6} }
	bfwd := Chain{Name: "forward", Type: "filter", Hook: "forward", Priority: -200,
		Rules: toContainerJumps(c, fams, ether)}
	bridge.Chains = []Chain{{Name: chainInfo}, bfwd, toContainer(c, fams, ether)}
	bridge.Chains = append(bridge.Chains, tenantChainsFor(tenantChains, fams, ether)...)

	rs := Ruleset{Tables: []Table{inet, bridge}}
	// The fingerprint covers everything but itself.
	fp := rs.Fingerprint()
	for i := range rs.Tables {
		rs.Tables[i].Chains[0].Rules = []Rule{{Stmts: []Stmt{Verdict{Kind: "return"}}, Comment: fingerprintPrefix + fp}}
	}
	return rs, nil
}

const fingerprintPrefix = "berth ruleset "

// portRule matches a published port: family, optional host address,
// protocol and host port, followed by then.
func portRule(p Port, then []Stmt) Rule {
	st := []Stmt{NFProto{p.Addr.Is6()}}
	if p.HostIP.IsValid() {
		st = append(st, AddrPrefix{Dst, netip.PrefixFrom(p.HostIP, p.HostIP.BitLen())})
	}
	st = append(st, L4Port{p.Proto, p.HostPort})
	return Rule{Stmts: append(st, then...), Comment: commentSafe(p.Owner)}
}

// toContainerJumps sends every packet addressed to a container range to the
// tenant check.
func toContainerJumps(c Config, fams []bool, guard func(bool) Stmt) []Rule {
	var rules []Rule
	for _, v6 := range fams {
		for _, r := range ranges(c, v6) {
			st := []Stmt{guard(v6), AddrPrefix{Dst, r}, Verdict{"jump", chainToContainer}}
			rules = append(rules, Rule{Stmts: st})
		}
	}
	return rules
}

// toContainer dispatches on the source container's tenant (one hash lookup,
// whatever the number of containers); a source inside the ranges that is no
// known container is dropped.
func toContainer(c Config, fams []bool, guard func(bool) Stmt) Chain {
	ch := Chain{Name: chainToContainer}
	for _, v6 := range fams {
		m := mapTenant4
		if v6 {
			m = mapTenant6
		}
		ch.Rules = append(ch.Rules, Rule{Stmts: []Stmt{guard(v6), AddrVmap{Src, v6, m}}})
	}
	for _, v6 := range fams {
		for _, r := range ranges(c, v6) {
			ch.Rules = append(ch.Rules, Rule{Stmts: []Stmt{guard(v6), AddrPrefix{Src, r}, Verdict{Kind: "drop"}}, Comment: "unknown container"})
		}
	}
	return ch
}

// tenantChain is a tenant's chain name and its address-set names.
type tenantChain struct {
	tenant, chain, set4, set6 string
}

// tenantChainsFor: a tenant's containers reach its own containers; any
// other container address is dropped.
func tenantChainsFor(tcs []tenantChain, fams []bool, guard func(bool) Stmt) []Chain {
	var chains []Chain
	for _, tc := range tcs {
		ch := Chain{Name: tc.chain}
		for _, v6 := range fams {
			set := tc.set4
			if v6 {
				set = tc.set6
			}
			ch.Rules = append(ch.Rules, Rule{Stmts: []Stmt{guard(v6), AddrInSet{Dst, v6, set}, Verdict{Kind: "accept"}}})
		}
		ch.Rules = append(ch.Rules, Rule{Stmts: []Stmt{Verdict{Kind: "drop"}}, Comment: "tenant " + commentSafe(tc.tenant)})
		chains = append(chains, ch)
	}
	return chains
}

// tenantSets builds the verdict maps and one address set per tenant and family.
func tenantSets(names []string, addrs map[string][]netip.Addr, fams []bool) ([]Set, []tenantChain) {
	m4 := Set{Name: mapTenant4, Jumps: []string{}}
	m6 := Set{Name: mapTenant6, IPv6: true, Jumps: []string{}}
	var own []Set
	var tcs []tenantChain
	for _, n := range names {
		safe := SafeName(n)
		tc := tenantChain{tenant: n, chain: safe, set4: safe + "_4", set6: safe + "_6"}
		tcs = append(tcs, tc)
		s4 := Set{Name: tc.set4}
		s6 := Set{Name: tc.set6, IPv6: true}
		for _, a := range addrs[n] {
			if a.Is6() {
				s6.Addrs = append(s6.Addrs, a)
				m6.Addrs, m6.Jumps = append(m6.Addrs, a), append(m6.Jumps, safe)
			} else {
				s4.Addrs = append(s4.Addrs, a)
				m4.Addrs, m4.Jumps = append(m4.Addrs, a), append(m4.Jumps, safe)
			}
		}
		own = append(own, s4)
		if len(fams) == 2 {
			own = append(own, s6)
		}
	}
	sortMap(&m4)
	sortMap(&m6)
	sets := []Set{m4}
	if len(fams) == 2 {
		sets = append(sets, m6)
	}
	return append(sets, own...), tcs
}

// sortMap orders a verdict map's elements by address.
func sortMap(m *Set) {
	idx := make([]int, len(m.Addrs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(i, j int) bool { return m.Addrs[idx[i]].Less(m.Addrs[idx[j]]) })
	addrs, jumps := make([]netip.Addr, len(idx)), make([]string, len(idx))
	for i, k := range idx {
		addrs[i], jumps[i] = m.Addrs[k], m.Jumps[k]
	}
	m.Addrs, m.Jumps = addrs, jumps
}

// SafeName maps a tenant name to a chain and set name: "t_", up to 16
// characters of the name in [a-z0-9_], "_", and 8 hex digits of its sha256,
// so distinct tenants never share a name and the result (with a "_4"
// suffix) stays within the 31 characters older kernels allow.
func SafeName(tenant string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(tenant) {
		if b.Len() >= 16 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(tenant))
	return fmt.Sprintf("t_%s_%s", b.String(), hex.EncodeToString(sum[:4]))
}

// commentSafe keeps a comment printable and within nft's 128 bytes.
func commentSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' {
			return '_'
		}
		return r
	}, s)
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}
