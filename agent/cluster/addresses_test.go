package cluster

import (
	"net/netip"
	"slices"
	"testing"
)

func TestNodeAddresses(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	links := []linkAddrs{
		{Name: "lo", Addrs: pfx("127.0.0.1/8", "::1/128")},
		{Name: "berth0", Addrs: pfx("10.88.0.1/24", "fd5a:1f03:9c2e::1/64")},
		{Name: "enp0s1", Addrs: pfx("10.240.0.11/24", "fd00:240::11/64", "fe80::5054:ff:fef0:b/64", "2001:db8::11/64")},
		{Name: "enp0s2", Addrs: pfx("192.168.7.5/24")},
	}
	for _, tc := range []struct {
		name      string
		advertise string
		links     []linkAddrs
		want      []string
	}{
		{"IPv4 advertise: its link's IPv6, not link-local, not other links", "10.240.0.11", links,
			[]string{"10.240.0.11", "fd00:240::11", "2001:db8::11"}},
		{"IPv6 advertise: its link's IPv4 too", "fd00:240::11", links,
			[]string{"fd00:240::11", "10.240.0.11", "2001:db8::11"}},
		{"a link with one address", "192.168.7.5", links, []string{"192.168.7.5"}},
		{"advertise on no interface", "10.9.9.9", links, []string{"10.9.9.9"}},
		{"host name", "node-1.example", links, []string{"node-1.example"}},
		{"no interfaces read", "10.240.0.11", nil, []string{"10.240.0.11"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nodeAddresses(tc.advertise, tc.links); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
