// Package nodeconfig reads a node's provisioning file (node.yaml, from a
// seed disk labelled BERTH-SEED or from the ESP) and applies it at every
// boot: host name, root's SSH keys, systemd-networkd files, resolv.conf,
// the agent's configuration and sshd host keys.
//
// A bad setting never stops the rest: each problem is reported with the
// file's line, the section it is in is left as it was, and a bad network
// section falls back to DHCP so that the node stays reachable and fixable.
package nodeconfig

import (
	"fmt"
	"net/netip"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

// Problem is one error in a node configuration, at a line of the file (0
// when it concerns the whole file); In names the file. Its Msg carries the
// setting's path, e.g. "network.interfaces[0]: needs name: ...".
type Problem = yamlnode.Error

// Config is the valid part of a node configuration. Sections with errors
// are marked invalid and carry nothing, so applying them changes nothing
// (the network falls back to DHCP instead).
type Config struct {
	Hostname string // "" keeps the current host name

	KeysGiven      bool     // ssh_authorized_keys is present
	AuthorizedKeys []string // the valid key lines
	KeysInvalid    bool     // some key was refused

	Network        *Network // nil: DHCP on every ethernet interface
	NetworkInvalid bool
	NetworkLine    int // of the network: key, 0 when absent

	AgentGiven   bool
	AgentYAML    []byte // /etc/berth/agent.yaml; nil when absent or invalid
	AgentInvalid bool

	// parsed: the file's settings were read, so a missing agent section
	// means "no agent" (not "file unreadable").
	parsed bool
}

// Network is the validated network section.
type Network struct {
	Interfaces []Interface
}

// Interface is one systemd-networkd .network file.
type Interface struct {
	Name      string // [Match] Name= pattern list, or ""
	MAC       string // [Match] MACAddress=, or ""
	DHCP      bool
	Addresses []netip.Prefix
	Gateway4  netip.Addr
	Gateway6  netip.Addr
	DNS       []netip.Addr
}

// maxFileBytes bounds what is read from a seed disk or the ESP: a node
// configuration is a few hundred bytes.
const maxFileBytes = 1 << 20

// Parse checks a node configuration. currentHostname is what the agent's
// name defaults to when neither hostname nor agent.name is set. Problems
// come sorted by line.
func Parse(data []byte, currentHostname string) (*Config, []Problem) {
	p := &parser{cfg: &Config{}}
	if len(data) > maxFileBytes {
		p.failFile(0, fmt.Sprintf("file is %d bytes; a node configuration is at most %d", len(data), maxFileBytes))
		return p.cfg, p.problems
	}
	root, perr := yamlnode.DecodeDoc(data, yamlnode.DocWords{
		Extra:  "only one YAML document is allowed",
		Syntax: "not valid YAML: %s",
	})
	switch {
	case perr != nil:
		p.failFile(perr.Line, perr.Msg)
		return p.cfg, p.problems
	case root == nil:
		p.cfg.parsed = true
		return p.cfg, nil // empty, or only comments: every default
	}
	root = yamlnode.Deref(root)
	if root.Kind != yaml.MappingNode {
		p.failFile(root.Line, "the file must be a mapping of settings (hostname:, network:, ...)")
		return p.cfg, p.problems
	}
	p.top(root, currentHostname)
	sortProblems(p.problems)
	return p.cfg, p.problems
}

type parser struct {
	cfg      *Config
	problems []Problem
}

// failFile reports a problem that makes the whole file unusable: nothing
// is applied and the network falls back to DHCP.
func (p *parser) failFile(line int, msg string) {
	p.fail(line, msg)
	p.cfg.NetworkInvalid = true
}

func (p *parser) fail(line int, msg string) {
	p.problems = append(p.problems, Problem{Line: line, Msg: msg})
}

// failed runs check and tells whether it added problems.
func (p *parser) failed(check func()) bool {
	before := len(p.problems)
	check()
	return len(p.problems) > before
}

func (p *parser) top(m *yaml.Node, currentHostname string) {
	p.cfg.parsed = true
	var agentKey, agentVal *yaml.Node
	for _, kv := range p.pairs(m, "", "hostname", "ssh_authorized_keys", "network", "agent") {
		switch kv.key.Value {
		case "hostname":
			p.failed(func() { p.hostname(kv.val) })
		case "ssh_authorized_keys":
			p.cfg.KeysGiven = true
			p.cfg.KeysInvalid = p.failed(func() { p.keys(kv.val) })
		case "network":
			p.cfg.NetworkLine = kv.key.Line
			p.cfg.NetworkInvalid = p.failed(func() { p.network(kv.val) })
			if p.cfg.NetworkInvalid {
				p.cfg.Network = nil
			}
		case "agent":
			agentKey, agentVal = kv.key, kv.val
		}
	}
	// The agent section last: its name defaults to the host name set above.
	if agentKey != nil {
		p.cfg.AgentGiven = true
		name := strings.ToLower(p.cfg.Hostname)
		if name == "" {
			name = strings.ToLower(currentHostname)
		}
		p.cfg.AgentInvalid = p.failed(func() { p.agent(agentKey, agentVal, name) })
		if p.cfg.AgentInvalid {
			p.cfg.AgentYAML = nil
		}
	}
}

type pair struct{ key, val *yaml.Node }

// nodeWords are node.yaml's phrases for refused keys. Aliases are followed
// (a node file may share a value), and every message carries the setting's
// path itself, so Field stays empty.
var nodeWords = yamlnode.Words{
	FollowAliases: true,
	BadKey: func(field string, k *yaml.Node, _ []string) *yamlnode.Error {
		return &yamlnode.Error{Line: k.Line, Msg: prefix(field, ".") + "keys must be plain names"}
	},
	Unknown: func(field string, k *yaml.Node, allowed []string) *yamlnode.Error {
		return &yamlnode.Error{Line: k.Line, Msg: fmt.Sprintf("%sunknown setting %q (known: %s)", prefix(field, ": "), k.Value, strings.Join(allowed, ", "))}
	},
	Duplicate: func(field string, k *yaml.Node, first int) *yamlnode.Error {
		return &yamlnode.Error{Line: k.Line, Msg: fmt.Sprintf("%s%s is set twice (first at line %d)", prefix(field, "."), k.Value, first)}
	},
}

// prefix is field followed by sep, or nothing at the top of the file.
func prefix(field, sep string) string {
	if field == "" {
		return ""
	}
	return field + sep
}

// pairs returns a mapping's allowed entries, reporting unknown, duplicate
// and non-string keys. field names the mapping ("network.interfaces[0]").
func (p *parser) pairs(m *yaml.Node, field string, allowed ...string) []pair {
	var out []pair
	for _, e := range nodeWords.Mapping(m, field, allowed) {
		if e.Err != nil {
			p.problems = append(p.problems, *e.Err)
			continue
		}
		out = append(out, pair{e.Key, e.Value})
	}
	return out
}

func (p *parser) hostname(v *yaml.Node) {
	s, ok := p.str(v, "hostname")
	if !ok {
		return
	}
	if err := checkHostname(s); err != nil {
		p.fail(v.Line, "hostname: "+err.Error())
		return
	}
	p.cfg.Hostname = s
}

func (p *parser) keys(v *yaml.Node) {
	items, ok := p.seq(v, "ssh_authorized_keys")
	if !ok {
		return
	}
	for i, it := range items {
		what := fmt.Sprintf("ssh_authorized_keys[%d]", i)
		s, ok := p.str(it, what)
		if !ok {
			continue
		}
		if err := checkAuthorizedKey(s); err != nil {
			p.fail(it.Line, what+": "+err.Error())
			continue
		}
		p.cfg.AuthorizedKeys = append(p.cfg.AuthorizedKeys, strings.TrimSpace(s))
	}
}

func (p *parser) network(v *yaml.Node) {
	if v.Kind != yaml.MappingNode {
		p.fail(v.Line, "network: must be a mapping with interfaces:")
		return
	}
	n := &Network{}
	var interfaces *yaml.Node
	for _, kv := range p.pairs(v, "network", "interfaces") {
		interfaces = kv.val
		items, ok := p.seq(kv.val, "network.interfaces")
		if !ok {
			continue
		}
		for i, it := range items {
			if ifc, ok := p.iface(it, fmt.Sprintf("network.interfaces[%d]", i)); ok {
				n.Interfaces = append(n.Interfaces, ifc)
			}
		}
	}
	if interfaces == nil {
		p.fail(v.Line, "network: interfaces: is missing (leave network: out for DHCP everywhere)")
		return
	}
	if len(n.Interfaces) == 0 && len(interfaces.Content) == 0 {
		p.fail(interfaces.Line, "network.interfaces: is empty: no interface would get an address")
		return
	}
	p.cfg.Network = n
}

func (p *parser) iface(v *yaml.Node, where string) (Interface, bool) {
	if v.Kind != yaml.MappingNode {
		p.fail(v.Line, where+": must be a mapping (name:, mac:, dhcp:, addresses:, ...)")
		return Interface{}, false
	}
	var ifc Interface
	var dhcpSet bool
	bad := p.failed(func() {
		for _, kv := range p.pairs(v, where, "name", "mac", "dhcp", "addresses", "gateway4", "gateway6", "dns") {
			field := where + "." + kv.key.Value
			switch kv.key.Value {
			case "name":
				if s, ok := p.str(kv.val, field); ok {
					if err := checkNamePattern(s); err != nil {
						p.fail(kv.val.Line, field+": "+err.Error())
					}
					ifc.Name = strings.Join(strings.Fields(s), " ")
				}
			case "mac":
				if s, ok := p.str(kv.val, field); ok {
					mac, err := checkMAC(s)
					if err != nil {
						p.fail(kv.val.Line, field+": "+err.Error())
					}
					ifc.MAC = mac
				}
			case "dhcp":
				if kv.val.Kind != yaml.ScalarNode || kv.val.Tag != "!!bool" {
					p.fail(kv.val.Line, field+": must be true or false")
					continue
				}
				ifc.DHCP, dhcpSet = strings.EqualFold(kv.val.Value, "true"), true
			case "addresses":
				items, _ := p.seq(kv.val, field)
				for i, it := range items {
					what := fmt.Sprintf("%s[%d]", field, i)
					s, ok := p.str(it, what)
					if !ok {
						continue
					}
					pfx, err := checkAddress(s)
					if err != nil {
						p.fail(it.Line, what+": "+err.Error())
						continue
					}
					ifc.Addresses = append(ifc.Addresses, pfx)
				}
			case "gateway4", "gateway6":
				s, ok := p.str(kv.val, field)
				if !ok {
					continue
				}
				want4 := kv.key.Value == "gateway4"
				a, err := checkGateway(s, want4)
				if err != nil {
					p.fail(kv.val.Line, field+": "+err.Error())
					continue
				}
				if want4 {
					ifc.Gateway4 = a
				} else {
					ifc.Gateway6 = a
				}
			case "dns":
				items, _ := p.seq(kv.val, field)
				for i, it := range items {
					what := fmt.Sprintf("%s[%d]", field, i)
					s, ok := p.str(it, what)
					if !ok {
						continue
					}
					a, err := netip.ParseAddr(s)
					if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
						p.fail(it.Line, fmt.Sprintf("%s: %q is not a name server address like 10.240.0.1", what, s))
						continue
					}
					ifc.DNS = append(ifc.DNS, a)
				}
			}
		}
	})
	if bad {
		return Interface{}, false
	}
	switch {
	case ifc.Name == "" && ifc.MAC == "":
		p.fail(v.Line, where+": needs name: (a pattern like \"en*\") or mac:")
		return Interface{}, false
	case ifc.Name != "" && ifc.MAC != "":
		p.fail(v.Line, where+": give name: or mac:, not both")
		return Interface{}, false
	}
	if !dhcpSet {
		ifc.DHCP = len(ifc.Addresses) == 0
	}
	if !ifc.DHCP && len(ifc.Addresses) == 0 {
		p.fail(v.Line, where+": dhcp is false and there are no addresses: the interface would have none")
		return Interface{}, false
	}
	return ifc, true
}

// str reads a scalar as text; numbers are fine (a host name may be
// digits), null, lists and mappings are not.
func (p *parser) str(v *yaml.Node, what string) (string, bool) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		p.fail(v.Line, what+": must be a single value")
		return "", false
	}
	return v.Value, true
}

func (p *parser) seq(v *yaml.Node, what string) ([]*yaml.Node, bool) {
	if v.Kind != yaml.SequenceNode {
		p.fail(v.Line, what+": must be a list")
		return nil, false
	}
	out := make([]*yaml.Node, len(v.Content))
	for i, c := range v.Content {
		out[i] = yamlnode.Deref(c)
	}
	return out, true
}

func sortProblems(ps []Problem) {
	// Insertion sort keeps the order of problems on the same line.
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Line < ps[j-1].Line; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}
