package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/berth-os/berth/agent/rollout"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/nodedoc"
)

// healDeadAfter is the self-healing test's dead-after: longer than the
// node TTL (the agent refuses anything else), short enough for a test.
const healDeadAfter = 4 * time.Second

// roleHistory records every value written to the role entries, in order,
// from a watch: a learner promoted within one agent tick would be missed by
// polling.
type roleHistory struct {
	mu    sync.Mutex
	roles map[string][]string
}

func (h *roleHistory) record(wch clientv3.WatchChan) {
	for resp := range wch {
		for _, ev := range resp.Events {
			name, ok := nodedoc.NameFromKey(nodedoc.RolesPrefix, string(ev.Kv.Key))
			var e nodedoc.RoleEntry
			if !ok || ev.Type != clientv3.EventTypePut || json.Unmarshal(ev.Kv.Value, &e) != nil {
				continue
			}
			h.mu.Lock()
			h.roles[name] = append(h.roles[name], e.Role)
			h.mu.Unlock()
		}
	}
}

func (h *roleHistory) of(name string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.roles[name]...)
}

func roleOf(cli *clientv3.Client, name string) (nodedoc.RoleEntry, error) {
	ctx, cancel := ctxT(3 * time.Second)
	defer cancel()
	got, err := cli.Get(ctx, nodedoc.RoleKey(name))
	if err != nil {
		return nodedoc.RoleEntry{}, err
	}
	if len(got.Kvs) == 0 {
		return nodedoc.RoleEntry{}, errors.New("no role entry")
	}
	var e nodedoc.RoleEntry
	err = json.Unmarshal(got.Kvs[0].Value, &e)
	return e, err
}

// startHealingVoters starts n[1] as the bootstrap node of three voters and
// n[2], n[3] joining it, all removing dead members after healDeadAfter, and
// returns the flags that join one more node the same way.
func startHealingVoters(c *testCluster, n []*testNode) []string {
	heal := []string{"--dead-after", healDeadAfter.String()} // the last flag wins
	c.start(n[1], append(heal, "--voters", "3")...)
	c.waitReady(n[1], 20*time.Second)
	join := append(heal, "--join", n[1].api, "--token", c.token(n[1]))
	c.start(n[2], join...)
	c.start(n[3], join...)
	return join
}

