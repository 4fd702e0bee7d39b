package sched

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	benchNodes       = 1000
	benchJobs        = 100
	benchReplicasPer = 100
)

// BenchmarkSchedule1000Nodes measures end to end: from 100 jobs x 100
// replicas being written to all 10,000 assignments being in etcd, with
// 1,000 SIMULATED nodes (node documents written by the benchmark, no
// agents) in a real single-member etcd on loopback. As a peer in the same
// run it times Place alone on the same snapshot, and reports the ratio.
// For scale: HashiCorp's C1M run placed about 3,750 containers/s with 5
// Nomad servers on real hardware (a different setup; not comparable 1:1).
//
//	go test ./agent/sched -run XXX -bench Schedule1000Nodes -benchtime 2x
func BenchmarkSchedule1000Nodes(b *testing.B) {
	e := etcdtest.Start(b, etcdtest.Options{})
	cli := e.Client(b)
	ctx := context.Background()
	var ops []clientv3.Op
	var nodeList []Node
	for i := 0; i < benchNodes; i++ {
		name := fmt.Sprintf("sim-%04d", i)
		doc := nodedoc.Node{Schema: nodedoc.Schema, Name: name, Role: nodedoc.RoleClient, CPU: nodedoc.CPU{Cores: 4},
			Memory: nodedoc.Memory{TotalBytes: 8 << 30}, Ready: true, Heartbeat: time.Now()}
		data, err := doc.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(nodedoc.NodeKey(name), string(data)))
		nodeList = append(nodeList, Node{Name: name, CPUMillis: 4000, MemoryBytes: 8 << 30, Schedulable: true})
	}
	writeOps(b, cli, ops)
	s := startScheduler(b, cli, Options{Name: "bench"})
	eventually(b, 20*time.Second, "scheduler leads", func() (bool, string) { return s.IsLeader(), "" })
	total := benchJobs * benchReplicasPer

	var e2e, pure time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tenant := fmt.Sprintf("bench%d", i)
		var jobOps []clientv3.Op
		var entries []JobEntry
		for j := 0; j < benchJobs; j++ {
			job := newJob(tenant, fmt.Sprintf("job%03d", j), benchReplicasPer, 100, 64<<20)
			data, err := job.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			jobOps = append(jobOps, clientv3.OpPut(jobs.JobKey(tenant, job.Name), string(data)))
			entries = append(entries, JobEntry{Job: job, Revision: 1, Ref: jobs.JobRef{Tenant: tenant, Job: job.Name}})
		}
		start := time.Now()
		writeOps(b, cli, jobOps)
		waitAssignCount(b, cli, total)
		e2e += time.Since(start)

		// Peer: the same placement without etcd.
		b.StopTimer()
		pureStart := time.Now()
		plan := Place(Input{Nodes: nodeList, Jobs: entries, Epoch: 1, Now: time.Now()})
		pure += time.Since(pureStart)
		if len(plan.Changes) != total {
			b.Fatalf("pure plan has %d changes, want %d", len(plan.Changes), total)
		}
		// Clean up for the next round: deleting the jobs removes their assignments.
		if _, err := cli.Delete(ctx, jobs.TenantPrefix(tenant), clientv3.WithPrefix()); err != nil {
			b.Fatal(err)
		}
		waitAssignCount(b, cli, 0)
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N * total)
	b.ReportMetric(n/e2e.Seconds(), "placements/s")
	b.ReportMetric(n/pure.Seconds(), "pure-placements/s")
	b.ReportMetric(float64(e2e)/float64(pure), "e2e/pure")
	b.Logf("%d simulated nodes, %d replicas: end to end %v (%.0f placements/s), Place alone %v (%.0f/s), ratio %.1f",
		benchNodes, total, e2e/time.Duration(b.N), n/e2e.Seconds(), pure/time.Duration(b.N), n/pure.Seconds(), float64(e2e)/float64(pure))
}

func writeOps(tb testing.TB, cli *clientv3.Client, ops []clientv3.Op) {
	tb.Helper()
	for len(ops) > 0 {
		k := min(len(ops), maxTxnOps)
		if _, err := cli.Txn(context.Background()).Then(ops[:k]...).Commit(); err != nil {
			tb.Fatal(err)
		}
		ops = ops[k:]
	}
}

func waitAssignCount(tb testing.TB, cli *clientv3.Client, want int) {
	tb.Helper()
	eventually(tb, 120*time.Second, fmt.Sprintf("%d assignments", want), func() (bool, string) {
		resp, err := cli.Get(context.Background(), jobs.AssignPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return resp.Count == int64(want), fmt.Sprint(resp.Count)
	})
}
