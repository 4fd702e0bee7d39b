package subnet

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestCheckRanges(t *testing.T) {
	good := Ranges{IPv4: pfx("10.88.0.0/16"), NodeBits4: 24, IPv6: pfx("fd5a:1f03:9c2e::/48"), ReclaimAfterSeconds: 86400}
	tests := []struct {
		name string
		edit func(r *Ranges)
		want string // "" = valid; else a piece of the one-line error
	}{
		{"defaults", func(r *Ranges) {}, ""},
		{"whole range per node", func(r *Ranges) { r.IPv4, r.NodeBits4 = pfx("10.1.2.0/24"), 24 }, ""},
		{"/30 per node", func(r *Ranges) { r.NodeBits4 = 30 }, ""},
		{"ipv6 /64 range", func(r *Ranges) { r.IPv6 = pfx("fd00:1:2:3::/64") }, ""},
		{"no ipv4", func(r *Ranges) { r.IPv4 = netip.Prefix{} }, "is not an IPv4 prefix"},
		{"ipv6 as ipv4 range", func(r *Ranges) { r.IPv4 = pfx("fd00::/48") }, "is not an IPv4 prefix"},
		{"host bits", func(r *Ranges) { r.IPv4 = pfx("10.88.1.0/16") }, "write it as 10.88.0.0/16"},
		{"range too large", func(r *Ranges) { r.IPv4 = pfx("10.0.0.0/7") }, "larger than a /8"},
		{"node larger than range", func(r *Ranges) { r.NodeBits4 = 15 }, "node subnet size /15 is larger than the cluster subnet 10.88.0.0/16"},
		{"node too small", func(r *Ranges) { r.NodeBits4 = 31 }, "at least a /30"},
		{"no ipv6", func(r *Ranges) { r.IPv6 = netip.Prefix{} }, "is not an IPv6 prefix"},
		{"4in6 overlaps ipv4", func(r *Ranges) { r.IPv6 = pfx("::ffff:10.88.0.0/112") }, "is not an IPv6 prefix"},
		{"ipv6 host bits", func(r *Ranges) { r.IPv6 = pfx("fd5a:1f03:9c2e:1::/48") }, "write it as fd5a:1f03:9c2e::/48"},
		{"ipv6 not ULA", func(r *Ranges) { r.IPv6 = pfx("2001:db8::/48") }, "not a unique local"},
		{"ipv6 smaller than a node", func(r *Ranges) { r.IPv6 = pfx("fd00::/80") }, "/32 to /64"},
		{"ipv6 too large", func(r *Ranges) { r.IPv6 = pfx("fd00::/16") }, "/32 to /64"},
		{"no grace", func(r *Ranges) { r.ReclaimAfterSeconds = 0 }, "at least 1s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.edit(&r)
			err := r.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

func TestCheckOwnAndAddrs(t *testing.T) {
	r := Ranges{IPv4: pfx("10.88.0.0/16"), NodeBits4: 24, IPv6: pfx("fd5a:1f03:9c2e::/48"), ReclaimAfterSeconds: 1}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"outside", CheckOwn("bridge-subnet", pfx("10.231.51.0/24"), r.IPv4), ""},
		{"unset", CheckOwn("bridge-subnet", netip.Prefix{}, r.IPv4), ""},
		{"inside", CheckOwn("bridge-subnet", pfx("10.88.3.0/24"), r.IPv4), "bridge-subnet 10.88.3.0/24 overlaps the cluster range 10.88.0.0/16"},
		{"contains the range", CheckOwn("bridge-subnet", pfx("10.0.0.0/8"), r.IPv4), "overlaps"},
		{"ipv6 inside", CheckOwn("bridge-subnet6", pfx("fd5a:1f03:9c2e:7::/64"), r.IPv6), "remove bridge-subnet6"},
		{"ipv6 outside", CheckOwn("bridge-subnet6", pfx("fd00:231:51::/64"), r.IPv6), ""},
		{"node addr apart", r.CheckAddrs([]netip.Addr{netip.MustParseAddr("10.0.0.11")}), ""},
		{"node addr inside", r.CheckAddrs([]netip.Addr{netip.MustParseAddr("10.88.0.5")}), "contains this node's address 10.88.0.5"},
		{"node addr mapped", r.CheckAddrs([]netip.Addr{netip.MustParseAddr("::ffff:10.88.0.5")}), "contains this node's address"},
	}
	for _, tc := range tests {
		if (tc.want == "") != (tc.err == nil) || tc.err != nil && !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, tc.err, tc.want)
		}
	}
}

func TestRandomULA(t *testing.T) {
	p, err := RandomULA(bytes.NewReader([]byte{1, 2, 3, 4, 5}))
	if err != nil || p != pfx("fd01:203:405::/48") {
		t.Fatalf("got %s, %v", p, err)
	}
	if err := CheckIPv6(p); err != nil {
		t.Fatal(err)
	}
	a, _ := RandomULA(nil)
	b, _ := RandomULA(nil)
	if a == b || CheckIPv6(a) != nil {
		t.Fatalf("two random ULAs %s %s", a, b)
	}
	if _, err := RandomULA(bytes.NewReader([]byte{1})); err == nil {
		t.Fatal("short random source accepted")
	}
}

