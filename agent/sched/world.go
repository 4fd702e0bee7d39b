package sched

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/volume"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// world is the leader's in-memory copy of what it watches. Entries carry
// the revision they are from: the leader records its own writes at once
// and must not let an older watch event undo them.
type world struct {
	nodes      map[string]Node
	goneAt     map[string]time.Time // nodes whose document vanished, and when this leader saw it
	jobs       map[jobs.JobRef]JobEntry
	assigns    map[string]revAssign
	tombs      map[string]int64 // assignment keys this leader deleted, at which revision
	volumes    map[jobs.ReplicaID]string
	replicated map[volume.ID]volume.Record
	placements map[jobs.JobRef]revPlacement
}

type revAssign struct {
	a   jobs.Assignment
	rev int64
}

type revPlacement struct {
	p   jobs.JobPlacement
	rev int64
}

func newWorld() *world {
	w := &world{goneAt: map[string]time.Time{}}
	w.reset()
	return w
}

// reset forgets everything but goneAt: how long a node has been gone must
// survive a reload, or a flapping watch would postpone moves forever.
func (w *world) reset() {
	w.nodes = map[string]Node{}
	w.jobs = map[jobs.JobRef]JobEntry{}
	w.assigns = map[string]revAssign{}
	w.tombs = map[string]int64{}
	w.volumes = map[jobs.ReplicaID]string{}
	w.replicated = map[volume.ID]volume.Record{}
	w.placements = map[jobs.JobRef]revPlacement{}
}

// apply takes watch events and tells whether placement must run again.
func (w *world) apply(events []*clientv3.Event, now time.Time, log *slog.Logger) bool {
	dirty := false
	for _, ev := range events {
		if ev.Type == mvccpb.DELETE {
			dirty = w.del(ev.Kv.Key, ev.Kv.ModRevision, now) || dirty
		} else {
			dirty = w.put(ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision, now, log) || dirty
		}
	}
	return dirty
}

func (w *world) put(k, v []byte, rev int64, now time.Time, log *slog.Logger) bool {
	key := string(k)
	switch {
	case strings.HasPrefix(key, nodedoc.NodesPrefix):
		name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, key)
		if !ok {
			return false
		}
		n := Node{Name: name} // an unreadable document: alive, but takes nothing new
		if doc, err := nodedoc.ParseNode(v); err != nil || doc.Name != name {
			log.Warn("unreadable node document, node takes no new replicas", "node", name, "err", err)
		} else {
			n = Node{Name: name, CPUMillis: int64(doc.CPU.Cores) * 1000, MemoryBytes: int64(min(doc.Memory.TotalBytes, 1<<62)),
				Labels: doc.Labels, Schedulable: doc.Ready && !doc.Draining, Draining: doc.Draining}
		}
		old, existed := w.nodes[name]
		w.nodes[name] = n
		delete(w.goneAt, name)
		return !existed || !sameNode(old, n)
	case strings.HasPrefix(key, jobs.TenantsPrefix):
		if ref, ok := jobs.ParseJobKey(key); ok {
			je := JobEntry{Ref: ref, Revision: rev}
			je.Job, je.Err = jobs.DecodeJob(v)
			if je.Err == nil && (je.Job.Tenant != ref.Tenant || je.Job.Name != ref.Job) {
				je.Err = fmt.Errorf("document names job %s/%s but is stored as %s", je.Job.Tenant, je.Job.Name, ref)
			}
			w.jobs[ref] = je
			return true
		}
		if ref, ok := jobs.ParsePlacementKey(key); ok {
			if cur, ok := w.placements[ref]; ok && cur.rev >= rev {
				return false
			}
			var p jobs.JobPlacement
			if err := json.Unmarshal(v, &p); err != nil {
				p = jobs.JobPlacement{} // rewritten on the next round
			}
			w.placements[ref] = revPlacement{p: p, rev: rev}
		}
		return false // status, usage: not the scheduler's business
	case strings.HasPrefix(key, jobs.AssignPrefix):
		if cur, ok := w.assigns[key]; ok && cur.rev >= rev {
			return false // our own write, already recorded
		}
		if t, ok := w.tombs[key]; ok && t >= rev {
			return false
		}
		delete(w.tombs, key)
		node, id, err := jobs.ParseAssignKey(key)
		if err != nil {
			log.Warn("ignoring malformed assignment key", "key", key, "err", err)
			return false
		}
		a, err := jobs.DecodeAssignment(v)
		if err != nil || a.Node != node || a.ID() != id {
			// Not ours to interpret; keep its key so placement deletes or replaces it.
			a = jobs.Assignment{Tenant: id.Tenant, Job: id.Job, Replica: id.Replica, Node: node}
		}
		w.assigns[key] = revAssign{a: a, rev: rev}
		return true
	case strings.HasPrefix(key, volume.Prefix):
		id, err := volume.ParseKey(key)
		if err != nil {
			return false
		}
		var r volume.Record
		if err := json.Unmarshal(v, &r); err != nil {
			log.Warn("unreadable volume record", "key", key, "err", err)
			return false
		}
		w.replicated[id] = r
		return true
	case strings.HasPrefix(key, jobs.VolumesPrefix):
		id, err := jobs.ParseVolumeHomeKey(key)
		if err != nil {
			return false
		}
		var home jobs.VolumeHome
		if err := json.Unmarshal(v, &home); err != nil || nodedoc.CheckName(home.Node) != nil {
			log.Warn("unreadable volume home", "key", key, "err", err)
			return false
		}
		w.volumes[id] = home.Node
		return true
	}
	return false
}