// TestSelfHealing: three voters and one client; one voter is SIGKILLed and
// never comes back. The leader's agent removes it after dead-after, asks
// the client to become a member, the client joins as a learner and is
// promoted, and the role entries follow.
func TestSelfHealing(t *testing.T) {
	total := time.Now()
	c := newLoopbackCluster(t, "127.0.0.21")
	n := make([]*testNode, 5)
	for i := 1; i <= 4; i++ {
		n[i] = c.newNode(fmt.Sprintf("heal-%d", i), fmt.Sprintf("127.0.0.%d", 20+i))
	}
	join := startHealingVoters(c, n)
	admin := nodeClient(t, n[1], []string{n[1].client, n[2].client, n[3].client})
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
	c.waitReady(n[2], 20*time.Second)
	c.waitReady(n[3], 20*time.Second)
	c.start(n[4], join...)
	if got := c.waitReady(n[4], 30*time.Second); got != "ok client" {
		t.Fatalf("heal-4 readyz = %q, want ok client", got)
	}
	if e, err := roleOf(admin, n[4].name); err != nil || e.Role != nodedoc.RoleClient {
		t.Fatalf("heal-4 role entry %+v, err %v; want client", e, err)
	}
	t.Logf("3 voters + 1 client up in %s", time.Since(total).Round(time.Millisecond))

	// Watch the promotion requests and role entries from now on.
	history := &roleHistory{roles: map[string][]string{}}
	wctx, stopWatch := ctxT(2 * time.Minute)
	defer stopWatch()
	go history.record(admin.Watch(wctx, nodedoc.RolesPrefix, clientv3.WithPrefix()))
	asked := make(chan string, 4)
	go func() {
		for resp := range admin.Watch(wctx, nodedoc.PromotePrefix, clientv3.WithPrefix()) {
			for _, ev := range resp.Events {
				if name, ok := nodedoc.NameFromKey(nodedoc.PromotePrefix, string(ev.Kv.Key)); ok && ev.Type == clientv3.EventTypePut {
					asked <- name
				}
			}
		}
	}()

	// Kill a voter that is not the leader (the admin client's node stays up).
	victim := n[3]
	ctx, cancel := ctxT(3 * time.Second)
	st, err := admin.Status(ctx, victim.client)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if st.Header.MemberId == st.Leader {
		victim = n[2]
	}
	before, err := memberList(admin)
	if err != nil {
		t.Fatal(err)
	}
	victimID := before.voters[victim.name]
	c.kill(victim)
	killed := time.Now()
	var survivors []*testNode
	for _, x := range n[1:4] {
		if x != victim {
			survivors = append(survivors, x)
		}
	}
	admin.SetEndpoints(survivors[0].client, survivors[1].client)

	// Removal: not before dead-after, and soon after TTL + dead-after.
	removedAfter := eventually(t, testTTL+healDeadAfter+8*time.Second, "dead voter removed", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if _, ok := m.voters[victim.name]; ok {
			return fmt.Errorf("%s still a voter", victim.name)
		}
		for _, id := range m.learners {
			if id == victimID {
				return errors.New("demoted, not removed")
			}
		}
		return nil
	})
	t.Logf("%s removed %s after the kill", victim.name, removedAfter.Round(time.Millisecond))
	if removedAfter < healDeadAfter {
		t.Fatalf("%s removed %s after the kill, before dead-after %s", victim.name, removedAfter, healDeadAfter)
	}
	select {
	case name := <-asked:
		if name != n[4].name {
			t.Fatalf("asked %s to become a member, want the client %s", name, n[4].name)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no client was asked to become a member")
	}

	// The client joins as learner and is promoted: three voters again.
	healed := eventually(t, 20*time.Second, "client promoted to voter", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if _, ok := m.voters[n[4].name]; !ok || len(m.voters) != 3 || len(m.learners) != 0 {
			return fmt.Errorf("voters %v learners %v", m.voters, m.learners)
		}
		return nil
	})
	t.Logf("three voters again %s after the removal", (healed).Round(time.Millisecond))

	eventually(t, 10*time.Second, "role entries follow", func() error {
		e, err := roleOf(admin, n[4].name)
		if err != nil {
			return err
		}
		if e.Role != nodedoc.RoleVoter || e.PeerURL != n[4].peer || e.ClientURL != n[4].client {
			return fmt.Errorf("%s role entry %+v", n[4].name, e)
		}
		d, err := roleOf(admin, victim.name)
		if err != nil {
			return err
		}
		if d.Role != cluster.RoleRemoved {
			return fmt.Errorf("%s role entry %+v, want %s", victim.name, d, cluster.RoleRemoved)
		}
		for _, s := range survivors {
			if e, err := roleOf(admin, s.name); err != nil || e.Role != nodedoc.RoleVoter {
				return fmt.Errorf("%s role entry %+v err %v", s.name, e, err)
			}
		}
		return nil
	})
	if got := history.of(n[4].name); len(got) < 2 || got[0] != nodedoc.RoleLearner || got[len(got)-1] != nodedoc.RoleVoter {
		t.Fatalf("%s role history %v, want learner first and voter last", n[4].name, got)
	}

	// The new voter's agent knows it, its document says so, and the healed
	// cluster takes writes through it alone. The agent reads its role from
	// its own member's copy of the membership once a second, and that copy
	// lags the promotion while CI runs other test packages beside this one
	// (5 s was once too short there).
	eventually(t, 15*time.Second, "heal-4 agent knows it is a voter", func() error {
		if got := c.waitReady(n[4], 5*time.Second); got != "ok voter" {
			return fmt.Errorf("readyz %q", got)
		}
		return nil
	})
	eventually(t, 10*time.Second, "heal-4 document says voter", func() error {
		docs, err := nodeDocs(admin)
		if err != nil {
			return err
		}
		if d := docs[n[4].name]; d.Role != nodedoc.RoleVoter {
			return fmt.Errorf("role %q", d.Role)
		}
		return nil
	})
	direct := nodeClient(t, n[4], []string{n[4].client})
	ctx, cancel = ctxT(3 * time.Second)
	_, err = direct.Put(ctx, nodedoc.Prefix+"test/after-heal", "ok")
	cancel()
	if err != nil {
		t.Fatalf("write through the new voter: %v", err)
	}

	// The removed voter comes back from its old data dir: etcd refuses
	// it, so it clears its cluster data and exits (systemd restarts it);
	// the next start joins again through the agents it knew.
	c.start(victim)
	select {
	case err := <-victim.done:
		victim.cmd = nil
		if err == nil {
			t.Fatal("the removed voter exited 0 instead of reporting its removal")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the removed voter neither rejoined nor exited")
	}
	if log, _ := os.ReadFile(victim.logPath); !strings.Contains(string(log), "its cluster data was cleared") {
		t.Fatalf("the removed voter's log does not say what it did:\n%s", log)
	}
	c.start(victim)
	if got := c.waitReady(victim, 60*time.Second); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("the removed voter after rejoining: readyz %q", got)
	}
	t.Logf("whole scenario %s (kill to healed %s)", time.Since(total).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}

