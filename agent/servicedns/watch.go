package servicedns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
)

// Watch keeps a View of every tenant's jobs and replica statuses current
// from etcd and hands each new one to update (e.g. Server.Update). It
// reads /berth/v1/tenants/ at one revision and watches from the next, so
// no change falls between; after a compaction or a lost watch it reads
// again. While etcd is unreachable the last View stays: names keep being
// answered, as the containers keep running. It returns ctx.Err() when ctx
// ends.
func Watch(ctx context.Context, cli *clientv3.Client, update func(*View), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	backoff := time.Second
	for {
		w := &watchState{specs: map[jobs.JobRef]jobs.Job{}, statuses: map[string]jobs.ReplicaStatus{}, log: log}
		rev, err := w.load(ctx, cli)
		if err == nil {
			update(w.view())
			backoff = time.Second
			err = w.follow(ctx, cli, rev, update)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("servicedns: etcd watch of service names lost; keeping the last names and reading again", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// watchState is what Watch has read: the documents the View is built from.
type watchState struct {
	specs    map[jobs.JobRef]jobs.Job
	statuses map[string]jobs.ReplicaStatus // by key
	log      *slog.Logger
}

func (w *watchState) load(ctx context.Context, cli *clientv3.Client) (int64, error) {
	gctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, jobs.TenantsPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", jobs.TenantsPrefix, err)
	}
	for _, kv := range resp.Kvs {
		w.apply(string(kv.Key), kv.Value, false)
	}
	return resp.Header.Revision, nil
}

func (w *watchState) follow(ctx context.Context, cli *clientv3.Client, rev int64, update func(*View)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, jobs.TenantsPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok = <-wch:
		}
		changed := false
		for {
			if !ok {
				return errors.New("etcd closed the watch")
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("watch from revision %d: compacted at %d", rev+1, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", jobs.TenantsPrefix, err)
			}
			for _, ev := range resp.Events {
				changed = w.apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete) || changed
			}
			if resp.Header.Revision > 0 {
				rev = resp.Header.Revision
			}
			// Take what else is already there: one View per burst.
			select {
			case resp, ok = <-wch:
				continue
			default:
			}
			break
		}
		if changed {
			update(w.view())
		}
	}
}

// apply records one key's document (or its deletion) and says whether it
// was one the names are built from.
func (w *watchState) apply(key string, value []byte, deleted bool) bool {
	if ref, ok := jobs.ParseJobKey(key); ok {
		delete(w.specs, ref)
		if deleted {
			return true
		}
		j, err := jobs.DecodeJob(value)
		if err == nil && (j.Tenant != ref.Tenant || j.Name != ref.Job) {
			err = fmt.Errorf("names %s/%s", j.Tenant, j.Name)
		}
		if err != nil {
			w.log.Warn("servicedns: job document is invalid; it gets no service name until fixed", "key", key, "err", err)
			return true
		}
		w.specs[ref] = j
		return true
	}
	id, ok := parseStatusKey(key)
	if !ok {
		return false // placement, usage, ...: not names
	}
	delete(w.statuses, key)
	if deleted {
		return true
	}
	var st jobs.ReplicaStatus
	if err := json.Unmarshal(value, &st); err != nil || st.Tenant != id.Tenant || st.Job != id.Job || st.Replica != id.Replica {
		w.log.Warn("servicedns: replica status is invalid; the replica gets no address until it is rewritten", "key", key, "err", err)
		return true
	}
	w.statuses[key] = st
	return true
}

func (w *watchState) view() *View {
	specs := make([]jobs.Job, 0, len(w.specs))
	for _, j := range w.specs {
		specs = append(specs, j)
	}
	sts := make([]jobs.ReplicaStatus, 0, len(w.statuses))
	for _, st := range w.statuses {
		sts = append(sts, st)
	}
	return NewView(specs, sts)
}

// parseStatusKey splits tenants/<tenant>/status/<job>/<replica>.
func parseStatusKey(key string) (jobs.ReplicaID, bool) {
	rest, ok := strings.CutPrefix(key, jobs.TenantsPrefix)
	if !ok {
		return jobs.ReplicaID{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "status" || jobs.CheckTenantName(parts[0]) != nil || jobs.CheckJobName(parts[2]) != nil {
		return jobs.ReplicaID{}, false
	}
	n, err := strconv.Atoi(parts[3])
	if err != nil || n < 0 || n >= jobs.MaxReplicas || strconv.Itoa(n) != parts[3] {
		return jobs.ReplicaID{}, false
	}
	return jobs.ReplicaID{Tenant: parts[0], Job: parts[2], Replica: n}, true
}
