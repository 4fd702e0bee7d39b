package jobs

import (
	"strings"
	"testing"
)

func TestAssignKeyRoundTrip(t *testing.T) {
	key := AssignKey("node-1.example", "acme", "web.v2", 17)
	if key != "/berth/v1/assign/node-1.example/acme/web.v2/17" {
		t.Fatalf("AssignKey = %q", key)
	}
	if !strings.HasPrefix(key, AssignNodePrefix("node-1.example")) || strings.HasPrefix(key, AssignNodePrefix("node-1")) {
		t.Fatalf("node prefix must match its own node only: %q", key)
	}
	node, id, err := ParseAssignKey(key)
	if err != nil || node != "node-1.example" || id != (ReplicaID{"acme", "web.v2", 17}) {
		t.Fatalf("ParseAssignKey = %q %v %v", node, id, err)
	}
	for _, bad := range []string{
		"/berth/v1/assign/n/acme/web",        // no replica
		"/berth/v1/assign/n/acme/web/1/x",    // extra part
		"/berth/v1/assign/n/acme/web/01",     // non-canonical index
		"/berth/v1/assign/n/acme/web/-1",     // negative
		"/berth/v1/assign/n/acme/web/1000",   // beyond MaxReplicas
		"/berth/v1/assign/N/acme/web/1",      // bad node
		"/berth/v1/assign/n/ac.me/web/1",     // bad tenant
		"/berth/v1/assign/n/acme/We/1",       // bad job
		"/berth/v1/nodes/n",                  // other prefix
		"/berth/v1/assign/n//web/1",          // empty tenant
		"/berth/v1/assign/n/acme/web/1 ",     // trailing space
		"/berth/v1/assign/n/acme/web/+1",     // sign
		"/berth/v1/assign/n/acme/web/0x1",    // hex
		"/berth/v1/assign/n/acme/web/999999", // huge
	} {
		if _, _, err := ParseAssignKey(bad); err == nil {
			t.Errorf("ParseAssignKey(%q) accepted", bad)
		}
	}
	id, err = ParseVolumeHomeKey(VolumeHomeKey("acme", "db", 2))
	if err != nil || id != (ReplicaID{"acme", "db", 2}) {
		t.Fatalf("ParseVolumeHomeKey: %v %v", id, err)
	}
	if ref, ok := ParseJobKey(JobKey("acme", "web")); !ok || ref != (JobRef{"acme", "web"}) {
		t.Fatalf("ParseJobKey: %v %v", ref, ok)
	}
	for _, other := range []string{StatusKey("acme", "web", 0), PlacementKey("acme", "web"), UsageKey("acme", "n1"), JobsPrefix("acme")} {
		if _, ok := ParseJobKey(other); ok {
			t.Errorf("ParseJobKey(%q) accepted a non-job key", other)
		}
	}
	if ref, ok := ParsePlacementKey(PlacementKey("acme", "web")); !ok || ref.Job != "web" {
		t.Fatalf("ParsePlacementKey: %v %v", ref, ok)
	}
}

func TestContainerIDRoundTrip(t *testing.T) {
	long := strings.Repeat("t", MaxTenantNameLen)
	longJob := strings.Repeat("j.", MaxJobNameLen/2) + "j"
	for _, tc := range []struct {
		tenant, job string
		replica     int
		gen         int64
	}{{"acme", "web", 0, 1}, {"a-b", "x.y.z", 999, 42}, {long, longJob, MaxReplicas - 1, 1<<63 - 1}} {
		id := ContainerID(tc.tenant, tc.job, tc.replica, tc.gen)
		// The runtime's ID rule: ^[a-z0-9][a-z0-9_.-]{0,127}$.
		if len(id) > 128 {
			t.Errorf("container id %q is %d characters, over the runtime's 128", id, len(id))
		}
		r, gen, err := ParseContainerID(id)
		if err != nil || r != (ReplicaID{tc.tenant, tc.job, tc.replica}) || gen != tc.gen {
			t.Errorf("ParseContainerID(%q) = %v %d %v", id, r, gen, err)
		}
	}
	for _, bad := range []string{"", "acme", "acme.web", "acme.web.1", "acme.web.1.1", "acme.web.x.g1", "acme.web.1.g", "acme.web.1.g-1",
		"acme.web.1.g01", "acme..1.g1", ".web.1.g1", "acme.web.01.g1", "Acme.web.1.g1"} {
		if r, g, err := ParseContainerID(bad); err == nil {
			t.Errorf("ParseContainerID(%q) accepted: %v %d", bad, r, g)
		}
	}
}

func TestParseStatusKey(t *testing.T) {
	if id, ok := ParseStatusKey(StatusKey("acme", "x.y", 7)); !ok || id != (ReplicaID{Tenant: "acme", Job: "x.y", Replica: 7}) {
		t.Errorf("status key: %v %v", id, ok)
	}
	for _, k := range []string{
		JobKey("acme", "web"), UsageKey("acme", "n1"), PlacementKey("acme", "web"),
		StatusPrefix("acme") + "web/07", StatusPrefix("acme") + "web/1000", StatusPrefix("acme") + "web/1/2",
		StatusPrefix("Acme") + "web/1", "/other/acme/status/web/1",
	} {
		if _, ok := ParseStatusKey(k); ok {
			t.Errorf("%s read as a status key", k)
		}
	}
}