func TestPick(t *testing.T) {
	var all16 []netip.Prefix
	for i := range 4 {
		all16 = append(all16, nth(pfx("10.9.0.0/22"), 24, uint64(i)))
	}
	tests := []struct {
		name  string
		rng   string
		bits  int
		taken []string
		want  string // "" = exhausted
	}{
		{"empty", "10.88.0.0/16", 24, nil, "10.88.0.0/24"},
		{"lowest free", "10.88.0.0/16", 24, []string{"10.88.0.0/24", "10.88.2.0/24"}, "10.88.1.0/24"},
		{"after a run", "10.88.0.0/16", 24, []string{"10.88.1.0/24", "10.88.0.0/24", "10.88.2.0/24"}, "10.88.3.0/24"},
		{"outside leases ignored", "10.88.0.0/16", 24, []string{"10.99.0.0/24", "fd00::/64"}, "10.88.0.0/24"},
		{"a larger block blocks all it covers", "10.88.0.0/16", 24, []string{"10.88.0.0/23"}, "10.88.2.0/24"},
		{"small node subnets", "10.88.0.0/16", 26, []string{"10.88.0.0/26"}, "10.88.0.64/26"},
		{"last one", "10.9.0.0/22", 24, []string{"10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24"}, "10.9.3.0/24"},
		{"exhausted", "10.9.0.0/22", 24, []string{"10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24", "10.9.3.0/24"}, ""},
		{"one subnet range", "10.1.2.0/24", 24, []string{"10.1.2.0/24"}, ""},
		{"ipv6", "fd5a:1f03:9c2e::/48", 64, []string{"fd5a:1f03:9c2e::/64"}, "fd5a:1f03:9c2e:1::/64"},
		{"ipv6 high index", "fd5a:1f03:9c2e::/48", 64, []string{"fd5a:1f03:9c2e::/49"}, "fd5a:1f03:9c2e:8000::/64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var taken []netip.Prefix
			for _, s := range tc.taken {
				taken = append(taken, pfx(s))
			}
			got, err := Pick(pfx(tc.rng), tc.bits, taken)
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), tc.rng) || !strings.Contains(err.Error(), "larger range") {
					t.Fatalf("got %s, %v; want an exhausted error naming %s and the remedy", got, err, tc.rng)
				}
				return
			}
			if err != nil || got != pfx(tc.want) {
				t.Fatalf("got %s, %v; want %s", got, err, tc.want)
			}
		})
	}
	if got := all16[3]; got != pfx("10.9.3.0/24") {
		t.Fatalf("nth: %s", got)
	}
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	grace := time.Hour
	lease := func(node, subnet string) Lease { return Lease{Node: node, Subnet: pfx(subnet)} }
	rec := func(node string, missing time.Duration) NodeRecord {
		r := NodeRecord{Node: node}
		if missing > 0 {
			r.MissingSince = now.Add(-missing)
		}
		return r
	}
	tests := []struct {
		name    string
		leases  []Lease
		records []NodeRecord
		live    []string
		want    []Action
	}{
		{"live node, nothing to do",
			[]Lease{lease("a", "10.88.0.0/24")}, []NodeRecord{rec("a", 0)}, []string{"a"}, nil},
		{"gone node is marked first",
			[]Lease{lease("a", "10.88.0.0/24"), lease("a", "fd00::/64")}, []NodeRecord{rec("a", 0)}, nil,
			[]Action{{Kind: MarkMissing, Node: "a", At: now}}},
		{"gone within grace: kept",
			[]Lease{lease("a", "10.88.0.0/24")}, []NodeRecord{rec("a", 59*time.Minute)}, nil, nil},
		{"gone for the grace: reclaimed",
			[]Lease{lease("a", "fd00::/64"), lease("a", "10.88.0.0/24"), lease("b", "10.88.1.0/24")},
			[]NodeRecord{rec("a", time.Hour), rec("b", 0)}, []string{"b"},
			[]Action{{Kind: Reclaim, Node: "a", Subnets: []netip.Prefix{pfx("10.88.0.0/24"), pfx("fd00::/64")}}}},
		{"back before the grace: cleared",
			[]Lease{lease("a", "10.88.0.0/24")}, []NodeRecord{rec("a", 30*time.Minute)}, []string{"a"},
			[]Action{{Kind: ClearMissing, Node: "a"}}},
		{"back after the grace but before a reclaim: cleared",
			[]Lease{lease("a", "10.88.0.0/24")}, []NodeRecord{rec("a", 3*time.Hour)}, []string{"a"},
			[]Action{{Kind: ClearMissing, Node: "a"}}},
		{"lease without record: marked",
			[]Lease{lease("a", "10.88.0.0/24")}, nil, nil,
			[]Action{{Kind: MarkMissing, Node: "a", At: now}}},
		{"record without leases: reclaimed when due",
			nil, []NodeRecord{rec("a", 2*time.Hour)}, nil,
			[]Action{{Kind: Reclaim, Node: "a"}}},
		{"missing since in the future (clock skew): kept",
			[]Lease{lease("a", "10.88.0.0/24")}, []NodeRecord{{Node: "a", MissingSince: now.Add(time.Hour)}}, nil, nil},
		{"several nodes, sorted",
			[]Lease{lease("c", "10.88.2.0/24"), lease("b", "10.88.1.0/24"), lease("a", "10.88.0.0/24")},
			[]NodeRecord{rec("c", 2*time.Hour), rec("b", 0), rec("a", time.Minute)}, []string{"a"},
			[]Action{{Kind: ClearMissing, Node: "a"}, {Kind: MarkMissing, Node: "b", At: now}, {Kind: Reclaim, Node: "c", Subnets: []netip.Prefix{pfx("10.88.2.0/24")}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			live := map[string]bool{}
			for _, n := range tc.live {
				live[n] = true
			}
			got := Decide(tc.leases, tc.records, live, now, grace)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestLeaseKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.88.3.0/24":          "/berth/v1/subnets/leases/10.88.3.0-24",
		"fd5a:1f03:9c2e:3::/64": "/berth/v1/subnets/leases/fd5a:1f03:9c2e:3::-64",
	} {
		if got := LeaseKey(pfx(in)); got != want {
			t.Errorf("LeaseKey(%s) = %s, want %s", in, got, want)
		}
	}
}
