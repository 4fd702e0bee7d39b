package ctl_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

// BenchmarkNodes1000 uses simulated nodes: 1,000 node documents, each with
// its own lease and KeepAlive, published by 1,000 Publishers in this one
// process (sharing one client) into a real 1-member etcd on loopback with
// TLS (fsync off, as in all etcdtest members: a real disk is slower). It
// reports how long the first publication of all 1,000 took, the
// heartbeat throughput (puts per second while every publisher is asked to
// publish at once, repeatedly), and, as ns/op, the latency of a complete
// `berthctl nodes` run (connect, TLS, read 1,000 documents, print the table)
// while the 1,000 publishers keep their normal 3 s heartbeat.
//
//	go test -run '^$' -bench Nodes1000 -benchtime 20x ./agent/ctl/
func BenchmarkNodes1000(b *testing.B) {
	const nodes = 1000
	e := etcdtest.Start(b, etcdtest.Options{})
	cli := e.Client(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var puts atomic.Int64
	watch := cli.Watch(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix())
	go func() {
		for wr := range watch {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					puts.Add(1)
				}
			}
		}
	}()

	start := time.Now()
	pubs := make([]*nodedoc.Publisher, nodes)
	for i := range pubs {
		doc := nodedoc.Node{Role: "client", Ready: true, Addresses: []string{"127.0.0.1"}, Kernel: "6.1.0-bench",
			OS: nodedoc.OS{Name: "berth-minimal", Version: "0.2.0", Slot: "a"}, BootTime: time.Now().Add(-time.Hour)}
		p := nodedoc.NewPublisher(cli, fmt.Sprintf("sim-%04d", i), func() nodedoc.Node { return doc }, 0)
		p.Poll = time.Hour // documents never change here; heartbeats only
		p.Log = quiet
		pubs[i] = p
		go p.Run(ctx)
	}
	for _, p := range pubs {
		select {
		case <-p.Published():
		case <-time.After(60 * time.Second):
			b.Fatal("not all 1,000 documents published within 60s")
		}
	}
	startup := time.Since(start)

	// Heartbeat throughput: ask every publisher to put now, 5 rounds.
	const rounds = 5
	before := puts.Load()
	burst := time.Now()
	for r := 0; r < rounds; r++ {
		for _, p := range pubs {
			p.Trigger()
		}
		for puts.Load()-before < int64((r+1)*nodes) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	burstTime := time.Since(burst)
	rate := float64(puts.Load()-before) / burstTime.Seconds()

	env := map[string]string{"BERTHCTL_ENDPOINTS": e.Endpoint, "BERTHCTL_CACERT": e.CAFile,
		"BERTHCTL_CERT": e.ClientCert, "BERTHCTL_KEY": e.ClientKey}
	sys := ctl.IO{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(k string) string { return env[k] }}
	var table bytes.Buffer
	check := sys
	check.Stdout = &table
	if code := ctl.Main(ctx, []string{"nodes"}, check); code != 0 {
		b.Fatalf("berthctl nodes: exit %d", code)
	}
	if lines := strings.Count(table.String(), "\n"); lines != nodes+1 {
		b.Fatalf("berthctl nodes printed %d lines, want %d", lines, nodes+1)
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if code := ctl.Main(ctx, []string{"nodes"}, sys); code != 0 {
			b.Fatalf("berthctl nodes: exit %d", code)
		}
	}
	b.StopTimer()
	b.ReportMetric(rate, "heartbeats/s")
	b.ReportMetric(startup.Seconds(), "s-first-publish-1000")
	b.Logf("1,000 simulated nodes: all published in %v; heartbeat throughput %.0f puts/s (%d in %v); `berthctl nodes` %v per run",
		startup.Round(time.Millisecond), rate, puts.Load()-before, burstTime.Round(time.Millisecond),
		(b.Elapsed() / time.Duration(max(b.N, 1))).Round(time.Microsecond))
}
