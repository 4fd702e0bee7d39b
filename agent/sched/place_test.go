package sched

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func nodes(names ...string) []Node {
	var out []Node
	for _, n := range names {
		out = append(out, Node{Name: n, CPUMillis: 4000, MemoryBytes: 8 << 30, Schedulable: true})
	}
	return out
}

func entry(j jobs.Job, rev int64) JobEntry {
	return JobEntry{Job: j, Revision: rev, Ref: jobs.JobRef{Tenant: j.Tenant, Job: j.Name}}
}

func assign(node string, j jobs.Job, replica int, gen, rev int64) jobs.Assignment {
	return jobs.Assignment{Schema: jobs.AssignmentSchema, Tenant: j.Tenant, Job: j.Name, Replica: replica, Node: node,
		Generation: gen, JobRevision: rev, Spec: j, Epoch: 1, Assigned: t0}
}

// puts returns node per replica of the plan's puts.
func puts(p Plan) map[int]string {
	out := map[int]string{}
	for _, c := range p.Changes {
		if c.Put != nil {
			out[c.Put.Replica] = c.Put.Node
		}
	}
	return out
}

func TestPlaceDeterministic(t *testing.T) {
	var in Input
	in.Nodes = nodes("c", "a", "b", "d")
	in.Lost = map[string]bool{"x": true}
	for i := 0; i < 5; i++ {
		j := newJob("t", fmt.Sprintf("j%d", i), 3+i, 300, 256<<20)
		in.Jobs = append(in.Jobs, entry(j, int64(10+i)))
		in.Assignments = append(in.Assignments, assign("x", j, 0, 1, int64(10+i)), assign("a", j, 1, 1, int64(9)))
	}
	in.Epoch, in.Now = 7, t0
	first := Place(in)
	// Same snapshot in another order: same plan.
	rev := in
	rev.Nodes = slices.Clone(in.Nodes)
	slices.Reverse(rev.Nodes)
	rev.Jobs = slices.Clone(in.Jobs)
	slices.Reverse(rev.Jobs)
	rev.Assignments = slices.Clone(in.Assignments)
	slices.Reverse(rev.Assignments)
	if second := Place(rev); !reflect.DeepEqual(first, second) {
		t.Fatalf("plans differ for the same snapshot:\n%+v\n%+v", first, second)
	}
	if len(first.Changes) == 0 || len(first.Placements) != 5 {
		t.Fatalf("plan %+v", first)
	}
}

func TestPlacePackingWithoutSpread(t *testing.T) {
	j := newJob("t", "batch", 3, 1000, 1<<30)
	j.Spread = new(bool)
	plan := Place(Input{Nodes: nodes("n1", "n2", "n3"), Jobs: []JobEntry{entry(j, 5)}, Now: t0})
	if got := puts(plan); !reflect.DeepEqual(got, map[int]string{0: "n1", 1: "n1", 2: "n1"}) {
		t.Fatalf("spread=false placed %v, want all packed on n1", got)
	}
	j.Spread = nil
	j = j.WithDefaults()
	plan = Place(Input{Nodes: nodes("n1", "n2", "n3"), Jobs: []JobEntry{entry(j, 5)}, Now: t0})
	if got := puts(plan); !reflect.DeepEqual(got, map[int]string{0: "n1", 1: "n2", 2: "n3"}) {
		t.Fatalf("spread placed %v, want one per node", got)
	}
}

func TestPlaceSpreadPrefersFreeMemory(t *testing.T) {
	busy := newJob("t", "busy", 1, 100, 6<<30)
	web := newJob("t", "web", 2, 100, 64<<20)
	plan := Place(Input{Nodes: nodes("n1", "n2", "n3"), Jobs: []JobEntry{entry(busy, 1), entry(web, 2)},
		Assignments: []jobs.Assignment{assign("n2", busy, 0, 1, 1)}, Now: t0})
	// n2 holds 6Gi: web goes to n1 and n3 first.
	if got := puts(plan); !reflect.DeepEqual(got, map[int]string{0: "n1", 1: "n3"}) {
		t.Fatalf("web placed %v, want n1 and n3 (n2 has least free memory)", got)
	}
}

