package netfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// elemChunk bounds the elements per netlink message so a large cluster's
// sets do not exceed a message's size; all chunks stay in the one batch.
const elemChunk = 512

// applyMu serialises Apply and Remove within the process: the check for an
// unchanged ruleset and the write must not interleave.
var applyMu sync.Mutex

// remedy is appended to kernel errors.
const remedy = "the previous rules stay in place; check that the kernel has nf_tables with nat, masq, fib, ct and the bridge family, and that the agent runs as root"

// Apply makes berth's tables in the calling thread's network namespace
// exactly rs, in one nftables transaction: each table is created if
// missing, deleted and rebuilt within the same batch, so a failure leaves
// the previous rules whole and packets never see half a ruleset. When the
// kernel already holds rs (same fingerprint, same chains, rule and element
// counts), Apply changes nothing. Other tables are never touched.
func Apply(rs Ruleset) error {
	applyMu.Lock()
	defer applyMu.Unlock()
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("netfilter: open nftables netlink socket: %w; %s", err, remedy)
	}
	defer conn.CloseLasting() //nolint:errcheck // nothing is pending on it

	same, err := inKernel(conn, rs)
	if err != nil {
		// Not fatal: the rebuild below brings the kernel to rs anyway.
		slog.Warn("netfilter: cannot compare the installed rules; rebuilding them", "err", err)
	}
	if same {
		slog.Debug("netfilter: rules unchanged", "fingerprint", rs.Fingerprint())
		return nil
	}
	for _, t := range rs.Tables {
		if err := queueTable(conn, t); err != nil {
			return fmt.Errorf("netfilter: table %s %s: %w (a bug in the ruleset; nothing was changed)", t.Family, t.Name, err)
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("netfilter: apply rules: %w; %s", err, remedy)
	}
	rules := 0
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			rules += len(c.Rules)
		}
	}
	slog.Info("netfilter: rules applied", "tables", len(rs.Tables), "rules", rules, "fingerprint", rs.Fingerprint())
	return nil
}

// Remove deletes berth's tables ("inet berth", "bridge berth") in one
// transaction; missing tables are fine.
func Remove() error {
	applyMu.Lock()
	defer applyMu.Unlock()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netfilter: open nftables netlink socket: %w; %s", err, remedy)
	}
	for _, f := range []Family{FamilyInet, FamilyBridge} {
		t := &nftables.Table{Family: tableFamily(f), Name: TableName}
		// Adding first makes the delete succeed whether or not it existed.
		conn.AddTable(t)
		conn.DelTable(t)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("netfilter: remove berth tables: %w; run as root on a kernel with nf_tables", err)
	}
	slog.Info("netfilter: rules removed")
	return nil
}

func tableFamily(f Family) nftables.TableFamily {
	if f == FamilyBridge {
		return nftables.TableFamilyBridge
	}
	return nftables.TableFamilyINet
}

var hooks = map[string]*nftables.ChainHook{
	"prerouting":  nftables.ChainHookPrerouting,
	"input":       nftables.ChainHookInput,
	"forward":     nftables.ChainHookForward,
	"output":      nftables.ChainHookOutput,
	"postrouting": nftables.ChainHookPostrouting,
}

