package netfilter

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

// Ruleset is berth's own model of its nftables tables. Rules builds it,
// Apply writes it. String renders it in nft syntax, which is what tests
// and logs read.
type Ruleset struct {
	Tables []Table
}

// Family is an nftables table family berth uses.
type Family string

const (
	FamilyInet   Family = "inet"
	FamilyBridge Family = "bridge"
)

// Table is one of berth's tables; Apply replaces it whole.
type Table struct {
	Family Family
	Name   string
	Sets   []Set
	Chains []Chain
}

// Chain is a base chain when Hook is set, otherwise a regular chain that
// rules jump to. Base chains have policy accept: berth only drops what its
// rules say, so other users of the hook keep working.
type Chain struct {
	Name     string
	Type     string // "filter" or "nat" (base chains)
	Hook     string // "prerouting", "input", "forward", "output", "postrouting"; "" for a regular chain
	Priority int
	Rules    []Rule
}

// Set is a named set of addresses, or a verdict map (address : jump chain)
// when Verdicts is set.
type Set struct {
	Name  string
	IPv6  bool         // key type ipv6_addr instead of ipv4_addr
	Addrs []netip.Addr // the keys
	// Jumps[i] is the chain Addrs[i] jumps to; only for verdict maps.
	Jumps []string
}

// IsMap reports whether s is a verdict map.
func (s Set) IsMap() bool { return s.Jumps != nil }

// Rule is a sequence of statements; Comment ends up in the rule's comment.
type Rule struct {
	Stmts   []Stmt
	Comment string
}

// Stmt is one match or action of a rule. The concrete types below are the
// closed set Apply knows how to translate.
type Stmt interface {
	String() string
	isStmt()
}

// Dir selects the source or destination address of a packet.
type Dir int

const (
	Src Dir = iota
	Dst
)

func (d Dir) word() string {
	if d == Dst {
		return "daddr"
	}
	return "saddr"
}

func ipWord(v6 bool) string {
	if v6 {
		return "ip6"
	}
	return "ip"
}

// NFProto matches the layer 3 protocol in an inet table ("meta nfproto ipv4").
type NFProto struct{ IPv6 bool }

// EtherType matches the layer 3 protocol in a bridge table ("meta protocol ip").
type EtherType struct{ IPv6 bool }

// AddrPrefix matches an address against a prefix ("ip saddr 10.88.0.0/16").
type AddrPrefix struct {
	Dir    Dir
	Prefix netip.Prefix
}

// AddrInSet matches an address against a named set ("ip daddr @t_acme_4").
type AddrInSet struct {
	Dir  Dir
	IPv6 bool
	Set  string
}

// AddrVmap looks an address up in a verdict map ("ip saddr vmap @tenant4").
type AddrVmap struct {
	Dir  Dir
	IPv6 bool
	Map  string
}

// FibDaddrLocal matches packets addressed to one of the node's own addresses.
type FibDaddrLocal struct{}

// L4Port matches a transport protocol and destination port ("tcp dport 80").
type L4Port struct {
	Proto string
	Port  uint16
}

// CtEstablished matches replies and related packets of tracked flows.
type CtEstablished struct{}

// CtDNAT matches flows whose destination was translated.
type CtDNAT struct{}

// OIFName matches the outgoing interface ("oifname \"berth0\"").
type OIFName struct{ Name string }

// Verdict ends evaluation: "accept", "drop", "return", or "jump" to Chain.
type Verdict struct {
	Kind  string
	Chain string
}

// DNAT rewrites the destination ("dnat ip to 10.88.1.2:80").
type DNAT struct{ To netip.AddrPort }

// Masquerade rewrites the source to the outgoing interface's address.
type Masquerade struct{}

