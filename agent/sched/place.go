package sched

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/jobs"
)

// Node is what placement knows of a live node (its document exists).
type Node struct {
	Name        string
	CPUMillis   int64 // cpu.cores * 1000
	MemoryBytes int64 // memory.total_bytes
	Labels      map[string]string
	// Schedulable is false for a node that is alive but takes no new
	// replicas (not ready, draining, or an unreadable document).
	Schedulable bool
	// Draining: the node is being emptied for a reboot. Unlike a merely
	// unschedulable node, its replicas move at once to other nodes that
	// fit; those that fit nowhere else, or whose volumes live on it, stay.
	Draining bool
}

// JobEntry is a job with the mod revision of its key; Err marks a document
// that failed to decode: its replicas are left alone.
type JobEntry struct {
	Job      jobs.Job
	Revision int64
	Ref      jobs.JobRef
	Err      error
}

// Input is an in-memory snapshot of the cluster.
type Input struct {
	Nodes       []Node          // live nodes
	Lost        map[string]bool // nodes gone for at least the grace period: their replicas move
	Jobs        []JobEntry
	Assignments []jobs.Assignment
	VolumeHomes map[jobs.ReplicaID]string
	// Copies lists, for replicas with replicated volumes, the live nodes
	// holding an up-to-date copy of every one of them (the owner first):
	// the replica runs only there. An empty list: none is alive, the
	// replica waits for one.
	Copies map[jobs.ReplicaID][]string
	Epoch  int64
	Now    time.Time
}

// Change is one atomic step: delete Delete (if set) and put Put (if set) in
// the same transaction, so a moved replica is never on two nodes.
type Change struct {
	Delete string
	Put    *jobs.Assignment
}

// Plan is what Place decided.
type Plan struct {
	Changes    []Change
	Placements []jobs.JobPlacement // one per input job, sorted by tenant and job
}

// nodeCapacity is a live node with the CPU, memory and ports left on it.
type nodeCapacity struct {
	Node
	freeCPU, freeMem int64
	ports            map[string]bool // "80/tcp" published by replicas on it
}

func (n *nodeCapacity) fits(j *jobs.Job) bool { return n.takesNew() && n.hasRoom(j) }

// takesNew tells whether the node may get replicas it does not run yet.
func (n *nodeCapacity) takesNew() bool { return n.Schedulable && !n.Draining }

// hasRoom ignores Schedulable: a replica already on a not-ready node may
// take a job update in place.
func (n *nodeCapacity) hasRoom(j *jobs.Job) bool {
	if n.freeCPU < j.Resources.CPUMillis || n.freeMem < j.Resources.MemoryBytes {
		return false
	}
	for _, p := range j.Ports {
		if n.ports[portKey(p)] {
			return false
		}
	}
	return matches(n.Labels, j.NodeSelector)
}

func (n *nodeCapacity) take(j *jobs.Job, sign int64) {
	n.freeCPU -= sign * j.Resources.CPUMillis
	n.freeMem -= sign * j.Resources.MemoryBytes
	for _, p := range j.Ports {
		if n.ports == nil {
			n.ports = map[string]bool{}
		}
		n.ports[portKey(p)] = sign > 0
	}
}

func portKey(p jobs.Port) string { return fmt.Sprintf("%d/%s", p.Host, p.Protocol) }

func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// toPlace is a replica that needs a node: new, or on a lost node, or no
// longer fitting its node after a job change.
type toPlace struct {
	id     jobs.ReplicaID
	prev   *jobs.Assignment // current assignment, deleted when the new one is put
	update bool             // prev runs an older revision of the job that no longer fits its node
	drain  bool             // prev is on a draining node
}

// jobTally collects what happened to a job's replicas for its JobPlacement.
type jobTally struct {
	placed, waiting int
	waitingOn       map[string]int
	unplaced        int
	outdated        int // running an older revision: the new one fits nowhere
	reason          string
	// Replicas that stay on draining nodes: no other node fits them
	// (stuck), or their volumes live there (pinned).
	stuck, pinned     int
	stuckOn, pinnedOn map[string]int
	stuckReason       string
}