// queueTable adds the commands that replace table t to conn's batch.
func queueTable(conn *nftables.Conn, t Table) error {
	tab := &nftables.Table{Family: tableFamily(t.Family), Name: t.Name}
	conn.AddTable(tab)
	conn.DelTable(tab)
	conn.AddTable(tab)

	// Chains first: verdict map elements and jumps refer to them.
	chains := map[string]*nftables.Chain{}
	for _, c := range t.Chains {
		ch := &nftables.Chain{Name: c.Name, Table: tab}
		if c.Hook != "" {
			hook, ok := hooks[c.Hook]
			if !ok {
				return fmt.Errorf("chain %s: unknown hook %q", c.Name, c.Hook)
			}
			prio := nftables.ChainPriority(c.Priority)
			policy := nftables.ChainPolicyAccept
			ch.Hooknum, ch.Priority, ch.Type, ch.Policy = hook, &prio, nftables.ChainType(c.Type), &policy
		}
		chains[c.Name] = conn.AddChain(ch)
	}
	sets := map[string]*nftables.Set{}
	for _, s := range t.Sets {
		ns := &nftables.Set{Table: tab, Name: s.Name, KeyType: nftables.TypeIPAddr}
		if s.IPv6 {
			ns.KeyType = nftables.TypeIP6Addr
		}
		if s.IsMap() {
			ns.IsMap, ns.DataType = true, nftables.TypeVerdict
		}
		if err := conn.AddSet(ns, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		elems := make([]nftables.SetElement, len(s.Addrs))
		for i, a := range s.Addrs {
			elems[i].Key = a.AsSlice()
			if s.IsMap() {
				elems[i].VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: s.Jumps[i]}
			}
		}
		for len(elems) > 0 {
			n := min(len(elems), elemChunk)
			if err := conn.SetAddElements(ns, elems[:n]); err != nil {
				return fmt.Errorf("set %s elements: %w", s.Name, err)
			}
			elems = elems[n:]
		}
		sets[s.Name] = ns
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			var exprs []expr.Any
			for _, st := range r.Stmts {
				e, err := translate(st, sets)
				if err != nil {
					return fmt.Errorf("chain %s rule %q: %w", c.Name, r, err)
				}
				exprs = append(exprs, e...)
			}
			nr := &nftables.Rule{Table: tab, Chain: chains[c.Name], Exprs: exprs}
			if r.Comment != "" {
				nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
			}
			conn.AddRule(nr)
		}
	}
	return nil
}

// payloadAddr loads a packet's IPv4 or IPv6 source or destination address
// into register 1.
func payloadAddr(d Dir, v6 bool) *expr.Payload {
	p := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	switch {
	case v6 && d == Src:
		p.Offset, p.Len = 8, 16
	case v6:
		p.Offset, p.Len = 24, 16
	case d == Dst:
		p.Offset = 16
	}
	return p
}

func cmpEq(data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}
}

// bitsSet matches when any of mask's bits is set in the 32-bit register 1.
func bitsSet(mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status bits.
const ipsDstNAT = 1 << 5

func translate(st Stmt, sets map[string]*nftables.Set) ([]expr.Any, error) {
	lookup := func(name string) (*nftables.Set, error) {
		s, ok := sets[name]
		if !ok {
			return nil, fmt.Errorf("set %s is not in the table", name)
		}
		return s, nil
	}
	switch s := st.(type) {
	case NFProto:
		proto := byte(unix.NFPROTO_IPV4)
		if s.IPv6 {
			proto = unix.NFPROTO_IPV6
		}
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq([]byte{proto})}, nil
	case EtherType:
		et := uint16(unix.ETH_P_IP)
		if s.IPv6 {
			et = unix.ETH_P_IPV6
		}
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1}, cmpEq(binaryutil.BigEndian.PutUint16(et))}, nil
	case AddrPrefix:
		p := s.Prefix.Masked()
		out := []expr.Any{payloadAddr(s.Dir, p.Addr().Is6())}
		if !p.IsSingleIP() {
			mask := netip.PrefixFrom(allOnes(p.Addr().Is6()), p.Bits()).Masked().Addr().AsSlice()
			out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))})
		}
		return append(out, cmpEq(p.Addr().AsSlice())), nil
	case AddrInSet:
		set, err := lookup(s.Set)
		if err != nil {
			return nil, err
		}
		return []expr.Any{payloadAddr(s.Dir, s.IPv6), &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID}}, nil
	case AddrVmap:
		set, err := lookup(s.Map)
		if err != nil {
			return nil, err
		}
		// Destination register 0 is the verdict register: the map's value decides.
		return []expr.Any{payloadAddr(s.Dir, s.IPv6), &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID}}, nil
	case FibDaddrLocal:
		return []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			cmpEq(binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)),
		}, nil
	case L4Port:
		proto := byte(unix.IPPROTO_TCP)
		switch s.Proto {
		case "tcp":
		case "udp":
			proto = unix.IPPROTO_UDP
		default:
			return nil, fmt.Errorf("protocol %q", s.Proto)
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{proto}),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			cmpEq(binaryutil.BigEndian.PutUint16(s.Port)),
		}, nil
	case CtEstablished:
		return append([]expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATE}}, bitsSet(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)...), nil
	case CtDNAT:
		return append([]expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATUS}}, bitsSet(ipsDstNAT)...), nil
	case OIFName:
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, s.Name)
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, cmpEq(name)}, nil
	case Verdict:
		kinds := map[string]expr.VerdictKind{"accept": expr.VerdictAccept, "drop": expr.VerdictDrop, "return": expr.VerdictReturn, "jump": expr.VerdictJump}
		k, ok := kinds[s.Kind]
		if !ok {
			return nil, fmt.Errorf("verdict %q", s.Kind)
		}
		return []expr.Any{&expr.Verdict{Kind: k, Chain: s.Chain}}, nil
	case DNAT:
		fam := uint32(unix.NFPROTO_IPV4)
		if s.To.Addr().Is6() {
			fam = unix.NFPROTO_IPV6
		}
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: s.To.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(s.To.Port())},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}, nil
	case Masquerade:
		return []expr.Any{&expr.Masq{}}, nil
	}
	return nil, fmt.Errorf("statement %T has no translation", st)
}