func (NFProto) isStmt()       {}
func (EtherType) isStmt()     {}
func (AddrPrefix) isStmt()    {}
func (AddrInSet) isStmt()     {}
func (AddrVmap) isStmt()      {}
func (FibDaddrLocal) isStmt() {}
func (L4Port) isStmt()        {}
func (CtEstablished) isStmt() {}
func (CtDNAT) isStmt()        {}
func (OIFName) isStmt()       {}
func (Verdict) isStmt()       {}
func (DNAT) isStmt()          {}
func (Masquerade) isStmt()    {}

func (s NFProto) String() string {
	if s.IPv6 {
		return "meta nfproto ipv6"
	}
	return "meta nfproto ipv4"
}

func (s EtherType) String() string { return "meta protocol " + ipWord(s.IPv6) }

func (s AddrPrefix) String() string {
	p := s.Prefix.String()
	if s.Prefix.IsSingleIP() {
		p = s.Prefix.Addr().String()
	}
	return fmt.Sprintf("%s %s %s", ipWord(s.Prefix.Addr().Is6()), s.Dir.word(), p)
}

func (s AddrInSet) String() string {
	return fmt.Sprintf("%s %s @%s", ipWord(s.IPv6), s.Dir.word(), s.Set)
}

func (s AddrVmap) String() string {
	return fmt.Sprintf("%s %s vmap @%s", ipWord(s.IPv6), s.Dir.word(), s.Map)
}

func (FibDaddrLocal) String() string { return "fib daddr type local" }

func (s L4Port) String() string { return fmt.Sprintf("%s dport %d", s.Proto, s.Port) }

func (CtEstablished) String() string { return "ct state established,related" }

func (CtDNAT) String() string { return "ct status dnat" }

func (s OIFName) String() string { return fmt.Sprintf("oifname %q", s.Name) }

func (s Verdict) String() string {
	if s.Kind == "jump" {
		return "jump " + s.Chain
	}
	return s.Kind
}

func (s DNAT) String() string {
	return fmt.Sprintf("dnat %s to %s", ipWord(s.To.Addr().Is6()), s.To)
}

func (Masquerade) String() string { return "masquerade" }

func (r Rule) String() string {
	parts := make([]string, 0, len(r.Stmts)+1)
	for _, s := range r.Stmts {
		parts = append(parts, s.String())
	}
	if r.Comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.Comment))
	}
	return strings.Join(parts, " ")
}

func (s Set) String() string {
	var b strings.Builder
	key := "ipv4_addr"
	if s.IPv6 {
		key = "ipv6_addr"
	}
	if s.IsMap() {
		fmt.Fprintf(&b, "map %s { type %s : verdict; elements = {", s.Name, key)
		for i, a := range s.Addrs {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, " %s : jump %s", a, s.Jumps[i])
		}
	} else {
		fmt.Fprintf(&b, "set %s { type %s; elements = {", s.Name, key)
		for i, a := range s.Addrs {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, " %s", a)
		}
	}
	b.WriteString(" } }")
	return b.String()
}

func (t Table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", t.Family, t.Name)
	for _, s := range t.Sets {
		fmt.Fprintf(&b, "\t%s\n", s)
	}
	for _, c := range t.Chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if c.Hook != "" {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy accept;\n", c.Type, c.Hook, c.Priority)
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func (rs Ruleset) String() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		b.WriteString(t.String())
	}
	return b.String()
}

// Fingerprint identifies the ruleset's content; Apply stores it in the
// kernel to recognise a ruleset that is already in place.
// The info chain, which carries the fingerprint, is left out.
func (rs Ruleset) Fingerprint() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		t.Chains = append([]Chain(nil), t.Chains...)
		for i := range t.Chains {
			if t.Chains[i].Name == chainInfo {
				t.Chains[i].Rules = nil
			}
		}
		b.WriteString(t.String())
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:12])
}

// Chain returns the named chain of the table of the given family, for tests
// and callers that inspect a Ruleset.
func (rs Ruleset) Chain(f Family, name string) (Chain, bool) {
	for _, t := range rs.Tables {
		if t.Family != f {
			continue
		}
		for _, c := range t.Chains {
			if c.Name == name {
				return c, true
			}
		}
	}
	return Chain{}, false
}