func (w *world) del(k []byte, rev int64, now time.Time) bool {
	key := string(k)
	switch {
	case strings.HasPrefix(key, nodedoc.NodesPrefix):
		name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, key)
		if _, alive := w.nodes[name]; !ok || !alive {
			return false
		}
		delete(w.nodes, name)
		w.goneAt[name] = now
		return true
	case strings.HasPrefix(key, jobs.TenantsPrefix):
		if ref, ok := jobs.ParseJobKey(key); ok {
			delete(w.jobs, ref)
			return true
		}
		if ref, ok := jobs.ParsePlacementKey(key); ok {
			if cur, ok := w.placements[ref]; ok && cur.rev < rev {
				delete(w.placements, ref)
			}
		}
		return false
	case strings.HasPrefix(key, jobs.AssignPrefix):
		cur, ok := w.assigns[key]
		if !ok || cur.rev >= rev {
			return false
		}
		delete(w.assigns, key)
		return true
	case strings.HasPrefix(key, volume.Prefix):
		if id, err := volume.ParseKey(key); err == nil {
			delete(w.replicated, id)
			return true
		}
	case strings.HasPrefix(key, jobs.VolumesPrefix):
		if id, err := jobs.ParseVolumeHomeKey(key); err == nil {
			delete(w.volumes, id)
			return true
		}
	}
	return false
}

func (w *world) putAssign(key string, a jobs.Assignment, rev int64) {
	w.assigns[key] = revAssign{a: a, rev: rev}
	delete(w.tombs, key)
}

func (w *world) deleteAssign(key string, rev int64) {
	delete(w.assigns, key)
	w.tombs[key] = rev
}

// input is the snapshot for Place. Nodes that hold assignments but have no
// document start their grace period now if it had not started: a new leader
// waits a full grace period before moving anything.
func (w *world) input(now time.Time, grace time.Duration, epoch int64, self string) (Input, string) {
	in := Input{VolumeHomes: w.volumes, Epoch: epoch, Now: now}
	for _, n := range w.nodes {
		in.Nodes = append(in.Nodes, n)
	}
	for _, je := range w.jobs {
		in.Jobs = append(in.Jobs, je)
	}
	holding := map[string]bool{}
	for _, ra := range w.assigns {
		in.Assignments = append(in.Assignments, ra.a)
		node := ra.a.Node
		holding[node] = true
		if _, alive := w.nodes[node]; alive {
			continue
		}
		if _, ok := w.goneAt[node]; !ok {
			w.goneAt[node] = now
		}
	}
	for node := range w.goneAt {
		if !holding[node] {
			delete(w.goneAt, node) // nothing left to move
		}
	}
	in.Copies = copyNodes(w.replicated, func(n string) bool { _, ok := w.nodes[n]; return ok })
	var held string
	in.Lost, held = lostNodes(w.goneAt, len(w.nodes), self, now, grace)
	return in, held
}

