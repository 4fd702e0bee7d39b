package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/nodedoc"
)

// buildBerthctl builds the berthctl command next to the test's other files.
func buildBerthctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berthctl")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/berth-os/berth/agent/cmd/berthctl").CombinedOutput()
	if err != nil {
		t.Fatalf("build berthctl: %v\n%s", err, out)
	}
	return bin
}

// TestFiveVotersAndBerthctl grows a cluster to five voters (learners added
// and promoted one at a time), adds a sixth node that must stay a client,
// and checks that the berthctl binary reports all of it with an ops cert.
func TestFiveVotersAndBerthctl(t *testing.T) {
	total := time.Now()
	c := newLoopbackCluster(t, "127.0.0.41")
	n := make([]*testNode, 7)
	for i := 1; i <= 6; i++ {
		n[i] = c.newNode(fmt.Sprintf("five-%d", i), fmt.Sprintf("127.0.0.%d", 40+i))
	}
	step := stepTimer(t)

	done := step("bootstrap voters=5")
	c.start(n[1], "--voters", "5")
	if got := c.waitReady(n[1], 20*time.Second); got != "ok voter" {
		t.Fatalf("five-1 readyz = %q, want ok voter", got)
	}
	token := c.token(n[1])
	done()

	// Four joins at once: the join API must serialise them into one
	// pending learner at a time, each promoted before the next is added.
	done = step("join 4 to voters")
	for i := 2; i <= 5; i++ {
		c.start(n[i], "--join", n[1].api, "--token", token)
	}
	admin := nodeClient(t, n[1], []string{n[1].client})
	maxLearners := 0
	eventually(t, 60*time.Second, "five voters", func() error {
		m, err := memberList(admin)
		if err != nil {
			return err
		}
		maxLearners = max(maxLearners, len(m.learners))
		if len(m.voters) != 5 || len(m.learners) != 0 {
			return fmt.Errorf("voters %v learners %v", m.voters, m.learners)
		}
		return nil
	})
	t.Logf("at most %d learner(s) seen at once", maxLearners)
	if maxLearners > 1 {
		t.Fatalf("saw %d learners at once, want at most one", maxLearners)
	}
	// Each agent notices its own promotion on its next role refresh.
	for i := 2; i <= 5; i++ {
		eventually(t, 15*time.Second, n[i].name+" ready as voter", func() error {
			if got := c.waitReady(n[i], 30*time.Second); got != "ok voter" {
				return fmt.Errorf("readyz %q", got)
			}
			return nil
		})
	}
	done()

	done = step("sixth joins as client")
	c.start(n[6], "--join", n[3].api+","+n[1].api, "--token", token)
	if got := c.waitReady(n[6], 40*time.Second); got != "ok client" {
		t.Fatalf("five-6 readyz = %q, want ok client", got)
	}
	m, err := memberList(admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.voters) != 5 || len(m.learners) != 0 {
		t.Fatalf("the sixth node changed membership: voters %v learners %v", m.voters, m.learners)
	}
	if _, ok := m.voters[n[6].name]; ok {
		t.Fatal("five-6 is a voter")
	}
	done()

	done = step("berthctl")
	ctlBin := buildBerthctl(t)
	opsDir := t.TempDir()
	if out, err := exec.Command(c.bin, "issue-ops-cert", "--data-dir", n[1].dir, "--out", opsDir).CombinedOutput(); err != nil {
		t.Fatalf("issue-ops-cert: %v\n%s", err, out)
	}
	var endpoints []string
	for i := 1; i <= 5; i++ {
		endpoints = append(endpoints, n[i].client)
	}
	berthctl := func(args ...string) (string, error) {
		base := []string{
			"--endpoints", strings.Join(endpoints, ","),
			"--cacert", filepath.Join(opsDir, "ca.crt"),
			"--cert", filepath.Join(opsDir, "ops.crt"),
			"--key", filepath.Join(opsDir, "ops.key"),
		}
		cmd := exec.Command(ctlBin, append(base, args...)...)
		cmd.Env = []string{"HOME=" + opsDir} // no user config or BERTHCTL_* from the environment
		out, err := cmd.Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				return string(out), fmt.Errorf("berthctl %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
			}
			return string(out), fmt.Errorf("berthctl %s: %w", strings.Join(args, " "), err)
		}
		return string(out), nil
	}
	wantRole := func(i int) string {
		if i == 6 {
			return nodedoc.RoleClient
		}
		return nodedoc.RoleVoter
	}

	// Documents are refreshed by each agent; allow for the last one's
	// first publication (roles read "learner" until promotion is seen).
	eventually(t, 15*time.Second, "berthctl nodes -o json", func() error {
		out, err := berthctl("nodes", "-o", "json")
		if err != nil {
			return err
		}
		var list ctl.NodeList
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return fmt.Errorf("decode %q: %w", out, err)
		}
		if len(list.Items) != 6 {
			return fmt.Errorf("%d nodes listed, want 6:\n%s", len(list.Items), out)
		}
		byName := map[string]ctl.NodeRow{}
		for _, r := range list.Items {
			byName[r.Name] = r
		}
		for i := 1; i <= 6; i++ {
			r, ok := byName[n[i].name]
			if !ok {
				return fmt.Errorf("%s not listed", n[i].name)
			}
			if r.Role != wantRole(i) || r.Status != ctl.Ready || r.Document == nil {
				return fmt.Errorf("%s: role %q status %q document %v, want %s Ready", r.Name, r.Role, r.Status, r.Document != nil, wantRole(i))
			}
			if r.Document.ClientURL != n[i].client {
				return fmt.Errorf("%s: client_url %q, want %q", r.Name, r.Document.ClientURL, n[i].client)
			}
		}
		return nil
	})

	out, err := berthctl("nodes")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 || strings.Join(strings.Fields(lines[0])[:3], " ") != "NAME ROLE READY" {
		t.Fatalf("nodes table: want a header and 6 rows:\n%s", out)
	}
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		// Rows are sorted by name: five-1 .. five-6.
		if len(f) < 3 || f[0] != n[i+1].name || f[1] != wantRole(i+1) || f[2] != ctl.Ready {
			t.Fatalf("nodes table row %d = %q, want %s %s %s:\n%s", i+1, line, n[i+1].name, wantRole(i+1), ctl.Ready, out)
		}
	}

	out, err = berthctl("members")
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("members table: want a header and 5 rows:\n%s", out)
	}
	leaders, followers := 0, 0
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != n[i+1].name {
			t.Fatalf("members row %d = %q, want member %s:\n%s", i+1, line, n[i+1].name, out)
		}
		switch f[2] {
		case "leader":
			leaders++
		case "follower":
			followers++
		default:
			t.Fatalf("members row %q: status %q, want leader or follower", line, f[2])
		}
	}
	if leaders != 1 || followers != 4 {
		t.Fatalf("members: %d leaders and %d followers, want 1 and 4:\n%s", leaders, followers, out)
	}

	out, err = berthctl("members", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var mj map[string][]ctl.Member
	if err := json.Unmarshal([]byte(out), &mj); err != nil {
		t.Fatalf("decode members json: %v\n%s", err, out)
	}
	leaders = 0
	for _, mem := range mj["members"] {
		if mem.Learner {
			t.Fatalf("member %s is a learner", mem.Name)
		}
		if mem.Leader {
			leaders++
		}
	}
	if len(mj["members"]) != 5 || leaders != 1 {
		t.Fatalf("members json: %d members, %d leaders; want 5 and 1:\n%s", len(mj["members"]), leaders, out)
	}
	done()
	t.Logf("whole scenario %s", time.Since(total).Round(time.Millisecond))
}
