package rollout

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

// The quorum guard's view: a voter is healthy only while its node document
// says ready; a learner (here one that never started, so without a name)
// is no voter and not healthy; documents that do not parse are ignored.
func TestClusterMembers(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	const self = "etcdtest" // etcdtest's member name

	check := func(what string, want []Member) {
		t.Helper()
		got, err := ClusterMembers(ctx, cli)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: members %+v, want %+v", what, got, want)
		}
	}
	putNode := func(name string, ready bool) {
		t.Helper()
		data, _ := json.Marshal(nodedoc.Node{Schema: nodedoc.Schema, Name: name, Ready: ready})
		if _, err := cli.Put(ctx, nodedoc.NodeKey(name), string(data)); err != nil {
			t.Fatal(err)
		}
	}

	check("no node document", []Member{{Name: self, Voter: true}})
	putNode(self, false)
	check("not ready", []Member{{Name: self, Voter: true}})
	putNode(self, true)
	if _, err := cli.Put(ctx, nodedoc.NodeKey("garbage"), "{"); err != nil {
		t.Fatal(err)
	}
	check("ready", []Member{{Name: self, Voter: true, Healthy: true}})

	added, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ClusterMembers(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !slices.Contains(got, Member{Name: self, Voter: true, Healthy: true}) || !slices.Contains(got, Member{}) {
		t.Errorf("with a learner: %+v", got)
	}
	if _, err := cli.MemberRemove(ctx, added.Member.ID); err != nil {
		t.Fatal(err)
	}

	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ClusterMembers(done, cli); err == nil || !strings.Contains(err.Error(), "list etcd members") {
		t.Errorf("with a cancelled context: %v", err)
	}
}

// A single member is its own leader and has applied what it committed; a
// node without a member of its own has nothing to catch up.
func TestCaughtUp(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	for i := range 20 {
		if _, err := cli.Put(ctx, "/caught-up", strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := CaughtUp(ctx, cli, "etcdtest"); err != nil {
		t.Errorf("the only member: %v", err)
	}
	if err := CaughtUp(ctx, cli, "client-node"); err != nil {
		t.Errorf("a node without a member: %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := CaughtUp(done, cli, "etcdtest"); err == nil || !strings.Contains(err.Error(), "list etcd members") {
		t.Errorf("with a cancelled context: %v", err)
	}
}
