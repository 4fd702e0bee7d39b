package volume

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func pair(owner string, epoch int64, a, b CopyState) Record {
	return Record{
		ID:        ID{Tenant: "acme", Job: "db", Replica: 0, Name: "data"},
		SizeBytes: 2 << 30,
		Copies:    []Copy{{Node: "node-1", State: a, Since: t0}, {Node: "node-2", State: b, Since: t0}},
		Owner:     owner, Epoch: epoch,
	}
}

func TestPromote(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rec        Record
		node       string
		ownerAlive bool
		wantOwner  string
		wantEpoch  int64
		wantErr    string
	}{
		{"first owner", pair("", 0, UpToDate, UpToDate), "node-1", false, "node-1", 1, ""},
		{"owner again keeps its epoch", pair("node-1", 3, UpToDate, UpToDate), "node-1", true, "node-1", 3, ""},
		{"owner again, even outdated by a fence it lost", pair("node-1", 3, Outdated, UpToDate), "node-1", true, "node-1", 3, ""},
		{"dead owner: the up-to-date peer takes over", pair("node-1", 3, UpToDate, UpToDate), "node-2", false, "node-2", 4, ""},
		{"live owner is never replaced", pair("node-1", 3, UpToDate, UpToDate), "node-2", true, "node-1", 3, "owned by node-1 (epoch 3), which is alive"},
		{"an outdated copy never becomes primary", pair("node-1", 3, UpToDate, Outdated), "node-2", false, "node-1", 3, "copy on node-2 is outdated"},
		{"a syncing copy never becomes primary", pair("node-1", 3, UpToDate, Syncing), "node-2", false, "node-1", 3, "copy on node-2 is syncing"},
		{"no copy, no promotion", pair("node-1", 3, UpToDate, UpToDate), "node-3", false, "node-1", 3, "no copy on node-3 (copies on node-1, node-2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.rec.clone()
			got, err := Promote(PromoteInput{Record: tc.rec, Node: tc.node, OwnerAlive: tc.ownerAlive, Now: t0})
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if got.Owner != tc.wantOwner || got.Epoch != tc.wantEpoch {
				t.Errorf("owner %s epoch %d, want %s %d", got.Owner, got.Epoch, tc.wantOwner, tc.wantEpoch)
			}
			if tc.rec.Owner != in.Owner || tc.rec.Epoch != in.Epoch {
				t.Errorf("the input record changed")
			}
		})
	}
}

func TestFence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rec      Record
		node     string
		epoch    int64
		want     [2]CopyState
		deposed  bool
		errMatch string
	}{
		{"owner fences its peer", pair("node-1", 2, UpToDate, UpToDate), "node-1", 2, [2]CopyState{UpToDate, Outdated}, false, ""},
		{"fencing twice is harmless", pair("node-1", 2, UpToDate, Outdated), "node-1", 2, [2]CopyState{UpToDate, Outdated}, false, ""},
		{"a syncing peer is outdated too", pair("node-1", 2, UpToDate, Syncing), "node-1", 2, [2]CopyState{UpToDate, Outdated}, false, ""},
		{"deposed: another node owns the volume", pair("node-2", 3, UpToDate, UpToDate), "node-1", 2, [2]CopyState{UpToDate, UpToDate}, true, "node-1 acts at epoch 2 but node-2 owns epoch 3"},
		{"deposed: the same node but an old epoch", pair("node-1", 5, UpToDate, UpToDate), "node-1", 4, [2]CopyState{UpToDate, UpToDate}, true, "epoch 4 but node-1 owns epoch 5"},
		{"not the owner at all", pair("", 0, UpToDate, UpToDate), "node-2", 0, [2]CopyState{UpToDate, UpToDate}, true, "nobody owns epoch 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Fence(FenceInput{Record: tc.rec, Node: tc.node, Epoch: tc.epoch, Now: t0.Add(time.Minute)})
			if tc.deposed != errors.Is(err, ErrDeposed) || (tc.errMatch != "" && !strings.Contains(err.Error(), tc.errMatch)) {
				t.Fatalf("err %v, want deposed=%v %q", err, tc.deposed, tc.errMatch)
			}
			if !tc.deposed && err != nil {
				t.Fatal(err)
			}
			for i, c := range got.Copies {
				if c.State != tc.want[i] {
					t.Errorf("%s: %s, want %s", c.Node, c.State, tc.want[i])
				}
			}
			if !tc.deposed && tc.rec.Copies[1].State != Outdated {
				if c := got.Copies[1]; !c.Since.Equal(t0.Add(time.Minute)) || !strings.Contains(c.Reason, "fenced by node-1") {
					t.Errorf("fenced copy: %+v", c)
				}
			}
		})
	}
}

