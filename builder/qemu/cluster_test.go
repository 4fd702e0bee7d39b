package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/nodeconfig"
)

func testCluster(n int) *Cluster {
	c := &Cluster{Name: "t", Netns: "berth-cl-t", Secret: "0123456789abcdef0123456789abcdef"}
	for i := 1; i <= n; i++ {
		c.Nodes = append(c.Nodes, &ClusterNode{Name: fmt.Sprintf("node-%d", i), IPv4: fmt.Sprintf("10.240.0.%d", 10+i), IPv6: fmt.Sprintf("fd00:240::%d", 10+i)})
	}
	return c
}

// The node.yaml the harness writes must pass the node configuration
// parser without a single problem, and give the agent a configuration it
// accepts: bootstrap on node-1, join node-1 elsewhere.
func TestDefaultNodeConfigIsValid(t *testing.T) {
	c := testCluster(3)
	c.Accel = AccelTCG // emulated nodes also get etcd's slow-machine timing
	key, err := writeSSHKey(filepath.Join(t.TempDir(), "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		data, err := c.DefaultNodeConfig(i, key).YAML()
		if err != nil {
			t.Fatal(err)
		}
		cfg, problems := nodeconfig.Parse(data, "berth")
		if len(problems) > 0 {
			t.Fatalf("node-%d: node.yaml has problems %v:\n%s", i, problems, data)
		}
		if cfg.Hostname != fmt.Sprintf("node-%d", i) {
			t.Errorf("node-%d: hostname %q", i, cfg.Hostname)
		}
		if cfg.Network == nil || len(cfg.Network.Interfaces) != 1 || len(cfg.Network.Interfaces[0].Addresses) != 2 || cfg.Network.Interfaces[0].DHCP {
			t.Errorf("node-%d: network %+v: want one static interface with two addresses", i, cfg.Network)
		}
		if len(cfg.AuthorizedKeys) != 1 {
			t.Errorf("node-%d: authorized keys %v", i, cfg.AuthorizedKeys)
		}
		var agent map[string]any
		if err := yaml.Unmarshal(cfg.AgentYAML, &agent); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(path, cfg.AgentYAML, 0o600); err != nil {
			t.Fatal(err)
		}
		ac, err := config.Parse([]string{"--config", path})
		if err != nil {
			t.Fatalf("node-%d: the agent refuses its configuration: %v\n%s", i, err, cfg.AgentYAML)
		}
		if ac.Name != fmt.Sprintf("node-%d", i) || ac.ClientURL != fmt.Sprintf("https://10.240.0.%d:2379", 10+i) || ac.Voters != 3 {
			t.Errorf("node-%d: agent name %q client URL %q voters %d", i, ac.Name, ac.ClientURL, ac.Voters)
		}
		if ac.HeartbeatInterval.Duration != 500*time.Millisecond || ac.ElectionTimeout.Duration != 5*time.Second {
			t.Errorf("node-%d under emulation: heartbeat %s election %s, want 500ms and 5s", i, ac.HeartbeatInterval.Duration, ac.ElectionTimeout.Duration)
		}
		if joins := len(ac.Join); (i == 1) != (joins == 0) {
			t.Errorf("node-%d: join %v: only node-1 bootstraps", i, ac.Join)
		}
	}
	if v := testCluster(1).DefaultNodeConfig(1, "").Agent.Voters; v != 1 {
		t.Errorf("one-node cluster: voters %d, want 1", v)
	}
}

func TestCreateClusterRefusesBadInput(t *testing.T) {
	image := filepath.Join(t.TempDir(), "x.raw")
	if err := os.WriteFile(image, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, tc := range []struct {
		cfg  ClusterConfig
		want string
	}{
		{ClusterConfig{Name: "Bad_Name", Image: image, Nodes: 3}, "cluster name"},
		{ClusterConfig{Name: "-x", Image: image, Nodes: 3}, "cluster name"},
		{ClusterConfig{Name: "waytoolongclustername", Image: image, Nodes: 3}, "cluster name"},
		{ClusterConfig{Name: "ok", Image: image, Nodes: 0}, "want 1 to 9"},
		{ClusterConfig{Name: "ok", Image: image, Nodes: 10}, "want 1 to 9"},
		{ClusterConfig{Name: "ok", Image: filepath.Join(root, "missing.raw"), Nodes: 3}, "cluster image"},
	} {
		tc.cfg.Dir = filepath.Join(root, "c")
		_, err := CreateCluster(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.cfg, err, tc.want)
		}
		if _, err := os.Stat(tc.cfg.Dir); err == nil {
			t.Errorf("%+v: left %s behind", tc.cfg, tc.cfg.Dir)
		}
	}
}

func TestSplitFiles(t *testing.T) {
	pem := "-----BEGIN X-----\nAAAA\n-----END X-----\n"
	out := fileMarker + "ca.crt\n" + pem + fileMarker + "admin.crt\n" + pem + fileMarker + "admin.key\n" + pem
	files, err := splitFiles([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range adminFiles {
		if string(files[f]) != pem {
			t.Errorf("%s = %q", f, files[f])
		}
	}
	if _, err := splitFiles([]byte(fileMarker + "ca.crt\n" + pem)); err == nil {
		t.Error("output without the admin pair accepted")
	}
}

func TestDestroyLeavesForeignDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := DestroyCluster("nosuchcluster", dir); err == nil || !strings.Contains(err.Error(), "left alone") {
		t.Errorf("DestroyCluster on a foreign directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Errorf("foreign directory touched: %v", err)
	}
}

// listenIn listens on addr inside namespace ns.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in ns
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		res <- result{ln, err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.ln
}

func hostLinks(t *testing.T) string {
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

// Creating a cluster makes its namespace, bridge, taps, overlays and seed
// disks, and nothing on the host's network; the host process reaches the
// namespace with DialContext; Down removes all of it. No VM is started.
func TestClusterNetworkAndFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "qemu-img", "mkfs.vfat", "mcopy", "mtype", "fatlabel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	image := filepath.Join(t.TempDir(), "x.raw")
	if err := os.WriteFile(image, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	before := hostLinks(t)
	name := fmt.Sprintf("ut%d", os.Getpid()%100000)
	c, err := CreateCluster(ClusterConfig{Name: name, Image: image, Nodes: 2, Dir: filepath.Join(t.TempDir(), "cl")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Down() })
	if after := hostLinks(t); after != before {
		t.Errorf("host interfaces changed:\nbefore %s\nafter  %s", before, after)
	}
	addrs, err := exec.Command("ip", "-n", c.Netns, "-o", "addr", "show", "dev", "br0").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.240.0.1/24", "fd00:240::1/64"} {
		if !strings.Contains(string(addrs), want) {
			t.Errorf("br0 lacks %s:\n%s", want, addrs)
		}
	}
	for _, n := range c.Nodes {
		link, err := exec.Command("ip", "-n", c.Netns, "-o", "link", "show", "dev", n.Tap).Output()
		if err != nil || !strings.Contains(string(link), "master br0") {
			t.Errorf("%s: tap %s not on br0: %v %s", n.Name, n.Tap, err, link)
		}
		yamlOnSeed, err := exec.Command("mtype", "-i", n.Seed(), "::/node.yaml").Output()
		if err != nil {
			t.Fatalf("%s: seed: %v", n.Name, err)
		}
		written, _ := os.ReadFile(n.NodeYAML())
		if string(yamlOnSeed) != string(written) || !strings.Contains(string(written), "hostname: "+n.Name) {
			t.Errorf("%s: seed holds %q, node.yaml %q", n.Name, yamlOnSeed, written)
		}
		label, err := exec.Command("fatlabel", n.Seed()).Output()
		if err != nil || strings.TrimSpace(string(label)) != "BERTH-SEED" {
			t.Errorf("%s: seed label %q (%v)", n.Name, label, err)
		}
		info, err := exec.Command("qemu-img", "info", "--output=json", n.Disk()).Output()
		if err != nil || !strings.Contains(string(info), `"virtual-size": 3221225472`) {
			t.Errorf("%s: overlay: %v %s", n.Name, err, info)
		}
	}
	opened, err := OpenCluster(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if opened.Secret != c.Secret || len(opened.Secret) != 32 || len(opened.Nodes) != 2 {
		t.Errorf("reopened cluster differs: %+v", opened)
	}

	ln := listenIn(t, c.Netns, BridgeIPv4+":0")
	defer ln.Close()
	go func() {
		if conn, err := ln.Accept(); err == nil {
			conn.Write([]byte("hello from the namespace"))
			conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	k, _ := conn.Read(buf)
	conn.Close()
	if string(buf[:k]) != "hello from the namespace" {
		t.Errorf("read %q through DialContext", buf[:k])
	}
	// The same address is not reachable from the host's namespace.
	if conn, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp", ln.Addr().String()); err == nil {
		conn.Close()
		t.Errorf("%s reachable from the host namespace", ln.Addr())
	}

	if err := c.WriteNodeConfig(1, []byte("hostname: changed\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := exec.Command("mtype", "-i", c.Nodes[0].Seed(), "::/node.yaml").Output(); string(got) != "hostname: changed\n" {
		t.Errorf("rewritten seed holds %q", got)
	}

	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/var/run/netns", c.Netns)); err == nil {
		t.Error("namespace left after Down")
	}
	if _, err := os.Stat(c.Dir); err == nil {
		t.Error("directory left after Down")
	}
	if after := hostLinks(t); after != before {
		t.Errorf("host interfaces changed after Down:\nbefore %s\nafter  %s", before, after)
	}
}
