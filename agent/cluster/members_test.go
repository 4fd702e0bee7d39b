package cluster

import (
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The learner's initial cluster names itself, the started members by name
// and members that never started by their ID.
func TestLearnerInitialCluster(t *testing.T) {
	resp := &clientv3.MemberAddResponse{
		Member: &etcdserverpb.Member{ID: 0x30},
		Members: []*etcdserverpb.Member{
			{ID: 0x10, Name: "node-1", PeerURLs: []string{"https://10.0.0.1:2380"}},
			{ID: 0x20, PeerURLs: []string{"https://10.0.0.2:2380"}},
			{ID: 0x30, PeerURLs: []string{"https://10.0.0.3:2380", "https://[fd00::3]:2380"}},
		},
	}
	want := "node-1=https://10.0.0.1:2380,unstarted-20=https://10.0.0.2:2380," +
		"node-3=https://10.0.0.3:2380,node-3=https://[fd00::3]:2380"
	if got := learnerInitialCluster(resp, "node-3"); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