func allOnes(v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	return netip.AddrFrom4([4]byte{0xff, 0xff, 0xff, 0xff})
}

// inKernel reports whether the kernel holds rs already: the fingerprint
// comment of every table matches, and so do the chain names, the number of
// rules in each chain, the set names and their element counts. It is a
// cheap check, not a rule-by-rule comparison; a hand edit that keeps all
// counts is not noticed until the config changes.
func inKernel(conn *nftables.Conn, rs Ruleset) (bool, error) {
	want := fingerprintPrefix + rs.Fingerprint()
	for _, t := range rs.Tables {
		tab, err := conn.ListTableOfFamily(t.Name, tableFamily(t.Family))
		if err != nil {
			if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
				return false, nil
			}
			return false, fmt.Errorf("list table %s %s: %w", t.Family, t.Name, err)
		}
		chains, err := conn.ListChainsOfTableFamily(tableFamily(t.Family))
		if err != nil {
			return false, fmt.Errorf("list chains: %w", err)
		}
		have := map[string]*nftables.Chain{}
		for _, c := range chains {
			if c.Table.Name == t.Name {
				have[c.Name] = c
			}
		}
		if len(have) != len(t.Chains) {
			return false, nil
		}
		for _, c := range t.Chains {
			kc, ok := have[c.Name]
			if !ok {
				return false, nil
			}
			rules, err := conn.GetRules(tab, kc)
			if err != nil {
				return false, fmt.Errorf("list rules of %s: %w", c.Name, err)
			}
			if len(rules) != len(c.Rules) {
				return false, nil
			}
			if c.Name == chainInfo {
				if len(rules) == 0 {
					return false, nil // not written by Apply of a Rules result
				}
				if got, _ := userdata.GetString(rules[0].UserData, userdata.TypeComment); got != want {
					return false, nil
				}
			}
		}
		sets, err := conn.GetSets(tab)
		if err != nil {
			return false, fmt.Errorf("list sets: %w", err)
		}
		if len(sets) != len(t.Sets) {
			return false, nil
		}
		byName := map[string]*nftables.Set{}
		for _, s := range sets {
			byName[s.Name] = s
		}
		for _, s := range t.Sets {
			ks, ok := byName[s.Name]
			if !ok {
				return false, nil
			}
			elems, err := conn.GetSetElements(ks)
			if err != nil {
				return false, fmt.Errorf("list elements of %s: %w", s.Name, err)
			}
			if len(elems) != len(s.Addrs) {
				return false, nil
			}
		}
	}
	return true, nil
}