// Place decides assignments from a snapshot. It is deterministic: the same
// input gives the same plan. Rules: replicas on live nodes stay, except on
// draining nodes, whose replicas move (Generation+1) to another node that
// fits and otherwise stay; replicas on lost nodes move unless their volumes
// live there; replicas on nodes gone within grace wait; a job change
// updates replicas in place when they still fit; new and moving replicas
// go to the node with the fewest replicas of the job, then the most free
// memory (spread), or to the tightest fit (spread: false).
func Place(in Input) Plan {
	p := &placer{in: in, nodes: map[string]*nodeCapacity{}, jobs: map[jobs.JobRef]*JobEntry{}, tally: map[jobs.JobRef]*jobTally{}}
	return p.run()
}

type placer struct {
	in      Input
	order   []*nodeCapacity // sorted by name
	nodes   map[string]*nodeCapacity
	jobs    map[jobs.JobRef]*JobEntry
	tally   map[jobs.JobRef]*jobTally
	kept    map[jobs.ReplicaID]jobs.Assignment
	changes []Change
}

func (p *placer) run() Plan {
	for _, n := range p.in.Nodes {
		ns := &nodeCapacity{Node: n, freeCPU: n.CPUMillis, freeMem: n.MemoryBytes}
		p.nodes[n.Name] = ns
		p.order = append(p.order, ns)
	}
	sort.Slice(p.order, func(a, b int) bool { return p.order[a].Name < p.order[b].Name })
	refs := make([]jobs.JobRef, 0, len(p.in.Jobs))
	for i := range p.in.Jobs {
		je := &p.in.Jobs[i]
		p.jobs[je.Ref] = je
		p.tally[je.Ref] = &jobTally{waitingOn: map[string]int{}, stuckOn: map[string]int{}, pinnedOn: map[string]int{}}
		refs = append(refs, je.Ref)
	}
	sort.Slice(refs, func(a, b int) bool { return refLess(refs[a], refs[b]) })

	var pending []toPlace
	var updates []jobs.Assignment
	p.kept = map[jobs.ReplicaID]jobs.Assignment{}
	for _, a := range p.current() {
		id := a.ID()
		je := p.jobs[jobs.JobRef{Tenant: id.Tenant, Job: id.Job}]
		switch {
		case je == nil || je.Err == nil && (je.Job.Stopped || id.Replica >= je.Job.Replicas):
			p.changes = append(p.changes, Change{Delete: a.Key()})
		case p.nodes[a.Node] != nil:
			n := p.nodes[a.Node]
			n.take(&a.Spec, 1)
			p.kept[id] = a
			if n.Draining && je.Err == nil {
				if !p.pinnedTo(id, &je.Job, a.Node) {
					// Moved with the job's current spec, which also
					// takes any job change; kept until then.
					prev := a
					pending = append(pending, toPlace{id: id, prev: &prev, drain: true})
					continue
				}
				p.tally[je.Ref].pinned++
				p.tally[je.Ref].pinnedOn[a.Node]++
			}
			if je.Err == nil && a.JobRevision != je.Revision {
				updates = append(updates, a)
			}
		case p.in.Lost[a.Node] && je.Err == nil && !p.pinnedTo(id, &je.Job, a.Node):
			prev := a
			pending = append(pending, toPlace{id: id, prev: &prev})
		default: // gone within grace, or lost but holding the replica's volumes
			p.kept[id] = a
			p.tally[je.Ref].waiting++
			p.tally[je.Ref].waitingOn[a.Node]++
		}
	}
	// Job changes: in place when the new spec still fits the same node.
	for _, a := range updates {
		if !p.updateInPlace(a) {
			prev := a
			pending = append(pending, toPlace{id: a.ID(), prev: &prev, update: true})
		}
	}
	// Missing replicas, job by job.
	moving := make(map[jobs.ReplicaID]bool, len(pending))
	for _, t := range pending {
		moving[t.id] = true
	}
	for _, ref := range refs {
		je := p.jobs[ref]
		if je.Err != nil || je.Job.Stopped {
			continue
		}
		for r := 0; r < je.Job.Replicas; r++ {
			id := jobs.ReplicaID{Tenant: ref.Tenant, Job: ref.Job, Replica: r}
			if _, ok := p.kept[id]; !ok && !moving[id] {
				pending = append(pending, toPlace{id: id})
			}
		}
	}
	sort.SliceStable(pending, func(a, b int) bool { return replicaLess(pending[a].id, pending[b].id) })
	p.placeAll(pending)
	for id, a := range p.kept {
		if _, isNode := p.nodes[a.Node]; isNode {
			p.tally[jobs.JobRef{Tenant: id.Tenant, Job: id.Job}].placed++
		}
	}
	plan := Plan{Changes: p.changes}
	for _, ref := range refs {
		plan.Placements = append(plan.Placements, p.summary(p.jobs[ref], p.tally[ref]))
	}
	return plan
}