func TestSynced(t *testing.T) {
	r := pair("node-1", 2, UpToDate, Outdated)
	got, err := Synced(SyncedInput{Record: r, Node: "node-1", Peer: "node-2", Epoch: 2, Now: t0})
	if err != nil || got.Copies[1].State != UpToDate {
		t.Fatalf("owner reports its peer synced: %+v, %v", got.Copies, err)
	}
	if _, err := Synced(SyncedInput{Record: r, Node: "node-2", Peer: "node-1", Epoch: 2}); !errors.Is(err, ErrDeposed) {
		t.Errorf("a non-owner's report: %v, want deposed", err)
	}
	if _, err := Synced(SyncedInput{Record: r, Node: "node-1", Peer: "node-1", Epoch: 2}); err == nil {
		t.Errorf("the owner reports itself synced: no error")
	}
	if _, err := Synced(SyncedInput{Record: r, Node: "node-1", Peer: "node-3", Epoch: 2}); err == nil || !strings.Contains(err.Error(), "no peer copy on node-3") {
		t.Errorf("an unknown peer: %v", err)
	}
}

func TestReplace(t *testing.T) {
	r := pair("node-1", 2, UpToDate, Outdated)
	got, err := Replace(ReplaceInput{Record: r, Gone: "node-2", New: "node-3", Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Copies[1]; c.Node != "node-3" || c.State != Syncing {
		t.Errorf("new copy %+v, want node-3 syncing", c)
	}
	if r.Copies[1].Node != "node-2" {
		t.Errorf("the input record changed")
	}
	for _, tc := range []struct{ gone, new, want string }{
		{"node-1", "node-3", "owner's: promote the other copy first"},
		{"node-2", "node-1", "already has a copy on node-1"},
		{"node-3", "node-4", "no copy on node-3"},
		{"node-2", "", "no node to take the copy"},
	} {
		if _, err := Replace(ReplaceInput{Record: r, Gone: tc.gone, New: tc.new}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("replace %s by %q: %v, want %q", tc.gone, tc.new, err, tc.want)
		}
	}
}

func TestKeys(t *testing.T) {
	id := ID{Tenant: "acme", Job: "db", Replica: 2, Name: "data"}
	if got, err := ParseKey(Key(id)); err != nil || got != id {
		t.Errorf("ParseKey(Key(%v)) = %v, %v", id, got, err)
	}
	for _, k := range []string{Prefix + "acme/db/x/data", Prefix + "acme/db/1", "/other/acme/db/1/data", Prefix + "acme/db/-1/data"} {
		if _, err := ParseKey(k); err == nil {
			t.Errorf("ParseKey(%q): no error", k)
		}
	}
}

func TestRunnableOn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rec   Record
		alive map[string]bool
		want  string
	}{
		{"the live owner only", pair("node-1", 2, UpToDate, UpToDate), map[string]bool{"node-1": true, "node-2": true}, "node-1"},
		{"owner dead: the up-to-date peer", pair("node-1", 2, UpToDate, UpToDate), map[string]bool{"node-2": true}, "node-2"},
		{"owner dead, peer outdated: nowhere", pair("node-1", 2, UpToDate, Outdated), map[string]bool{"node-2": true}, ""},
		{"owner dead, peer syncing: nowhere", pair("node-1", 2, UpToDate, Syncing), map[string]bool{"node-2": true}, ""},
		{"no owner yet: every live up-to-date copy", pair("", 0, UpToDate, UpToDate), map[string]bool{"node-1": true, "node-2": true}, "node-1 node-2"},
		{"nothing alive", pair("node-1", 2, UpToDate, UpToDate), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(RunnableOn(tc.rec, tc.alive), " "); got != tc.want {
				t.Errorf("RunnableOn = %q, want %q", got, tc.want)
			}
		})
	}
}
