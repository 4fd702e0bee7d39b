package nodenet

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/netroute"
)

func TestMTUStep(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		applied, desired      int
		before, after, failed bool // set before the routes; after them when they applied; after them when they failed
	}{
		{name: "unknown path leaves the MTU", applied: 1500, desired: 0},
		{name: "unknown path at start", applied: 0, desired: 0},
		{name: "unchanged", applied: 1450, desired: 1450},
		{name: "first MTU: after the routes, whatever they did", applied: 0, desired: 1450, after: true, failed: true},
		{name: "first VXLAN peer: lower at once", applied: 1500, desired: 1450, before: true},
		{name: "last VXLAN peer gone: raise once the routes are in place", applied: 1450, desired: 1500, after: true},
	} {
		if got := mtuStep(tc.applied, tc.desired, false, false); got != tc.before {
			t.Errorf("%s: before the routes %v, want %v", tc.name, got, tc.before)
		}
		if got := mtuStep(tc.applied, tc.desired, true, true); got != tc.after {
			t.Errorf("%s: after the routes applied %v, want %v", tc.name, got, tc.after)
		}
		if got := mtuStep(tc.applied, tc.desired, true, false); got != tc.failed {
			t.Errorf("%s: after the routes failed %v, want %v", tc.name, got, tc.failed)
		}
	}
}

func TestMTUReason(t *testing.T) {
	vx := netroute.Desired{MTU: 1450, VXLAN: &netroute.VXLAN{Name: "berth.vx", MTU: 1450}}
	if got := mtuReason(vx); !strings.Contains(got, "berth.vx") {
		t.Errorf("with VXLAN: %q", got)
	}
	if got := mtuReason(netroute.Desired{MTU: 1500}); !strings.Contains(got, "no VXLAN") {
		t.Errorf("without VXLAN: %q", got)
	}
}

// TestApplyMTU follows the MTU through reconciles as Net.reconcile calls
// applyMTU: around each Apply of the routes.
func TestApplyMTU(t *testing.T) {
	var logs bytes.Buffer
	var set []int
	var fail error
	n := &Net{log: slog.New(slog.NewTextHandler(&logs, nil)), o: Options{SetMTU: func(m int) error {
		set = append(set, m)
		return fail
	}}}
	direct := netroute.Desired{MTU: 1500}
	vx := netroute.Desired{MTU: 1450, VXLAN: &netroute.VXLAN{Name: "berth.vx", MTU: 1450}}
	reconcile := func(d netroute.Desired, routesOK bool) {
		n.applyMTU(d, false, false)
		n.applyMTU(d, true, routesOK)
	}

	reconcile(direct, true)
	reconcile(direct, true) // unchanged: nothing
	reconcile(vx, true)
	reconcile(netroute.Desired{}, true) // no underlay known: left as is
	reconcile(direct, false)            // routes failed: not raised yet
	reconcile(direct, true)
	if want := []int{1500, 1450, 1500}; !slices.Equal(set, want) {
		t.Fatalf("SetMTU calls %v, want %v", set, want)
	}
	if got := strings.Count(logs.String(), "container network MTU set"); got != 3 {
		t.Errorf("%d change lines, want 3:\n%s", got, logs.String())
	}
	if !strings.Contains(logs.String(), "old=1500 new=1450") || !strings.Contains(logs.String(), "berth.vx") {
		t.Errorf("the drop to 1450 is not logged with old, new and why:\n%s", logs.String())
	}

	// A failure is retried at every reconcile and logged once.
	set, fail = nil, errors.New("container x: no such netns")
	reconcile(vx, true)
	reconcile(vx, true)
	if want := []int{1450, 1450}; !slices.Equal(set, want) {
		t.Fatalf("SetMTU calls while failing %v, want %v", set, want)
	}
	if got := strings.Count(logs.String(), "no such netns"); got != 1 {
		t.Errorf("failure logged %d times, want once:\n%s", got, logs.String())
	}
	set, fail = nil, nil
	reconcile(vx, true)
	reconcile(vx, true)
	if want := []int{1450}; !slices.Equal(set, want) || n.mtu != 1450 {
		t.Fatalf("after the failure: SetMTU calls %v, applied %d; want %v and 1450", set, n.mtu, want)
	}
}
