package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// partitionNet is three hosts, each in its own network namespace with one
// veth, joined by a bridge in a fourth namespace: the host's own network is
// never touched, and cutting a host off is one link going down.
type partitionNet struct {
	t      *testing.T
	bridge string   // namespace holding the bridge br0
	hosts  []string // namespace of host i+1
	ips    []string // address of host i+1
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newPartitionNet creates the namespaces and links, removes them all in
// t.Cleanup, and skips the test when network namespaces are not allowed.
func newPartitionNet(t *testing.T, hosts int) *partitionNet {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("ip (iproute2) not found, needed for the network partition test: %v", err)
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	suffix := hex.EncodeToString(rnd[:])
	subnet := fmt.Sprintf("10.231.%d", 1+int(rnd[0])%254) // only inside the test's namespaces
	pn := &partitionNet{t: t, bridge: "berth-pb-" + suffix}
	if err := ipCmd("netns", "add", pn.bridge); err != nil {
		t.Skipf("cannot create network namespaces (needed for the network partition test): %v", err)
	}
	t.Cleanup(func() {
		for _, ns := range append(pn.hosts, pn.bridge) {
			// Deleting a namespace deletes its links and, in the
			// bridge's, their veth peers.
			if err := ipCmd("netns", "del", ns); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	})
	must := func(args ...string) {
		t.Helper()
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("-n", pn.bridge, "link", "add", "br0", "type", "bridge")
	must("-n", pn.bridge, "link", "set", "br0", "up")
	for i := 1; i <= hosts; i++ {
		ns := fmt.Sprintf("berth-p%d-%s", i, suffix)
		must("netns", "add", ns)
		pn.hosts = append(pn.hosts, ns)
		ip := fmt.Sprintf("%s.%d", subnet, i)
		pn.ips = append(pn.ips, ip)
		port := fmt.Sprintf("v%d", i)
		must("-n", pn.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		must("-n", pn.bridge, "link", "set", port, "master", "br0", "up")
		must("-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
		must("-n", ns, "link", "set", "eth0", "up")
		must("-n", ns, "link", "set", "lo", "up")
	}
	return pn
}

// setHostLink takes host i's bridge port down (cut off) or up (healed).
func (pn *partitionNet) setHostLink(i int, up bool) {
	pn.t.Helper()
	updown := "down"
	if up {
		updown = "up"
	}
	if err := ipCmd("-n", pn.bridge, "link", "set", fmt.Sprintf("v%d", i), updown); err != nil {
		pn.t.Fatal(err)
	}
}

func TestNetworkPartition(t *testing.T) {
	pn := newPartitionNet(t, 3)
	total := time.Now()
	c := &testCluster{t: t, bin: buildAgent(t), root: t.TempDir(), nodes: map[string]*testNode{}}
	// Registered after the namespaces' cleanup, so it runs before it.
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		c.stopAll()
	})
	nodes := make([]*testNode, 3)
	for i := range nodes {
		nodes[i] = c.newNodeIn(pn.hosts[i], fmt.Sprintf("node-%d", i+1), pn.ips[i])
	}
	step := func(name string) func() {
		start := time.Now()
		return func() { t.Logf("step %-30s %s", name, time.Since(start).Round(time.Millisecond)) }
	}

	done := step("form 3 voters")
	c.start(nodes[0], "--voters", "3")
	c.waitReady(nodes[0], 20*time.Second)
	token := c.token(nodes[0])
	for _, n := range nodes[1:] {
		c.start(n, "--join", nodes[0].api, "--token", token)
	}
	for _, n := range nodes {
		c.waitReady(n, 40*time.Second)
	}
	all := []string{nodes[0].client, nodes[1].client, nodes[2].client}
	admin := nodeClient(t, nodes[0], all)
	eventually(t, 30*time.Second, "three voters", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if len(m.voters) != 3 || len(m.learners) != 0 {
			return fmt.Errorf("voters %v learners %v", m.voters, m.learners)
		}
		return nil
	})
	eventually(t, 10*time.Second, "three ready voter documents", func() error {
		return checkDocs(admin, nodes)
	})
	done()

	// Cut off the etcd leader: the harder side, it must notice it lost
	// its quorum and the others must elect a new leader.
	done = step("cut off the leader")
	cutIdx, leaderID := -1, uint64(0)
	for i, n := range nodes {
		ctx, cancel := ctxT(3 * time.Second)
		st, err := admin.Status(ctx, n.client)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			cutIdx, leaderID = i, st.Leader
		}
	}
	if cutIdx < 0 {
		t.Fatal("no leader found")
	}
	cut := nodes[cutIdx]
	var majority []*testNode
	for _, n := range nodes {
		if n != cut {
			majority = append(majority, n)
		}
	}
	t.Logf("cutting off %s (leader %x) at %s", cut.name, leaderID, cut.ip)
	pn.setHostLink(cutIdx+1, false)
	cutAt := time.Now()
	minority := nodeClient(t, cut, []string{cut.client})
	majorityCli := nodeClient(t, majority[0], []string{majority[0].client, majority[1].client})

	// The minority's own endpoint is alive (a local, serializable read
	// answers) but a write cannot reach a quorum.
	minorityKey := nodedoc.Prefix + "test/partition/minority"
	ctx, cancel := ctxT(3 * time.Second)
	_, err := minority.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix(), clientv3.WithSerializable())
	cancel()
	if err != nil {
		t.Fatalf("cut-off node's endpoint does not answer a local read: %v", err)
	}
	// The minority write runs while the majority elects a leader, so that
	// both sides are measured from the cut.
	type putResult struct {
		err  error
		took time.Duration
	}
	minorityPut := make(chan putResult, 1)
	go func() {
		start := time.Now()
		ctx, cancel := ctxT(3 * time.Second)
		defer cancel()
		_, err := minority.Put(ctx, minorityKey, "must-not-commit")
		minorityPut <- putResult{err, time.Since(start)}
	}()

	// The majority elects a leader and keeps accepting writes.
	eventually(t, 5*time.Second, "majority write", func() error {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		_, err := majorityCli.Put(ctx, nodedoc.Prefix+"test/partition/majority-0", "0")
		return err
	})
	t.Logf("majority accepted a write %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	put := <-minorityPut
	if put.err == nil {
		t.Fatalf("write through the cut-off node succeeded (%s after the cut)", time.Since(cutAt))
	}
	if put.took > 4*time.Second {
		t.Fatalf("write through the cut-off node took %s to fail", put.took)
	}
	t.Logf("minority write failed after %s: %v", put.took.Round(time.Millisecond), put.err)
	const majorityWrites = 5
	for i := 1; i < majorityWrites; i++ {
		ctx, cancel := ctxT(2 * time.Second)
		_, err := majorityCli.Put(ctx, fmt.Sprintf("%stest/partition/majority-%d", nodedoc.Prefix, i), fmt.Sprint(i))
		cancel()
		if err != nil {
			t.Fatalf("majority write %d during the partition: %v", i, err)
		}
	}
	ctx, cancel = ctxT(2 * time.Second)
	st, err := majorityCli.Status(ctx, majority[0].client)
	cancel()
	if err != nil || st.Leader == 0 || st.Leader == leaderID {
		t.Fatalf("majority leader %x (old %x), err %v", st.Leader, leaderID, err)
	}
	// The cut-off node cannot keep its lease alive: its document expires.
	eventually(t, testTTL+5*time.Second, "cut-off node's document expires", func() error {
		docs, err := nodeDocs(majorityCli)
		if err != nil {
			return err
		}
		if _, ok := docs[cut.name]; ok {
			return errors.New("still present")
		}
		return nil
	})
	// And it has seen none of the majority's writes.
	ctx, cancel = ctxT(2 * time.Second)
	resp, err := minority.Get(ctx, nodedoc.Prefix+"test/partition/majority-", clientv3.WithPrefix(), clientv3.WithSerializable())
	cancel()
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("cut-off node's local view during the partition: %d majority keys, err %v", len(resp.Kvs), err)
	}
	done()

	// Heal: the node catches up, republishes its document, and is ready.
	done = step("heal")
	pn.setHostLink(cutIdx+1, true)
	healAt := time.Now()
	caughtUp := eventually(t, 15*time.Second, "cut-off node catches up", func() error {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		resp, err := minority.Get(ctx, nodedoc.Prefix+"test/partition/majority-", clientv3.WithPrefix(), clientv3.WithSerializable())
		if err != nil {
			return err
		}
		if len(resp.Kvs) != majorityWrites {
			return fmt.Errorf("%d of %d majority keys", len(resp.Kvs), majorityWrites)
		}
		return nil
	})
	t.Logf("cut-off node saw the majority's writes %s after the heal", caughtUp.Round(time.Millisecond))
	docBack := eventually(t, 15*time.Second, "all documents back and ready", func() error {
		return checkDocs(majorityCli, nodes)
	})
	t.Logf("all three documents back %s after the heal", (docBack + caughtUp).Round(time.Millisecond))
	for _, n := range nodes {
		c.waitReady(n, 5*time.Second)
	}
	m, err := memberList(majorityCli)
	if err != nil || len(m.voters) != 3 || len(m.learners) != 0 || m.voters[cut.name] != leaderID {
		t.Fatalf("membership after the heal: %+v, err %v", m, err)
	}
	// The write refused during the partition was never committed, and the
	// healed node accepts writes again.
	ctx, cancel = ctxT(2 * time.Second)
	resp, err = majorityCli.Get(ctx, minorityKey)
	cancel()
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("write refused during the partition: %d keys after the heal, err %v", len(resp.Kvs), err)
	}
	eventually(t, 5*time.Second, "write through the healed node", func() error {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		_, err := minority.Put(ctx, nodedoc.Prefix+"test/partition/after-heal", "ok")
		return err
	})
	t.Logf("healed in %s", time.Since(healAt).Round(time.Millisecond))
	done()
	t.Logf("whole scenario %s", time.Since(total).Round(time.Millisecond))
}

// checkDocs reports the first of nodes without a ready voter document.
func checkDocs(cli *clientv3.Client, nodes []*testNode) error {
	docs, err := nodeDocs(cli)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		d, ok := docs[n.name]
		if !ok {
			return fmt.Errorf("no document for %s", n.name)
		}
		if d.Role != nodedoc.RoleVoter || d.ClientURL != n.client || !d.Ready {
			return fmt.Errorf("%s: role %q client_url %q ready %v", n.name, d.Role, d.ClientURL, d.Ready)
		}
	}
	return nil
}
