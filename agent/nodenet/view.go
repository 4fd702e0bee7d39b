package nodenet

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/subnet"
)

// Prefixes the node network follows: the subnet leases (routes), the node
// documents (the nodes' addresses) and the tenants' jobs and replica
// statuses (every container's address and tenant; the service names).
var Prefixes = []string{subnet.LeasesPrefix, nodedoc.NodesPrefix, jobs.TenantsPrefix}

// clusterView is the in-memory copy of the followed keys (an
// internal/etcdview.View); changed is signalled after each load or burst.
type clusterView struct {
	mu     sync.Mutex
	leases map[string]subnet.Lease
	nodes  map[string][]netip.Addr // from the node documents there now
	// last is every node's addresses as its last document gave them,
	// kept when the document goes (and across reloads): a node document
	// lives on a 10 s lease that an overloaded node can lose for a moment,
	// and its routes must not flap with it. A node's subnets stay routed
	// to its last addresses while it holds their leases (a dead node's
	// packets are dropped there, as they would be anyway).
	last    map[string][]netip.Addr
	catalog *jobs.Catalog
	changed chan struct{}
}

func newClusterView(log *slog.Logger) *clusterView {
	v := &clusterView{changed: make(chan struct{}, 1), catalog: jobs.NewCatalog(log), last: map[string][]netip.Addr{}}
	v.Reset()
	return v
}

func (v *clusterView) Reset() {
	v.mu.Lock()
	v.leases, v.nodes = map[string]subnet.Lease{}, map[string][]netip.Addr{}
	v.catalog.Reset()
	v.mu.Unlock()
}

func (v *clusterView) Put(key string, value []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case strings.HasPrefix(key, subnet.LeasesPrefix):
		var l subnet.Lease
		if json.Unmarshal(value, &l) == nil && l.Subnet.IsValid() && l.Node != "" && subnet.LeaseKey(l.Subnet) == key {
			v.leases[key] = l
		} else {
			delete(v.leases, key)
		}
	case strings.HasPrefix(key, nodedoc.NodesPrefix):
		name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, key)
		var d nodedoc.Node
		if !ok || json.Unmarshal(value, &d) != nil {
			return
		}
		var addrs []netip.Addr
		for _, a := range d.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				addrs = append(addrs, ip.Unmap())
			}
		}
		v.nodes[name] = addrs
		if len(addrs) > 0 {
			v.last[name] = addrs
		}
	case strings.HasPrefix(key, jobs.TenantsPrefix):
		v.catalog.Put(key, value)
	}
}

func (v *clusterView) Delete(key string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.leases, key)
	if name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, key); ok {
		delete(v.nodes, name)
	}
	v.catalog.Delete(key)
}

func (v *clusterView) Synced() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// snapshot is a consistent copy for one reconcile.
type snapshot struct {
	Leases []subnet.Lease
	// Nodes are the addresses of the nodes with a document, and of the
	// nodes holding a lease as their last document gave them.
	Nodes    map[string][]netip.Addr
	Statuses []jobs.ReplicaStatus
	Specs    []jobs.Job
}

func (v *clusterView) snapshot() snapshot {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := snapshot{Nodes: make(map[string][]netip.Addr, len(v.nodes)), Statuses: v.catalog.Statuses(), Specs: v.catalog.Specs()}
	for _, l := range v.leases {
		s.Leases = append(s.Leases, l)
		if a, ok := v.last[l.Node]; ok {
			s.Nodes[l.Node] = a
		}
	}
	for n, a := range v.nodes {
		s.Nodes[n] = a
	}
	return s
}