// current returns one assignment per replica, sorted; duplicates (never
// written by this scheduler, but possible by hand) lose to the highest
// generation and are deleted.
func (p *placer) current() []jobs.Assignment {
	list := append([]jobs.Assignment(nil), p.in.Assignments...)
	sort.Slice(list, func(a, b int) bool {
		ia, ib := list[a].ID(), list[b].ID()
		if ia != ib {
			return replicaLess(ia, ib)
		}
		if list[a].Generation != list[b].Generation {
			return list[a].Generation > list[b].Generation
		}
		return list[a].Node < list[b].Node
	})
	out := list[:0]
	for i, a := range list {
		if i > 0 && list[i-1].ID() == a.ID() {
			p.changes = append(p.changes, Change{Delete: a.Key()})
			continue
		}
		out = append(out, a)
	}
	return out
}

// updateInPlace puts the job's current spec into a (on a live node) when
// it still fits there or the replica's volumes live there; otherwise a
// keeps running the old spec and false is returned.
func (p *placer) updateInPlace(a jobs.Assignment) bool {
	je := p.jobs[jobs.JobRef{Tenant: a.Tenant, Job: a.Job}]
	n := p.nodes[a.Node]
	n.take(&a.Spec, -1)
	if !n.hasRoom(&je.Job) && !p.pinnedTo(a.ID(), &je.Job, a.Node) {
		n.take(&a.Spec, 1)
		return false
	}
	n.take(&je.Job, 1)
	up := a
	up.Spec, up.JobRevision, up.Epoch, up.Assigned = je.Job, je.Revision, p.in.Epoch, p.in.Now
	p.kept[a.ID()] = up
	p.changes = append(p.changes, Change{Put: &up})
	return true
}

// pinnedTo tells whether the replica's volumes live on node, and on no
// other node it could run on.
func (p *placer) pinnedTo(id jobs.ReplicaID, j *jobs.Job, node string) bool {
	if c, ok := p.in.Copies[id]; ok {
		return len(c) == 1 && c[0] == node
	}
	home, ok := p.in.VolumeHomes[id]
	return ok && len(j.Volumes) > 0 && home == node
}

