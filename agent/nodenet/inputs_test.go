package nodenet

import (
	"net/netip"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/netfilter"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/agent/workload"
)

var (
	mp       = netip.MustParsePrefix
	ma       = netip.MustParseAddr
	assigned = subnet.Assigned{IPv4: mp("10.88.1.0/24"), IPv6: mp("fd00:1:2:1::/64"),
		Ranges: subnet.Ranges{IPv4: mp("10.88.0.0/16"), NodeBits4: 24, IPv6: mp("fd00:1:2::/48")}}
)

func TestFilterConfig(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	web := workload.Endpoint{ContainerID: "c1", Tenant: "acme", Job: "web", IPv4: ma("10.88.1.2"), IPv6: ma("fd00:1:2:1::2"),
		Ports: []jobs.Port{{Container: 80, Host: 8080, Protocol: "tcp"}, {Container: 53, Host: 5353, Protocol: "udp"}}}
	tests := []struct {
		name       string
		statuses   []jobs.ReplicaStatus
		local      []workload.Endpoint
		bind       netip.Addr
		wantTenant map[netip.Addr]string
		wantPorts  int
	}{
		{name: "local endpoint publishes on both families", local: []workload.Endpoint{web}, bind: ma("0.0.0.0"),
			wantTenant: map[netip.Addr]string{ma("10.88.1.2"): "acme", ma("fd00:1:2:1::2"): "acme"}, wantPorts: 4},
		{name: "a bind address keeps its family only", local: []workload.Endpoint{web}, bind: ma("192.168.5.1"),
			wantTenant: map[netip.Addr]string{ma("10.88.1.2"): "acme", ma("fd00:1:2:1::2"): "acme"}, wantPorts: 2},
		{name: "remote containers from status documents",
			statuses: []jobs.ReplicaStatus{
				{Tenant: "beta", Job: "db", Node: "n2", State: jobs.StateRunning, IPv4: "10.88.2.2", Updated: t0},
				{Tenant: "acme", Job: "x", Node: "n3", State: jobs.StateFailed, IPv4: "10.88.3.7", Updated: t0},
			},
			wantTenant: map[netip.Addr]string{ma("10.88.2.2"): "beta", ma("10.88.3.7"): "acme"}},
		{name: "a stale status loses to a running one for the same address",
			statuses: []jobs.ReplicaStatus{
				{Tenant: "beta", Job: "new", State: jobs.StateRunning, IPv4: "10.88.2.2", Updated: t0},
				{Tenant: "acme", Job: "old", State: jobs.StateExited, IPv4: "10.88.2.2", Updated: t0.Add(time.Hour)},
			},
			wantTenant: map[netip.Addr]string{ma("10.88.2.2"): "beta"}},
		{name: "of two running claims the newer wins",
			statuses: []jobs.ReplicaStatus{
				{Tenant: "acme", Job: "new", State: jobs.StateRunning, IPv4: "10.88.2.2", Updated: t0.Add(time.Minute)},
				{Tenant: "beta", Job: "old", State: jobs.StateRunning, IPv4: "10.88.2.2", Updated: t0},
			},
			wantTenant: map[netip.Addr]string{ma("10.88.2.2"): "acme"}},
		{name: "this node's addresses come from the workload manager, not from documents",
			statuses:   []jobs.ReplicaStatus{{Tenant: "beta", Job: "old", State: jobs.StateRunning, IPv4: "10.88.1.2", Updated: t0}},
			local:      []workload.Endpoint{{ContainerID: "c1", Tenant: "acme", IPv4: ma("10.88.1.2")}},
			wantTenant: map[netip.Addr]string{ma("10.88.1.2"): "acme"}},
		{name: "a document without a usable address adds nothing",
			statuses:   []jobs.ReplicaStatus{{Tenant: "beta", Job: "p", State: jobs.StatePulling}, {Tenant: "beta", IPv4: "not-an-ip"}},
			wantTenant: map[netip.Addr]string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := filterConfig(snapshot{Statuses: tc.statuses}, tc.local, assigned, "berth0", tc.bind)
			got := map[netip.Addr]string{}
			for _, x := range c.Containers {
				got[x.Addr] = x.Tenant
			}
			if len(got) != len(tc.wantTenant) {
				t.Errorf("containers %v, want %v", got, tc.wantTenant)
			}
			for a, want := range tc.wantTenant {
				if got[a] != want {
					t.Errorf("%s: tenant %q, want %q (all: %v)", a, got[a], want, got)
				}
			}
			if len(c.Ports) != tc.wantPorts {
				t.Errorf("%d ports, want %d: %+v", len(c.Ports), tc.wantPorts, c.Ports)
			}
			if err := netfilter.Validate(c); err != nil {
				t.Errorf("the config does not validate: %v", err)
			}
		})
	}
}

func TestFilterConfigWithoutIPv6(t *testing.T) {
	a := assigned
	a.IPv6 = netip.Prefix{}
	c := filterConfig(snapshot{}, nil, a, "berth0", netip.Addr{})
	if c.ClusterV6.IsValid() || c.LocalV6.IsValid() {
		t.Errorf("IPv6 ranges in a node without container IPv6: %+v", c)
	}
	if err := netfilter.Validate(c); err != nil {
		t.Error(err)
	}
}

func TestRouteInputs(t *testing.T) {
	s := snapshot{
		Leases: []subnet.Lease{{Subnet: mp("10.88.2.0/24"), Node: "n2"}, {Subnet: mp("10.88.1.0/24"), Node: "n1"}},
		Nodes:  map[string][]netip.Addr{"n2": {ma("10.240.0.12")}, "n1": {ma("10.240.0.11")}},
	}
	entries, peers := routeInputs(s)
	if len(entries) != 2 || entries[0].Prefix != mp("10.88.1.0/24") || entries[0].Node != "n1" || entries[1].Node != "n2" {
		t.Errorf("entries %+v", entries)
	}
	if len(peers) != 2 || peers[0].Node != "n1" || peers[0].Addrs[0] != ma("10.240.0.11") {
		t.Errorf("peers %+v", peers)
	}
}
