package sched

import (
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/jobs"
)

// draining marks the named nodes draining as the world does from their
// documents: not schedulable, and their replicas move.
func draining(ns []Node, names ...string) []Node {
	for i := range ns {
		for _, n := range names {
			if ns[i].Name == n {
				ns[i].Schedulable, ns[i].Draining = false, true
			}
		}
	}
	return ns
}

func TestPlaceDrainMovesToFewestReplicas(t *testing.T) {
	j := newJob("t", "web", 4, 100, 64<<20)
	plan := Place(Input{Nodes: draining(nodes("n1", "n2", "n3"), "n2"), Jobs: []JobEntry{entry(j, 3)}, Now: t0, Epoch: 8,
		Assignments: []jobs.Assignment{assign("n1", j, 0, 1, 3), assign("n1", j, 1, 1, 3), assign("n2", j, 2, 5, 3), assign("n3", j, 3, 1, 3)}})
	if len(plan.Changes) != 1 {
		t.Fatalf("changes %+v, want one move", plan.Changes)
	}
	c := plan.Changes[0]
	// Spread: n3 has one replica of web, n1 two.
	if c.Delete != jobs.AssignKey("n2", "t", "web", 2) || c.Put == nil || c.Put.Node != "n3" || c.Put.Replica != 2 ||
		c.Put.Generation != 6 || c.Put.Epoch != 8 {
		t.Fatalf("move %+v %+v, want replica 2 from n2 to n3 with generation 6", c, c.Put)
	}
	if msg := plan.Placements[0].Message; msg != "placed 4/4" {
		t.Fatalf("message %q", msg)
	}
}

func TestPlaceDrainNowhereElseStaysAndTakesJobChange(t *testing.T) {
	old := newJob("t", "web", 1, 100, 64<<20)
	changed := old
	changed.Env = map[string]string{"MODE": "v2"}
	plan := Place(Input{Nodes: draining(nodes("n1"), "n1"), Jobs: []JobEntry{entry(changed, 4)}, Now: t0,
		Assignments: []jobs.Assignment{assign("n1", old, 0, 2, 3)}})
	if len(plan.Changes) != 1 || plan.Changes[0].Delete != "" || plan.Changes[0].Put.Node != "n1" ||
		plan.Changes[0].Put.Generation != 2 || plan.Changes[0].Put.JobRevision != 4 {
		t.Fatalf("changes %+v, want the job change applied in place on n1", plan.Changes)
	}
	if msg := plan.Placements[0].Message; msg != "placed 1/1; 1 left on draining n1: no live schedulable nodes" {
		t.Fatalf("message %q", msg)
	}
}

func TestPlaceDrainVolumePinnedStays(t *testing.T) {
	j := newJob("t", "db", 2, 100, 64<<20)
	j.Volumes = []jobs.Volume{{Name: "data", Path: "/data"}}
	homes := map[jobs.ReplicaID]string{{Tenant: "t", Job: "db", Replica: 0}: "n1", {Tenant: "t", Job: "db", Replica: 2}: "n1"}
	plan := Place(Input{Nodes: draining(nodes("n1", "n2"), "n1"), Jobs: []JobEntry{entry(j, 3)}, Now: t0, VolumeHomes: homes,
		Assignments: []jobs.Assignment{assign("n1", j, 0, 1, 3), assign("n1", j, 1, 1, 3)}})
	// Replica 0 stays with its volume; replica 1 has no volume yet and moves.
	if got := puts(plan); len(got) != 1 || got[1] != "n2" {
		t.Fatalf("puts %v, want only replica 1 moved to n2", got)
	}
	if msg := plan.Placements[0].Message; msg != "placed 2/2; 1 left on draining n1, which holds its volumes" {
		t.Fatalf("message %q", msg)
	}
	// A new replica whose volume lives on the draining node is not put there.
	j.Replicas = 3
	plan = Place(Input{Nodes: draining(nodes("n1", "n2"), "n1"), Jobs: []JobEntry{entry(j, 3)}, Now: t0, VolumeHomes: homes,
		Assignments: []jobs.Assignment{assign("n1", j, 0, 1, 3), assign("n2", j, 1, 2, 3)}})
	if got := puts(plan); len(got) != 0 {
		t.Fatalf("puts %v, want none", got)
	}
	if msg := plan.Placements[0].Message; !strings.Contains(msg, "1 unplaced: node n1, which holds its volumes, is draining") {
		t.Fatalf("message %q", msg)
	}
}
