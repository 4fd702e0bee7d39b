package cluster

import (
	"net/url"
	"sync"
	"time"

	"github.com/berth-os/berth/agent/nodedoc"
)

// newPublisher is the node document's publisher, collecting the agent's
// role, readiness and etcd space with what Options adds.
func (a *Agent) newPublisher() *nodedoc.Publisher {
	c := a.opts.Collector
	if c == nil {
		host := a.opts.ClientURL
		if u, err := url.Parse(a.opts.ClientURL); err == nil {
			host = u.Hostname()
		}
		c = &nodedoc.Collector{
			Name: a.opts.Name, Addresses: nodeAddresses(host, hostLinks()), ClientURL: a.opts.ClientURL,
			AgentVersion: a.opts.AgentVersion, Started: time.Now(), Log: a.log,
			Labels: a.opts.Labels, Containers: a.opts.Containers, VolumePool: a.opts.VolumePool,
		}
	}
	var mu sync.Mutex // the publisher may collect from more than one goroutine
	collect := func() nodedoc.Node {
		mu.Lock()
		defer mu.Unlock()
		c.Role = a.Role()
		if c.ClientURL == "" {
			c.ClientURL = a.opts.ClientURL
		}
		if c.Ready == nil {
			c.Ready = a.Ready
		}
		if c.Draining == nil {
			c.Draining = a.opts.Draining
		}
		if c.EtcdSpace == nil {
			c.EtcdSpace = a.Space
		}
		return c.Collect()
	}
	p := nodedoc.NewPublisher(a.cli, a.opts.Name, collect, a.opts.NodeTTL)
	p.Interval = a.opts.NodeRefresh
	p.Log = a.log
	p.OnWrite = func(reason string) { nodeWritesTotal.WithLabelValues(reason).Inc() }
	p.Linger = func() time.Duration {
		if a.opts.SystemStopping != nil && a.opts.SystemStopping() {
			return 0 // the node goes down: its replicas should move at once
		}
		return a.opts.RestartHold
	}
	return p
}
