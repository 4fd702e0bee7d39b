package nodenet

import (
	"encoding/json"
	"net/netip"
	"strings"
	"sync"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/subnet"
)

// Prefixes the node network follows: the subnet leases (routes), the node
// documents (the nodes' addresses) and the tenants' replica statuses
// (every container's address and tenant, for the tenant rules).
var Prefixes = []string{subnet.LeasesPrefix, nodedoc.NodesPrefix, jobs.TenantsPrefix}

// clusterView is the in-memory copy of the followed keys (etcdview.View).
type clusterView struct {
	mu       sync.Mutex
	leases   map[string]subnet.Lease
	nodes    map[string][]netip.Addr
	statuses map[string]jobs.ReplicaStatus // status key -> status
	specs    map[string]jobs.Job           // job key -> job
	changed  chan struct{}
}

func newClusterView() *clusterView {
	v := &clusterView{changed: make(chan struct{}, 1)}
	v.Reset()
	return v
}

func (v *clusterView) Reset() {
	v.mu.Lock()
	v.leases, v.nodes = map[string]subnet.Lease{}, map[string][]netip.Addr{}
	v.statuses, v.specs = map[string]jobs.ReplicaStatus{}, map[string]jobs.Job{}
	v.mu.Unlock()
}

func (v *clusterView) Put(key string, value []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case strings.HasPrefix(key, subnet.LeasesPrefix):
		var l subnet.Lease
		if json.Unmarshal(value, &l) == nil && l.Subnet.IsValid() && l.Node != "" {
			v.leases[key] = l
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
	case strings.HasPrefix(key, jobs.TenantsPrefix) && strings.Contains(key, "/status/"):
		var rs jobs.ReplicaStatus
		if json.Unmarshal(value, &rs) == nil && rs.Tenant != "" {
			v.statuses[key] = rs
		}
	case strings.HasPrefix(key, jobs.TenantsPrefix):
		if _, ok := jobs.ParseJobKey(key); !ok {
			return
		}
		var j jobs.Job
		if json.Unmarshal(value, &j) == nil && j.Tenant != "" {
			v.specs[key] = j
		}
	}
}

func (v *clusterView) Delete(key string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.leases, key)
	delete(v.statuses, key)
	delete(v.specs, key)
	if name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, key); ok {
		delete(v.nodes, name)
	}
}

func (v *clusterView) Synced() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// snapshot is a consistent copy for one reconcile.
type snapshot struct {
	Leases   []subnet.Lease
	Nodes    map[string][]netip.Addr
	Statuses []jobs.ReplicaStatus
	Specs    []jobs.Job
}

func (v *clusterView) snapshot() snapshot {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := snapshot{Nodes: make(map[string][]netip.Addr, len(v.nodes))}
	for _, l := range v.leases {
		s.Leases = append(s.Leases, l)
	}
	for n, a := range v.nodes {
		s.Nodes[n] = a
	}
	for _, st := range v.statuses {
		s.Statuses = append(s.Statuses, st)
	}
	for _, j := range v.specs {
		s.Specs = append(s.Specs, j)
	}
	return s
}
