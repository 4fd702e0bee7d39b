package workload

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
)

// Endpoint is one container of this node as the node's network sees it:
// its addresses, its tenant (for the tenant rules and the DNS answers) and
// the ports its job publishes (programmed in the kernel by agent/nodenet,
// not by a proxy).
type Endpoint struct {
	ContainerID string
	Tenant, Job string
	Replica     int
	IPv4, IPv6  netip.Addr
	Ports       []jobs.Port
}

// Endpoints lists this node's containers that hold addresses, sorted by ID.
func (m *Manager) Endpoints() []Endpoint {
	m.addrMu.Lock()
	defer m.addrMu.Unlock()
	out := slices.Collect(maps.Values(m.endpoints))
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.ContainerID, b.ContainerID) })
	return out
}

// EndpointsChanged is signalled (coalesced) whenever Endpoints changes.
func (m *Manager) EndpointsChanged() <-chan struct{} { return m.epChanged }

// noteEndpoint records a replica's container once it has addresses; the
// job's ports come with it (the ports of the generation it runs).
func (m *Manager) noteEndpoint(id string, ref replicaRef, ports []jobs.Port) {
	if id == "" {
		return
	}
	m.addrMu.Lock()
	a, ok := m.addrs[id]
	if !ok || (!a.IPv4.IsValid() && !a.IPv6.IsValid()) {
		m.addrMu.Unlock()
		return
	}
	ep := Endpoint{ContainerID: id, Tenant: ref.Tenant, Job: ref.Job, Replica: ref.Replica, IPv4: a.IPv4, IPv6: a.IPv6, Ports: slices.Clone(ports)}
	old, had := m.endpoints[id]
	changed := !had || !endpointEqual(old, ep)
	if changed {
		m.endpoints[id] = ep
	}
	m.addrMu.Unlock()
	if changed {
		m.signalEndpoints()
	}
}

func (m *Manager) signalEndpoints() {
	select {
	case m.epChanged <- struct{}{}:
	default:
	}
}

func endpointEqual(a, b Endpoint) bool {
	return a.ContainerID == b.ContainerID && a.Tenant == b.Tenant && a.Job == b.Job && a.Replica == b.Replica &&
		a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6 && slices.Equal(a.Ports, b.Ports)
}