// copyNodes lists per replica the live nodes with an up-to-date copy of
// every one of its replicated volumes, the owner first.
func copyNodes(recs map[volume.ID]volume.Record, alive func(string) bool) map[jobs.ReplicaID][]string {
	out := map[jobs.ReplicaID][]string{}
	for id, r := range recs {
		rid := jobs.ReplicaID{Tenant: id.Tenant, Job: id.Job, Replica: id.Replica}
		var nodes []string
		for _, c := range r.Copies {
			if c.State == volume.UpToDate && alive(c.Node) {
				nodes = append(nodes, c.Node)
			}
		}
		slices.SortStableFunc(nodes, func(a, b string) int {
			return cmp.Compare(boolInt(b == r.Owner), boolInt(a == r.Owner))
		})
		if prev, ok := out[rid]; ok {
			nodes = slices.DeleteFunc(nodes, func(n string) bool { return !slices.Contains(prev, n) })
		}
		out[rid] = nodes
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// lostNodes decides which vanished nodes' replicas move: those gone for
// the grace period, except
//   - self, the scheduler's own node: it is running this code, so its
//     missing document is etcd trouble (a keepalive late after a leader
//     change), not a dead node;
//   - all of them while more than half of the nodes are gone at once:
//     that is a partition or etcd trouble, not deaths, and moving every
//     replica onto the few nodes left would only make it worse (held
//     says so, for the log).
func lostNodes(goneAt map[string]time.Time, alive int, self string, now time.Time, grace time.Duration) (lost map[string]bool, held string) {
	lost = map[string]bool{}
	gone := 0
	for node, since := range goneAt {
		if node == self {
			continue
		}
		gone++
		if now.Sub(since) >= grace {
			lost[node] = true
		}
	}
	if len(lost) > 0 && 2*gone > gone+alive {
		return map[string]bool{}, fmt.Sprintf("%d of %d nodes are gone at once: moving nothing until more are back (a partition or etcd trouble, not node deaths)", gone, gone+alive)
	}
	return lost, ""
}

// graceDue returns when the next vanished node's grace period ends after
// the round at last (nodes already past it were handled by that round).
func (w *world) graceDue(grace time.Duration, last time.Time) (time.Time, bool) {
	var due time.Time
	for _, since := range w.goneAt {
		t := since.Add(grace)
		if t.After(last) && (due.IsZero() || t.Before(due)) {
			due = t
		}
	}
	return due, !due.IsZero()
}

// placementUnits writes placement summaries that changed (ignoring the
// Updated time) and deletes those of jobs that are gone.
func (w *world) placementUnits(list []jobs.JobPlacement) ([]unit, error) {
	var units []unit
	want := map[jobs.JobRef]bool{}
	for _, p := range list {
		ref := jobs.JobRef{Tenant: p.Tenant, Job: p.Job}
		want[ref] = true
		if cur, ok := w.placements[ref]; ok && samePlacement(cur.p, p) {
			continue
		}
		data, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("encode placement of %s: %w", ref, err)
		}
		key := jobs.PlacementKey(ref.Tenant, ref.Job)
		p := p
		units = append(units, unit{
			ops: []clientv3.Op{clientv3.OpPut(key, string(data))}, bytes: len(key) + len(data),
			apply: func(w *world, rev int64) { w.placements[ref] = revPlacement{p: p, rev: rev} },
		})
	}
	for ref := range w.placements {
		if want[ref] {
			continue
		}
		key := jobs.PlacementKey(ref.Tenant, ref.Job)
		units = append(units, unit{
			ops: []clientv3.Op{clientv3.OpDelete(key)}, bytes: len(key),
			apply: func(w *world, rev int64) { delete(w.placements, ref) },
		})
	}
	return units, nil
}

func samePlacement(a, b jobs.JobPlacement) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
