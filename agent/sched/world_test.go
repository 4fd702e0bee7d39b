package sched

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLostNodes(t *testing.T) {
	grace := 2 * time.Second
	long, short := t0.Add(-5*time.Second), t0.Add(-time.Second)
	for _, tc := range []struct {
		name     string
		goneAt   map[string]time.Time
		alive    int
		self     string
		want     []string
		wantHeld string
	}{
		{name: "one of three gone past grace moves", goneAt: map[string]time.Time{"n3": long}, alive: 2, self: "n1", want: []string{"n3"}},
		{name: "within grace waits", goneAt: map[string]time.Time{"n3": short}, alive: 2, self: "n1"},
		{name: "the scheduler's own node never", goneAt: map[string]time.Time{"n1": long}, alive: 2, self: "n1"},
		{name: "own node missing does not count toward the majority", goneAt: map[string]time.Time{"n1": long, "n3": long}, alive: 1, self: "n1", want: []string{"n3"}},
		{name: "two of three gone holds all", goneAt: map[string]time.Time{"n2": long, "n3": long}, alive: 1, self: "n1", wantHeld: "2 of 3 nodes are gone at once"},
		{name: "half gone still moves", goneAt: map[string]time.Time{"n3": long, "n4": long}, alive: 2, self: "n1", want: []string{"n3", "n4"}},
		{name: "one of two gone moves", goneAt: map[string]time.Time{"n2": long}, alive: 1, self: "n1", want: []string{"n2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lost, held := lostNodes(tc.goneAt, tc.alive, tc.self, t0, grace)
			want := map[string]bool{}
			for _, n := range tc.want {
				want[n] = true
			}
			if !reflect.DeepEqual(lost, want) {
				t.Fatalf("lost %v, want %v", lost, want)
			}
			if (tc.wantHeld == "") != (held == "") || !strings.Contains(held, tc.wantHeld) {
				t.Fatalf("held %q, want %q", held, tc.wantHeld)
			}
		})
	}
}