func TestPlaceHostPorts(t *testing.T) {
	j := newJob("t", "edge", 3, 100, 64<<20)
	j.Ports = []jobs.Port{{Container: 8080, Host: 80, Protocol: "tcp"}}
	plan := Place(Input{Nodes: nodes("n1", "n2"), Jobs: []JobEntry{entry(j, 1)}, Now: t0})
	if got := puts(plan); len(got) != 2 || got[0] == got[1] {
		t.Fatalf("host port 80 placed %v, want two replicas on two nodes", got)
	}
	msg := plan.Placements[0].Message
	if !strings.Contains(msg, "placed 2/3") || !strings.Contains(msg, "host ports are taken on 2 of 2 nodes") {
		t.Fatalf("message %q", msg)
	}
}

func TestPlaceDuplicatesAndUnschedulable(t *testing.T) {
	j := newJob("t", "web", 2, 100, 64<<20)
	ns := nodes("n1", "n2", "n3")
	ns[2].Schedulable = false // not ready: keeps replica 1, takes nothing new
	plan := Place(Input{Nodes: ns, Jobs: []JobEntry{entry(j, 3)}, Now: t0, Assignments: []jobs.Assignment{
		assign("n1", j, 0, 1, 3), assign("n2", j, 0, 2, 3), assign("n3", j, 1, 1, 3),
	}})
	if len(plan.Changes) != 1 || plan.Changes[0].Delete != jobs.AssignKey("n1", "t", "web", 0) || plan.Changes[0].Put != nil {
		t.Fatalf("changes %+v, want only the older duplicate on n1 deleted", plan.Changes)
	}
	// New replicas avoid the unschedulable node.
	j.Replicas = 4
	plan = Place(Input{Nodes: ns, Jobs: []JobEntry{entry(j, 3)}, Now: t0, Assignments: []jobs.Assignment{assign("n3", j, 1, 1, 3)}})
	for r, n := range puts(plan) {
		if n == "n3" {
			t.Fatalf("replica %d placed on unschedulable n3", r)
		}
	}
}

func TestPlaceLostNodeNoRoomKeepsAssignment(t *testing.T) {
	j := newJob("t", "big", 1, 4000, 1<<30)
	filler := newJob("t", "filler", 1, 4000, 1<<30)
	plan := Place(Input{Nodes: nodes("n1"), Lost: map[string]bool{"gone": true}, Now: t0,
		Jobs:        []JobEntry{entry(j, 1), entry(filler, 1)},
		Assignments: []jobs.Assignment{assign("gone", j, 0, 4, 1), assign("n1", filler, 0, 1, 1)}})
	if len(plan.Changes) != 0 {
		t.Fatalf("changes %+v, want none: nowhere to move", plan.Changes)
	}
	if msg := plan.Placements[0].Message; !strings.Contains(msg, "placed 0/1; 1 unplaced: no node fits: needs 4 cpu, 1Gi memory; largest free 0 cpu") {
		t.Fatalf("message %q", msg)
	}
}

func TestPlaceUpdateThatNoLongerFitsMoves(t *testing.T) {
	old := newJob("t", "web", 1, 1000, 1<<30)
	grown := old
	grown.Resources.CPUMillis = 3500
	other := newJob("t", "other", 1, 1000, 1<<30)
	plan := Place(Input{Nodes: nodes("n1", "n2"), Now: t0, Epoch: 9,
		Jobs:        []JobEntry{entry(grown, 2), entry(other, 1)},
		Assignments: []jobs.Assignment{assign("n1", old, 0, 3, 1), assign("n1", other, 0, 1, 1)}})
	if len(plan.Changes) != 1 {
		t.Fatalf("changes %+v", plan.Changes)
	}
	c := plan.Changes[0]
	if c.Delete != jobs.AssignKey("n1", "t", "web", 0) || c.Put == nil || c.Put.Node != "n2" || c.Put.Generation != 4 ||
		c.Put.JobRevision != 2 || c.Put.Epoch != 9 || c.Put.Spec.Resources.CPUMillis != 3500 {
		t.Fatalf("change %+v %+v", c, c.Put)
	}
	// Fits in place: same node, same generation, new revision.
	small := old
	small.Env = map[string]string{"A": "1"}
	plan = Place(Input{Nodes: nodes("n1", "n2"), Now: t0, Jobs: []JobEntry{entry(small, 2)},
		Assignments: []jobs.Assignment{assign("n1", old, 0, 3, 1)}})
	if len(plan.Changes) != 1 || plan.Changes[0].Delete != "" || plan.Changes[0].Put.Node != "n1" ||
		plan.Changes[0].Put.Generation != 3 || plan.Changes[0].Put.JobRevision != 2 {
		t.Fatalf("in-place update %+v", plan.Changes)
	}
}
