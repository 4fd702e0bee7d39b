package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
	"github.com/berth-os/berth/internal/atomicfile"
)

// usageBook accumulates each tenant's usage on this node from its cgroup
// subtree: CPU-seconds from the CPU accounting counter and memory
// GiB-hours by integrating memory in use over time. It is kept on disk so
// an agent restart loses nothing, and published under
// tenants/<tenant>/usage/<node> for billing.
type usageBook struct {
	file string
	mu   sync.Mutex
	T    map[string]*tenantUsage `json:"tenants"`
}

type tenantUsage struct {
	CPUSeconds     float64   `json:"cpu_seconds"`
	MemoryGiBHours float64   `json:"memory_gib_hours"`
	LastCPUNanos   uint64    `json:"last_cpu_nanos"`
	LastSample     time.Time `json:"last_sample"`
	published      string
	publishedAt    time.Time
	publishedUsage jobs.Usage
}

// usagePublishEvery is how often a tenant's usage on this node is written
// to etcd while it keeps changing (it is sampled every UsageInterval and
// kept on disk in between): 12 writes an hour per tenant and node instead
// of one per sample (360 with the 10 s default).
const usagePublishEvery = 5 * time.Minute

// usageWriteDue decides whether a tenant's usage is written now: the first
// time, when a figure that was zero no longer is (the first memory figure
// needs a second sample), or usagePublishEvery after the last write.
func usageWriteDue(published, cur jobs.Usage, publishedAt, now time.Time) bool {
	switch {
	case publishedAt.IsZero():
		return true
	case published.CPUSeconds == cur.CPUSeconds && published.MemoryGiBHours == cur.MemoryGiBHours:
		return false
	case published.CPUSeconds == 0 && cur.CPUSeconds != 0, published.MemoryGiBHours == 0 && cur.MemoryGiBHours != 0:
		return true
	}
	return now.Sub(publishedAt) >= usagePublishEvery
}

// maxGap bounds how long one memory sample is assumed to have lasted, when
// the agent was down between two samples.
const maxGap = 10 * time.Minute

func openUsageBook(dir string) (*usageBook, error) {
	b := &usageBook{T: map[string]*tenantUsage{}}
	if dir == "" {
		return b, nil
	}
	b.file = filepath.Join(dir, "usage.json")
	data, err := os.ReadFile(b.file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return b, nil
	case err != nil:
		return nil, fmt.Errorf("usage book: %w", err)
	}
	if err := json.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("usage book %s: %w (move it away to start counting again)", b.file, err)
	}
	if b.T == nil {
		b.T = map[string]*tenantUsage{}
	}
	return b, nil
}

// sample adds one reading of a tenant's group.
func (b *usageBook) sample(tenant string, cpuNanos, memBytes uint64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.T[tenant]
	if u == nil {
		u = &tenantUsage{}
		b.T[tenant] = u
	}
	delta := cpuNanos
	if cpuNanos >= u.LastCPUNanos {
		delta = cpuNanos - u.LastCPUNanos
	} // else: the group was recreated and counts from zero again
	u.CPUSeconds += float64(delta) / 1e9
	if !u.LastSample.IsZero() {
		dt := min(now.Sub(u.LastSample), maxGap)
		if dt > 0 {
			u.MemoryGiBHours += float64(memBytes) / (1 << 30) * dt.Hours()
		}
	}
	u.LastCPUNanos, u.LastSample = cpuNanos, now
}

func (b *usageBook) save() error {
	if b.file == "" {
		return nil
	}
	b.mu.Lock()
	data, err := json.Marshal(b)
	b.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(b.file), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(b.file, data, 0o644)
}

// tenants lists every tenant with containers here or with usage recorded.
func (m *Manager) tenants() []string {
	seen := map[string]bool{}
	m.mu.Lock()
	for ref := range m.workers {
		seen[ref.Tenant] = true
	}
	m.mu.Unlock()
	m.usage.mu.Lock()
	for t := range m.usage.T {
		seen[t] = true
	}
	m.usage.mu.Unlock()
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	return out
}

func (m *Manager) accountUsage(ctx context.Context) {
	tick := time.NewTicker(m.o.UsageInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.SampleUsage(ctx)
	}
}

// SampleUsage reads every tenant's group once, saves the book and
// publishes what changed.
func (m *Manager) SampleUsage(ctx context.Context) {
	now := time.Now()
	for _, t := range m.tenants() {
		cpu, mem, err := runtime.GroupUsage(path.Join(m.o.TenantCgroups, t))
		if err != nil {
			continue // no group on this node (yet, or any more)
		}
		m.usage.sample(t, cpu, mem, now)
	}
	if err := m.usage.save(); err != nil {
		m.log.Warn("usage book not saved", "err", err)
	}
	m.publishUsage(ctx)
}

func (m *Manager) publishUsage(ctx context.Context) {
	m.usage.mu.Lock()
	type pending struct {
		tenant string
		data   []byte
		u      *tenantUsage
		usage  jobs.Usage
	}
	var todo []pending
	now := time.Now()
	for t, u := range m.usage.T {
		cur := jobs.Usage{CPUSeconds: u.CPUSeconds, MemoryGiBHours: u.MemoryGiBHours, Updated: u.LastSample.UTC()}
		data, _ := json.Marshal(cur)
		if string(data) != u.published && usageWriteDue(u.publishedUsage, cur, u.publishedAt, now) {
			todo = append(todo, pending{t, data, u, cur})
		}
	}
	m.usage.mu.Unlock()
	for _, p := range todo {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := m.cli.Put(cctx, jobs.UsageKey(p.tenant, m.o.Node), string(p.data))
		cancel()
		if err != nil {
			continue
		}
		m.usage.mu.Lock()
		p.u.published, p.u.publishedAt, p.u.publishedUsage = string(p.data), now, p.usage
		m.usage.mu.Unlock()
	}
}
