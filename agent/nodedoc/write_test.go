package nodedoc

import (
	"testing"
	"time"
)

func TestWriteReason(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	const refresh = 5 * time.Minute
	base := Node{Schema: Schema, Name: "n", Role: "voter", Ready: true, UptimeSeconds: 100,
		CPU: CPU{Cores: 4, Load1: 0.5}, Memory: Memory{TotalBytes: 1000, AvailableBytes: 600}}
	with := func(f func(*Node)) Node { n := base; f(&n); return n }
	cases := []struct {
		name string
		cur  Node
		age  time.Duration
		want string
	}{
		{"nothing moved, just written", base, time.Second, ""},
		{"heartbeat, uptime, small load and memory moves: no write",
			with(func(n *Node) {
				n.Heartbeat, n.UptimeSeconds, n.CPU.Load1, n.Memory.AvailableBytes = t0, 400, 1.9, 550
			}), 4 * time.Minute, ""},
		{"role changed: at once", with(func(n *Node) { n.Role = "learner" }), 0, "change"},
		{"ready changed", with(func(n *Node) { n.Ready = false }), time.Second, "change"},
		{"draining", with(func(n *Node) { n.Draining = true }), time.Second, "change"},
		{"etcd space", with(func(n *Node) { n.EtcdSpace = SpaceLow }), time.Second, "change"},
		{"containers", with(func(n *Node) { n.Containers.Running = 1 }), time.Second, "change"},
		{"refresh due", base, refresh, "refresh"},
		{"load past max(1, cores/2)=2 but within refresh/2: wait", with(func(n *Node) { n.CPU.Load1 = 3 }), 2 * time.Minute, ""},
		{"load past the threshold after refresh/2", with(func(n *Node) { n.CPU.Load1 = 2.5 }), refresh / 2, "load"},
		{"load falling a little", with(func(n *Node) { n.CPU.Load1 = 0 }), refresh / 2, ""},
		{"load 1 core of 1: threshold 1", Node{CPU: CPU{Cores: 1, Load1: 1.5}}, 3 * time.Minute, "load"},
		{"free memory down a tenth of the total", with(func(n *Node) { n.Memory.AvailableBytes = 500 }), 3 * time.Minute, "memory"},
		{"free memory up a tenth", with(func(n *Node) { n.Memory.AvailableBytes = 700 }), 3 * time.Minute, "memory"},
		{"free memory moved less than a tenth", with(func(n *Node) { n.Memory.AvailableBytes = 501 }), 3 * time.Minute, ""},
	}
	last := base
	if got := WriteReason(last, Node{CPU: CPU{Cores: 1, Load1: 1.5}}, t0, t0.Add(3*time.Minute), refresh); got != "change" {
		t.Errorf("a different node entirely: %q, want change", got)
	}
	for _, tc := range cases {
		l := last
		if tc.cur.CPU.Cores == 1 {
			l = Node{CPU: CPU{Cores: 1, Load1: 0.5}}
		}
		if got := WriteReason(l, tc.cur, t0, t0.Add(tc.age), refresh); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// The bound the README documents: an idle node whose figures keep
// jumping writes at most twice per refresh, a steady one once.
func TestWriteReasonBoundPerHour(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	for _, jumpy := range []bool{false, true} {
		last := Node{CPU: CPU{Cores: 2}, Memory: Memory{TotalBytes: 1 << 30, AvailableBytes: 1 << 29}}
		lastWrite, writes := t0, 0
		for now := t0; now.Before(t0.Add(time.Hour)); now = now.Add(time.Second) {
			cur := last
			if jumpy && now.Second()%2 == 0 {
				cur.CPU.Load1 = last.CPU.Load1 + 5 // every poll a jump
			}
			if WriteReason(last, cur, lastWrite, now, DefaultRefresh) != "" {
				last, lastWrite = cur, now
				writes++
			}
		}
		want := 12
		if jumpy {
			want = 24
		}
		if writes > want {
			t.Errorf("jumpy=%v: %d writes in an hour, bound %d", jumpy, writes, want)
		}
		t.Logf("jumpy=%v: %d writes/hour", jumpy, writes)
	}
}