func (p *placer) placeAll(pending []toPlace) {
	// Replicas of the job per node index, rebuilt when the job changes.
	var cur jobs.JobRef
	count := make([]int, len(p.order))
	index := make(map[string]int, len(p.order))
	for i, n := range p.order {
		index[n.Name] = i
	}
	for _, t := range pending {
		ref := jobs.JobRef{Tenant: t.id.Tenant, Job: t.id.Job}
		je, tally := p.jobs[ref], p.tally[ref]
		if ref != cur {
			cur = ref
			clear(count)
			for id, a := range p.kept {
				if id.Tenant == ref.Tenant && id.Job == ref.Job {
					if i, ok := index[a.Node]; ok {
						count[i]++
					}
				}
			}
		}
		best := p.choose(&je.Job, t.id, count)
		if best < 0 && t.drain {
			// Stays on the draining node; a job change still applies
			// there if it fits, as for any other replica.
			tally.stuck++
			tally.stuckOn[t.prev.Node]++
			if tally.stuckReason == "" {
				tally.stuckReason = p.why(&je.Job, t.id)
			}
			if t.prev.JobRevision != je.Revision && !p.updateInPlace(*t.prev) {
				tally.outdated++
				if tally.reason == "" {
					tally.reason = p.why(&je.Job, t.id)
				}
			}
			continue
		}
		if best < 0 {
			if t.update {
				tally.outdated++
			} else {
				tally.unplaced++
			}
			if tally.reason == "" {
				tally.reason = p.why(&je.Job, t.id)
			}
			if t.prev != nil { // leave it where it is until a node fits
				p.kept[t.id] = *t.prev
			}
			continue
		}
		n := p.order[best]
		n.take(&je.Job, 1)
		count[best]++
		a := jobs.Assignment{
			Schema: jobs.AssignmentSchema, Tenant: t.id.Tenant, Job: t.id.Job, Replica: t.id.Replica,
			Node: n.Name, Generation: 1, Epoch: p.in.Epoch, JobRevision: je.Revision, Spec: je.Job, Assigned: p.in.Now,
		}
		ch := Change{Put: &a}
		if t.prev != nil {
			a.Generation = t.prev.Generation + 1
			if t.prev.Key() != a.Key() {
				ch.Delete = t.prev.Key()
			}
			if prevNode := p.nodes[t.prev.Node]; prevNode != nil {
				prevNode.take(&t.prev.Spec, -1)
			}
		}
		p.kept[t.id] = a
		p.changes = append(p.changes, ch)
	}
}

// choose returns the index in p.order of the best node, or -1.
func (p *placer) choose(j *jobs.Job, id jobs.ReplicaID, count []int) int {
	if copies, ok := p.in.Copies[id]; ok {
		for _, c := range copies { // the owner first: its copy is the primary
			for i, n := range p.order {
				if n.Name == c && n.fits(j) {
					return i
				}
			}
		}
		return -1
	}
	if len(j.Volumes) > 0 {
		if home, ok := p.in.VolumeHomes[id]; ok {
			for i, n := range p.order {
				if n.Name == home && n.fits(j) {
					return i
				}
			}
			return -1
		}
	}
	spread := j.Spread == nil || *j.Spread
	best := -1
	for i, n := range p.order {
		if !n.fits(j) {
			continue
		}
		if best < 0 {
			best = i
			continue
		}
		b := p.order[best]
		if spread {
			if count[i] != count[best] {
				if count[i] < count[best] {
					best = i
				}
				continue
			}
			if n.freeMem != b.freeMem {
				if n.freeMem > b.freeMem {
					best = i
				}
				continue
			}
			if n.freeCPU > b.freeCPU {
				best = i
			}
			continue
		}
		// Packing: the node left with the least free memory.
		if n.freeMem < b.freeMem {
			best = i
		}
	}
	return best
}

