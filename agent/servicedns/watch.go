package servicedns

import (
	"context"
	"log/slog"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/internal/etcdview"
)

// Watch keeps a View of every tenant's jobs and replica statuses current
// from etcd and hands each new one to update (e.g. Server.Update): one
// read of /berth/v1/tenants/ at one revision, a watch from the next, a new
// read after a compaction or a lost watch (internal/etcdview). While etcd
// is unreachable the last View stays: names keep being answered, as the
// containers keep running. It returns ctx.Err() when ctx ends. (berth-agent
// feeds its server from agent/nodenet's view, which follows more keys;
// Watch is the entry point for a server that needs only the names.)
func Watch(ctx context.Context, cli *clientv3.Client, update func(*View), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	etcdview.Follow(ctx, cli, []string{jobs.TenantsPrefix}, &catalogView{cat: jobs.NewCatalog(log), update: update}, log)
	return ctx.Err()
}

// catalogView turns a jobs.Catalog into an etcdview.View that publishes a
// new View after each load or burst of changes that touched names.
type catalogView struct {
	cat     *jobs.Catalog
	update  func(*View)
	changed bool
}

func (c *catalogView) Reset() { c.cat.Reset(); c.changed = true }
func (c *catalogView) Put(key string, value []byte) {
	c.changed = c.cat.Put(key, value) || c.changed
}
func (c *catalogView) Delete(key string) { c.changed = c.cat.Delete(key) || c.changed }
func (c *catalogView) Synced() {
	if c.changed {
		c.update(NewView(c.cat.Specs(), c.cat.Statuses()))
		c.changed = false
	}
}