// TestPlannedRebootNotHealed: a voter whose document is missing while its
// member answers is alive and stays; a voter that holds a reboot slot of
// an OS rollout is rebooting by plan; self-healing must not remove it
// however long dead-after is exceeded, until the slot's lease ends.
func TestPlannedRebootNotHealed(t *testing.T) {
	c := newLoopbackCluster(t, "127.0.0.51")
	n := make([]*testNode, 4)
	for i := 1; i <= 3; i++ {
		n[i] = c.newNode(fmt.Sprintf("plan-%d", i), fmt.Sprintf("127.0.0.%d", 50+i))
	}
	startHealingVoters(c, n)
	admin := nodeClient(t, n[1], []string{n[1].client, n[2].client})
	eventually(t, 30*time.Second, "three voters", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if len(m.voters) != 3 {
			return fmt.Errorf("voters %v", m.voters)
		}
		return nil
	})
	c.waitReady(n[3], 20*time.Second)

	// A live voter whose node document is missing (as when a starved
	// node's lease lapses) is not removed: its member still answers. The
	// test deletes the document and, while it waits, deletes it again the
	// moment its publisher writes a change.
	wctx, stopDeleting := context.WithCancel(context.Background())
	deleted := make(chan struct{})
	go func() {
		defer close(deleted)
		watch := admin.Watch(wctx, nodedoc.NodeKey("plan-3"))
		for {
			dctx, cancel := ctxT(5 * time.Second)
			admin.Delete(dctx, nodedoc.NodeKey("plan-3"))
			cancel()
			select {
			case <-wctx.Done():
				return
			case <-watch:
			}
		}
	}()
	time.Sleep(testTTL + healDeadAfter + 6*time.Second)
	stopDeleting()
	<-deleted
	if m, err := memberList(admin); err != nil {
		t.Fatal(err)
	} else if _, ok := m.voters["plan-3"]; !ok {
		t.Fatalf("plan-3 was removed while its member answered: voters %v", m.voters)
	}

	// plan-3 takes a reboot slot (as its rollout driver does) and goes down.
	ctx, cancel := ctxT(5 * time.Second)
	lease, err := admin.Grant(ctx, 60)
	if err == nil {
		_, err = admin.Put(ctx, rollout.LockKey(rollout.DefaultGroup, "plan-3"), `{"holder":"plan-3","count":1}`, clientv3.WithLease(lease.ID))
	}
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	c.kill(n[3])
	// Well past TTL + dead-after: still a voter.
	time.Sleep(testTTL + healDeadAfter + 6*time.Second)
	m, err := memberList(admin)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.voters["plan-3"]; !ok {
		t.Fatalf("plan-3 was removed while it held a reboot slot: voters %v", m.voters)
	}
	// The slot ends (its lease expires when a node never returns): then
	// self-healing takes its course.
	ctx, cancel = ctxT(5 * time.Second)
	_, err = admin.Revoke(ctx, lease.ID)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, healDeadAfter+10*time.Second, "plan-3 removed after its slot ended", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		if _, ok := m.voters["plan-3"]; ok {
			return errors.New("plan-3 still a voter")
		}
		return nil
	})
}