// why explains in one line why no node takes a replica of j.
func (p *placer) why(j *jobs.Job, id jobs.ReplicaID) string {
	if copies, ok := p.in.Copies[id]; ok {
		if len(copies) == 0 {
			return "waiting for a node with an up-to-date copy of its replicated volumes"
		}
		return fmt.Sprintf("the nodes with up-to-date copies of its volumes (%s) have no room or take no new replicas: needs %s cpu, %s memory",
			strings.Join(copies, ", "), jobs.FormatCPU(j.Resources.CPUMillis), jobs.FormatMemory(j.Resources.MemoryBytes))
	}
	if len(j.Volumes) > 0 {
		if home, ok := p.in.VolumeHomes[id]; ok {
			n, alive := p.nodes[home]
			switch {
			case !alive:
				return fmt.Sprintf("waiting for node %s, which holds its volumes", home)
			case n.Draining:
				return fmt.Sprintf("node %s, which holds its volumes, is draining", home)
			case !n.Schedulable:
				return fmt.Sprintf("node %s, which holds its volumes, takes no new replicas", home)
			}
			return fmt.Sprintf("node %s, which holds its volumes, has no room: needs %s cpu, %s memory",
				home, jobs.FormatCPU(j.Resources.CPUMillis), jobs.FormatMemory(j.Resources.MemoryBytes))
		}
	}
	var live, matching, portBlocked int
	var maxCPU, maxMem int64
	for _, n := range p.order {
		if !n.takesNew() {
			continue
		}
		live++
		if !matches(n.Labels, j.NodeSelector) {
			continue
		}
		matching++
		maxCPU, maxMem = max(maxCPU, n.freeCPU), max(maxMem, n.freeMem)
		for _, pt := range j.Ports {
			if n.ports[portKey(pt)] {
				portBlocked++
				break
			}
		}
	}
	switch {
	case live == 0:
		return "no live schedulable nodes"
	case matching == 0:
		return fmt.Sprintf("no live node has labels %s (of %d nodes)", selectorString(j.NodeSelector), live)
	}
	msg := fmt.Sprintf("no node fits: needs %s cpu, %s memory; largest free %s cpu, %s memory",
		jobs.FormatCPU(j.Resources.CPUMillis), jobs.FormatMemory(j.Resources.MemoryBytes),
		jobs.FormatCPU(max(maxCPU, 0)), jobs.FormatMemory(max(maxMem, 0)))
	if portBlocked > 0 {
		msg += fmt.Sprintf("; its host ports are taken on %d of %d nodes", portBlocked, matching)
	}
	return msg
}

func selectorString(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ",")
}

func (p *placer) summary(je *JobEntry, t *jobTally) jobs.JobPlacement {
	jp := jobs.JobPlacement{
		Schema: jobs.PlacementSchema, Tenant: je.Ref.Tenant, Job: je.Ref.Job, JobRevision: je.Revision,
		Placed: t.placed, Waiting: t.waiting, Updated: p.in.Now,
	}
	switch {
	case je.Err != nil:
		jp.Message = "invalid job document, existing replicas left alone: " + je.Err.Error()
		return jp
	case je.Job.Stopped:
		jp.Message = "stopped"
		return jp
	}
	jp.Desired = je.Job.Replicas
	parts := []string{fmt.Sprintf("placed %d/%d", t.placed, jp.Desired)}
	if t.waiting > 0 {
		parts = append(parts, fmt.Sprintf("%d waiting for gone node(s) %s", t.waiting, joinNodes(t.waitingOn)))
	}
	if t.unplaced > 0 {
		parts = append(parts, fmt.Sprintf("%d unplaced: %s", t.unplaced, t.reason))
	}
	if t.stuck > 0 {
		parts = append(parts, fmt.Sprintf("%d left on draining %s: %s",
			t.stuck, joinNodes(t.stuckOn), t.stuckReason))
	}
	if t.pinned > 0 {
		parts = append(parts, fmt.Sprintf("%d left on draining %s, which holds its volumes", t.pinned, joinNodes(t.pinnedOn)))
	}
	if t.outdated > 0 {
		parts = append(parts, fmt.Sprintf("%d kept on an older revision: %s", t.outdated, t.reason))
	}
	jp.Message = strings.Join(parts, "; ")
	return jp
}

// joinNodes names the nodes of a count per node, sorted: "node-2" or
// "node-2,node-3".
func joinNodes(counts map[string]int) string {
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func refLess(a, b jobs.JobRef) bool {
	if a.Tenant != b.Tenant {
		return a.Tenant < b.Tenant
	}
	return a.Job < b.Job
}

func replicaLess(a, b jobs.ReplicaID) bool {
	if a.Tenant != b.Tenant || a.Job != b.Job {
		return refLess(jobs.JobRef{Tenant: a.Tenant, Job: a.Job}, jobs.JobRef{Tenant: b.Tenant, Job: b.Job})
	}
	return a.Replica < b.Replica
}
