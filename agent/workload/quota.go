package workload

import (
	"context"
	"encoding/json"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/netsetup"
	"github.com/berth-os/berth/agent/runtime"
)

// watchQuotas follows tenantquota/ and applies each tenant's limits to its
// cgroup subtree on this node, so a tenant's containers together never
// exceed its quota, whatever each job asks for.
func (m *Manager) watchQuotas(ctx context.Context) {
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := m.cli.Get(gctx, jobs.QuotaPrefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			m.mu.Lock()
			m.quotas = map[string]jobs.Quota{}
			m.mu.Unlock()
			for _, kv := range resp.Kvs {
				m.setQuota(string(kv.Key), kv.Value)
			}
			wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range m.cli.Watch(wctx, jobs.QuotaPrefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					if ev.Type == mvccpb.DELETE {
						m.setQuota(string(ev.Kv.Key), nil)
					} else {
						m.setQuota(string(ev.Kv.Key), ev.Kv.Value)
					}
				}
			}
			wcancel()
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func (m *Manager) setQuota(key string, value []byte) {
	tenant := strings.TrimPrefix(key, jobs.QuotaPrefix)
	var q jobs.Quota
	if value != nil {
		if err := json.Unmarshal(value, &q); err != nil {
			m.log.Error("unreadable tenant quota ignored", "key", key, "err", err)
			return
		}
	}
	m.mu.Lock()
	m.quotas[tenant] = q
	m.mu.Unlock()
	m.applyQuota(tenant)
}

// applyQuota sets the tenant's limits on its cgroup subtree (0 = unlimited).
func (m *Manager) applyQuota(tenant string) {
	m.mu.Lock()
	q := m.quotas[tenant]
	m.mu.Unlock()
	if err := runtime.SetGroupLimits(path.Join(m.o.TenantCgroups, tenant), q.CPUMillis, q.MemoryBytes); err != nil {
		m.log.Warn("tenant quota not applied", "tenant", tenant, "err", err)
	}
}

func (m *Manager) rememberAddress(id string, a netsetup.Attachment) {
	m.addrMu.Lock()
	m.addrs[id] = a
	m.addrMu.Unlock()
}

func (m *Manager) forgetAddress(id string) {
	m.addrMu.Lock()
	delete(m.addrs, id)
	_, had := m.endpoints[id]
	delete(m.endpoints, id)
	m.addrMu.Unlock()
	if had {
		m.signalEndpoints()
	}
}

// addresses returns the container's addresses; an adopted container's are
// asked again of the network (Attach is idempotent).
func (m *Manager) addresses(id string) (ip4, ip6 string) {
	if id == "" {
		return "", ""
	}
	m.addrMu.Lock()
	a, ok := m.addrs[id]
	m.addrMu.Unlock()
	if !ok {
		n, err := m.network()
		if err != nil || n == nil {
			return "", ""
		}
		if a, err = n.Attach(id); err != nil {
			return "", ""
		}
		m.rememberAddress(id, a)
	}
	if a.IPv4.IsValid() {
		ip4 = a.IPv4.String()
	}
	if a.IPv6.IsValid() {
		ip6 = a.IPv6.String()
	}
	return ip4, ip6
}
