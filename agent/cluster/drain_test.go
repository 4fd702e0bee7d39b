package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

// Options.Draining reaches the node document, and Republish puts it at
// once instead of at the next poll or heartbeat; before the publisher
// exists Republish does nothing.
func TestDrainingPublishedOnRepublish(t *testing.T) {
	var draining atomic.Bool
	opts := testOptions(t, "node-1")
	opts.NodeTTL, opts.Draining = 30*time.Second, draining.Load
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	a.Republish() // no publisher yet: must not panic

	e := etcdtest.Start(t, etcdtest.Options{})
	a.cli = e.Client(t)
	pub := a.newPublisher()
	pub.Interval, pub.Poll = 20*time.Second, time.Hour // only Republish can put early
	a.pub.Store(pub)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	published := func() (nodedoc.Node, bool) {
		resp, err := a.cli.Get(context.Background(), nodedoc.NodeKey("node-1"))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return nodedoc.Node{}, false
		}
		n, err := nodedoc.ParseNode(resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return n, true
	}
	waitDoc := func(what string, cond func(nodedoc.Node) bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			if n, ok := published(); ok && cond(n) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("within 3s (heartbeat 20s, no poll): %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitDoc("first document, not draining", func(n nodedoc.Node) bool { return !n.Draining })
	draining.Store(true)
	a.Republish()
	waitDoc("draining published", func(n nodedoc.Node) bool { return n.Draining })
	draining.Store(false)
	a.Republish()
	waitDoc("end of draining published", func(n nodedoc.Node) bool { return !n.Draining })
}
