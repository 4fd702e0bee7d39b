package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/builder/qemu"
)

// Published host ports of the client job, and the container ports of
// every netcheck serve.
const (
	pubTCP, pubUDP    = 18080, 18081
	httpPort, udpPort = 8080, 8081
)

// listenInNetns makes a listener inside the cluster's network namespace
// (a socket keeps the namespace it was made in), on the host side of the
// cluster network: outside every container range.
func listenInNetns(c *qemu.Cluster, network, addr string) (net.Listener, net.PacketConn, error) {
	type result struct {
		ln  net.Listener
		pc  net.PacketConn
		err error
	}
	res := make(chan result, 1)
	go func() {
		// Never unlocked: the thread leaves the namespace by ending.
		runtime.LockOSThread()
		ns, err := os.Open(filepath.Join("/var/run/netns", c.Netns))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("enter namespace %s: %w", c.Netns, err)}
			return
		}
		if strings.HasPrefix(network, "udp") {
			pc, err := net.ListenPacket(network, addr)
			res <- result{pc: pc, err: err}
			return
		}
		ln, err := net.Listen(network, addr)
		res <- result{ln: ln, err: err}
	}()
	r := <-res
	return r.ln, r.pc, r.err
}

// outsideServer is an HTTP server at the cluster bridge's address
// (qemu.BridgeIPv4), answering like netcheck serve.
type outsideServer struct {
	url  string
	mu   sync.Mutex
	seen []string // remote addresses, in order
}

func startOutsideServer(t *testing.T, c *qemu.Cluster) *outsideServer {
	t.Helper()
	ln, _, err := listenInNetns(c, "tcp", net.JoinHostPort(qemu.BridgeIPv4, "0"))
	if err != nil {
		t.Fatalf("outside server: %v", err)
	}
	s := &outsideServer{url: "http://" + ln.Addr().String() + "/"}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, r.RemoteAddr)
		s.mu.Unlock()
		fmt.Fprintf(w, "host=outside client=%s\n", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// check runs one assertion of the scenario, retrying it for up to
// timeout (DNS records and routes may follow a container's start by a
// moment), and reports it as an error without stopping the scenario, so
// one run tells every assertion's outcome.
func (e *clusterEnv) check(t *testing.T, what string, timeout time.Duration, f func() error) bool {
	t.Helper()
	start := time.Now()
	if err := e.poll(timeout, f); err != nil {
		t.Errorf("FAIL %s: %v", what, err)
		return false
	}
	t.Logf("ok   %s (%.1f s)", what, time.Since(start).Seconds())
	return true
}

// scenarioContainerNetwork: the cluster's container network (issue 16).
// Tenant alpha runs web (3 replicas, one per node), client, and pub
// (which publishes a TCP and a UDP port); tenant beta runs intruder. The client
// reaches every web replica by name and address over TCP and UDP, and web
// sees the client's own address; a container reaches a server outside
// the container ranges as its node (masquerade); published ports answer
// from outside with the caller's real address; beta reaches nothing of
// alpha, not even its names; a web replica on a killed node comes back
// elsewhere under the same name. The killed node is left down for
// node-loss-and-config.
func scenarioContainerNetwork(t *testing.T, e *clusterEnv) {
	const a, b = "alpha", "beta"
	e.addTenant(t, a)
	e.addTenant(t, b)
	start := time.Now()
	// web and client get a quarter of a core (the others 50m): enough
	// that the throughput measured is the network's, not a CPU limit's.
	e.submit(t, testJob{name: "web", tenant: a, args: []string{"serve"}, replicas: 3, cpu: netCPU})
	e.submit(t, testJob{name: "client", tenant: a, args: []string{"serve"}, cpu: netCPU})
	// The published ports have a job of their own: a replica that cannot
	// start for them must not hide the other assertions.
	e.submit(t, testJob{name: "pub", tenant: a, args: []string{"serve"},
		ports: []jobs.Port{{Container: httpPort, Host: pubTCP, Protocol: "tcp"}, {Container: udpPort, Host: pubUDP, Protocol: "udp"}}})
	e.submit(t, testJob{name: "intruder", tenant: b, args: []string{"serve"}})
	web := e.waitReplicas(t, a, "web", 5*time.Minute, allRunning(3))
	client := e.waitReplicas(t, a, "client", 5*time.Minute, allRunning(1))[0]
	intruder := e.waitReplicas(t, b, "intruder", 5*time.Minute, allRunning(1))[0]
	t.Logf("measured: web, client and intruder (5 containers) running %.1f s after submission", time.Since(start).Seconds())
	t.Logf("berthctl --tenant %s ps:\n%s", a, e.ctl(t, "--tenant", a, "ps"))
	t.Logf("web: %s\nclient: %s\nintruder: %s", replicaSummary(web), replicaSummary([]jobs.ReplicaStatus{client}), replicaSummary([]jobs.ReplicaStatus{intruder}))
	webNodes := map[string]bool{}
	for _, r := range web {
		webNodes[r.Node] = true
		if r.IPv4 == "" {
			t.Fatalf("web replica %d has no address: %s", r.Replica, replicaSummary(web))
		}
	}
	if len(webNodes) != 3 {
		t.Fatalf("web's replicas are not spread over the 3 nodes: %s", replicaSummary(web))
	}
	clientNode, intruderNode := nodeIndex(t, client.Node), nodeIndex(t, intruder.Node)
	inClient := func(args ...string) (string, error) {
		return e.inContainer(e.ctx, clientNode, client.ContainerID, args...)
	}
	inIntruder := func(args ...string) (string, error) {
		return e.inContainer(e.ctx, intruderNode, intruder.ContainerID, args...)
	}
	where := func(node string) string {
		if node == client.Node {
			return "same node"
		}
		return "other node " + node
	}
	webIPs := func(list []jobs.ReplicaStatus) []string {
		var ips []string
		for _, r := range list {
			ips = append(ips, r.IPv4)
		}
		slices.Sort(ips)
		return ips
	}
	// resolves checks that name resolves in the client to exactly want.
	resolves := func(run func(...string) (string, error), name string, want []string) func() error {
		return func() error {
			out, err := run("resolve", name)
			if err != nil {
				return err
			}
			var got []string
			for _, a := range strings.Fields(out) {
				if !strings.Contains(a, ":") { // the IPv4 records
					got = append(got, a)
				}
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s resolves to %v, want %v", name, got, want)
			}
			return nil
		}
	}
	// answers checks a netcheck reply: from host, seeing the caller at ip.
	answers := func(out string, err error, host, ip string) error {
		if err != nil {
			return err
		}
		kv := keyValues(out)
		if kv["host"] != host || hostOf(kv["client"]) != ip {
			return fmt.Errorf("answer %q: want host=%s seeing client %s", strings.TrimSpace(out), host, ip)
		}
		return nil
	}

	// 1. Inside tenant alpha: names, TCP and UDP, every node, no NAT.
	e.check(t, "client resolves web.alpha.berth to the 3 replicas", 30*time.Second, resolves(inClient, "web.alpha.berth", webIPs(web)))
	for _, r := range web {
		host, name := fmt.Sprintf("web-%d", r.Replica), fmt.Sprintf("r%d.web.alpha.berth", r.Replica)
		e.check(t, fmt.Sprintf("client resolves %s to %s (%s)", name, r.IPv4, where(r.Node)), 20*time.Second, resolves(inClient, name, []string{r.IPv4}))
		e.check(t, fmt.Sprintf("client -> web-%d by address over TCP, seen as itself (%s)", r.Replica, where(r.Node)), 20*time.Second, func() error {
			out, err := inClient("get", fmt.Sprintf("http://%s:%d/", r.IPv4, httpPort))
			return answers(out, err, host, client.IPv4)
		})
		if r.IPv6 != "" && client.IPv6 != "" {
			e.check(t, fmt.Sprintf("client -> web-%d by IPv6 address over TCP, seen as itself (%s)", r.Replica, where(r.Node)), 20*time.Second, func() error {
				out, err := inClient("get", fmt.Sprintf("http://[%s]:%d/", r.IPv6, httpPort))
				return answers(out, err, host, client.IPv6)
			})
		} else {
			t.Errorf("web-%d (%s) or the client (%s) has no IPv6 address", r.Replica, r.IPv6, client.IPv6)
		}
		e.check(t, fmt.Sprintf("client -> %s:%d over TCP, seen as itself (%s)", name, httpPort, where(r.Node)), 20*time.Second, func() error {
			out, err := inClient("get", fmt.Sprintf("http://%s:%d/", name, httpPort))
			return answers(out, err, host, client.IPv4)
		})
		e.check(t, fmt.Sprintf("client -> %s:%d over UDP, seen as itself (%s)", name, udpPort, where(r.Node)), 20*time.Second, func() error {
			out, err := inClient("udp", fmt.Sprintf("%s:%d", name, udpPort), "ping")
			return answers(out, err, host, client.IPv4)
		})
	}

	// Measured, not asserted: throughput across nodes against the
	// nodes' own, and DNS answer latency.
	for _, r := range web {
		if r.Node != client.Node {
			e.measureThroughput(t, client, r, inClient)
			break
		}
	}
	if out, err := inClient("dnsbench", "-n", "50", "web.alpha.berth"); err == nil {
		t.Logf("measured: DNS lookups of web.alpha.berth (A and AAAA) from the client container: %s", strings.TrimSpace(out))
	} else {
		t.Errorf("dnsbench in the client: %v", err)
	}

	// 2. Out of the cluster: the server sees the node's address.
	outside := startOutsideServer(t, e.c)
	clientNodeIP := e.c.Nodes[clientNode-1].IPv4
	e.check(t, "client -> a server outside the container ranges, seen as its node "+clientNodeIP, 20*time.Second, func() error {
		out, err := inClient("get", outside.url)
		return answers(out, err, "outside", clientNodeIP)
	})

	// 3. Published ports, from outside: the container sees the caller.
	var pub jobs.ReplicaStatus
	if e.check(t, fmt.Sprintf("pub publishing TCP %d and UDP %d runs", pubTCP, pubUDP), 0, func() error {
		list, err := e.replicas(a, "pub")
		if err == nil {
			if err = allRunning(1)(list); err == nil {
				pub = list[0]
			}
		}
		return err
	}) {
		pubIP := e.c.Nodes[nodeIndex(t, pub.Node)-1].IPv4
		httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: e.c.DialContext}}
		e.check(t, fmt.Sprintf("published TCP %s:%d answers and sees the caller %s", pubIP, pubTCP, qemu.BridgeIPv4), 20*time.Second, func() error {
			resp, err := httpc.Get(fmt.Sprintf("http://%s:%d/", pubIP, pubTCP))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			return answers(string(body), err, "pub-0", qemu.BridgeIPv4)
		})
		e.check(t, fmt.Sprintf("published UDP %s:%d answers and sees the caller %s", pubIP, pubUDP, qemu.BridgeIPv4), 20*time.Second, func() error {
			out, err := e.udpFromOutside(fmt.Sprintf("%s:%d", pubIP, pubUDP))
			return answers(out, err, "pub-0", qemu.BridgeIPv4)
		})
	}

	// 4. Tenants apart: beta has a working network (the controls) and
	// reaches nothing of alpha's, on its node or another.
	e.check(t, "control: intruder (beta) reaches the outside server", 20*time.Second, func() error {
		_, err := inIntruder("connect", strings.TrimSuffix(strings.TrimPrefix(outside.url, "http://"), "/"))
		return err
	})
	e.check(t, "control: intruder resolves its own intruder.beta.berth", 20*time.Second, resolves(inIntruder, "intruder.beta.berth", []string{intruder.IPv4}))
	for _, r := range web {
		place := "other node " + r.Node
		if r.Node == intruder.Node {
			place = "same node"
		}
		e.check(t, fmt.Sprintf("intruder cannot connect to web-%d %s:%d (%s)", r.Replica, r.IPv4, httpPort, place), 0, func() error {
			out, err := inIntruder("connect", fmt.Sprintf("%s:%d", r.IPv4, httpPort))
			if err == nil {
				return fmt.Errorf("beta reached alpha's web-%d: %s", r.Replica, strings.TrimSpace(out))
			}
			return netcheckFailed(err, "connect", "")
		})
	}
	e.check(t, "intruder cannot resolve web.alpha.berth", 0, func() error {
		out, err := inIntruder("resolve", "web.alpha.berth")
		if err == nil {
			return fmt.Errorf("beta resolved alpha's web.alpha.berth: %s", strings.Join(strings.Fields(out), " "))
		}
		return netcheckFailed(err, "resolve", "no such host")
	})

	// 5. A node dies: its web replica runs elsewhere and its name follows.
	// The replicas as they are now: one that moved meanwhile (it should
	// not have) must not be taken for the killed node's.
	now := e.waitReplicas(t, a, "web", time.Minute, allRunning(3))
	if !slices.EqualFunc(now, web, func(x, y jobs.ReplicaStatus) bool { return x.ContainerID == y.ContainerID && x.Node == y.Node }) {
		t.Errorf("web's replicas moved during the scenario, no node was down: was %s, now %s", replicaSummary(web), replicaSummary(now))
	}
	e.webFailover(t, now, client, inClient, resolves)
}

// udpFromOutside sends to addr from the cluster's namespace and returns
// the first reply (three tries: UDP may drop one).
func (e *clusterEnv) udpFromOutside(addr string) (string, error) {
	conn, err := e.c.DialContext(e.ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	for range 3 {
		if _, err := conn.Write([]byte("ping")); err != nil {
			return "", err
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := conn.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", fmt.Errorf("no UDP reply from %s", addr)
}

// watchNotReady polls the node list until node is not Ready and sends
// when that was seen (or closes the channel after a minute without).
func (e *clusterEnv) watchNotReady(node string) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		defer close(ch)
		ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
		defer cancel()
		for ctx.Err() == nil {
			if nodes, err := e.c.ListNodes(ctx, e.berthctl); err == nil {
				for _, n := range nodes {
					if n.Name == node && n.Status != "Ready" {
						ch <- time.Now()
						return
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second): // each poll is a berthctl run: light on the emulated nodes
			}
		}
	}()
	return ch
}

// webFailover kills a node holding a web replica (not the client's, so
// the client keeps asking) and measures until the replica runs elsewhere
// and until its names answer with the new address. It leaves the node
// down: node-loss-and-config, next, starts it again.
func (e *clusterEnv) webFailover(t *testing.T, web []jobs.ReplicaStatus, client jobs.ReplicaStatus,
	inClient func(...string) (string, error), resolves func(func(...string) (string, error), string, []string) func() error) {
	var victim *jobs.ReplicaStatus
	for i := range web {
		if web[i].Node != client.Node && (victim == nil || web[i].Node > victim.Node) {
			victim = &web[i]
		}
	}
	node := nodeIndex(t, victim.Node)
	if err := e.c.Kill(node); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// node-loss-and-config goes on with the node down (a boot saved).
	e.down, e.downAt = node, killed
	notReady := e.watchNotReady(victim.Node)
	moved := e.waitReplicas(t, "alpha", "web", 5*time.Minute, func(list []jobs.ReplicaStatus) error {
		if err := allRunning(3)(list); err != nil {
			return err
		}
		for _, r := range list {
			if r.Replica == victim.Replica && (r.Node == victim.Node || r.ContainerID == victim.ContainerID || r.IPv4 == "") {
				return fmt.Errorf("web-%d still on %s", r.Replica, r.Node)
			}
		}
		return nil
	})
	var now jobs.ReplicaStatus
	var ips []string
	for _, r := range moved {
		if r.Replica == victim.Replica {
			now = r
		}
		ips = append(ips, r.IPv4)
	}
	slices.Sort(ips)
	t.Logf("measured: node-%d killed: web-%d running on %s (%s, was %s) %.1f s later", node, victim.Replica, now.Node, now.IPv4, victim.IPv4, time.Since(killed).Seconds())
	phases := "not seen NotReady"
	if at, ok := <-notReady; ok {
		phases = fmt.Sprintf("NotReady after %.1f s", at.Sub(killed).Seconds())
	}
	if now.StartedAt != nil { // the new node's clock: qemu keeps guests on the host's time
		phases += fmt.Sprintf(", container started %.1f s after the kill", now.StartedAt.Sub(killed).Seconds())
	}
	t.Logf("measured: node-%d killed: %s", node, phases)
	name := fmt.Sprintf("r%d.web.alpha.berth", victim.Replica)
	if e.check(t, fmt.Sprintf("after the failover %s resolves to the new %s", name, now.IPv4), 2*time.Minute, resolves(inClient, name, []string{now.IPv4})) {
		t.Logf("measured: node-%d killed: %s answers the new address %.1f s later", node, name, time.Since(killed).Seconds())
	}
	e.check(t, "after the failover web.alpha.berth resolves to the 3 running replicas", time.Minute, resolves(inClient, "web.alpha.berth", ips))
	e.check(t, fmt.Sprintf("after the failover client -> %s:%d reaches web-%d", name, httpPort, victim.Replica), time.Minute, func() error {
		out, err := inClient("get", fmt.Sprintf("http://%s:%d/", name, httpPort))
		if err != nil {
			return err
		}
		if h := keyValues(out)["host"]; h != fmt.Sprintf("web-%d", victim.Replica) {
			return fmt.Errorf("answer %q", strings.TrimSpace(out))
		}
		return nil
	})
	// The dead node may return: its subnets stay leased to it (the
	// reclaim grace is a day), none was handed to another node.
	e.check(t, fmt.Sprintf("node-%d's subnets stay leased to it while it is down", node), 0, func() error {
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		defer cancel()
		resp, err := e.cli.Get(ctx, subnet.LeasesPrefix, clientv3.WithPrefix())
		if err != nil {
			return err
		}
		holders := map[string]int{}
		for _, kv := range resp.Kvs {
			var l subnet.Lease
			if err := json.Unmarshal(kv.Value, &l); err != nil {
				return err
			}
			holders[l.Node]++
			if l.Node == victim.Node && l.Subnet.Addr().Is4() && !l.Subnet.Contains(netip.MustParseAddr(victim.IPv4)) {
				return fmt.Errorf("%s's IPv4 lease is %s, which does not hold its replica's old address %s", victim.Node, l.Subnet, victim.IPv4)
			}
		}
		if holders[victim.Node] != 2 || len(holders) != 3 {
			return fmt.Errorf("leases per node %v: want 2 (IPv4 and IPv6) for each of the 3 nodes", holders)
		}
		return nil
	})
}

// The CPU limit of the web and client containers, and the same for the
// node-side ends of the throughput measurement.
const (
	netCPU        = "250m"
	netCPUPercent = 25
)

// measureThroughput pulls a bulk HTTP body from web replica r on another
// node into the client container (the container network: bridge, route
// between the nodes, bridge), and the same from a netcheck server on r's
// node into the client's node (the nodes' own network), alternating,
// and logs the best of each and their ratio. The node-side netcheck is
// the image's binary, copied out of the running container.
func (e *clusterEnv) measureThroughput(t *testing.T, client, r jobs.ReplicaStatus, inClient func(...string) (string, error)) {
	t.Helper()
	const size = 32 << 20
	const bin, unit, port = "/run/berth-e2e-netcheck", "berth-e2e-sink", 18090
	clientNode, serverNode := nodeIndex(t, client.Node), nodeIndex(t, r.Node)
	copyOut := func(node int, id string) error {
		_, err := e.c.SSH(e.ctx, node, fmt.Sprintf(`pid=$(%s) && cp /proc/$pid/root/bin/netcheck %s`, containerPidScript(id), bin))
		return err
	}
	if err := copyOut(clientNode, client.ContainerID); err != nil {
		t.Errorf("throughput: %v", err)
		return
	}
	if err := copyOut(serverNode, r.ContainerID); err != nil {
		t.Errorf("throughput: %v", err)
		return
	}
	// The node-side server and client get the containers' CPU limit, so
	// that the ratio compares the paths, not the CPU each side may use.
	quota := fmt.Sprintf("CPUQuota=%d%%", netCPUPercent)
	if _, err := e.c.SSH(e.ctx, serverNode, fmt.Sprintf(`systemd-run --quiet --collect -p %s --unit %s %s serve -http :%d -udp ""`, quota, unit, bin, port)); err != nil {
		t.Errorf("throughput: node server: %v", err)
		return
	}
	defer e.c.SSH(e.ctx, serverNode, "systemctl stop "+unit)
	rate := func(out string, err error) (float64, error) {
		if err != nil {
			return 0, err
		}
		return strconv.ParseFloat(keyValues(out)["mib_per_s"], 64)
	}
	var best [2]float64
	for range 2 {
		c, err := rate(inClient("pull", fmt.Sprintf("http://%s:%d/bytes?n=%d", r.IPv4, httpPort, size)))
		if err != nil {
			t.Errorf("throughput container to container: %v", err)
			return
		}
		serverIP := e.c.Nodes[serverNode-1].IPv4
		out, err := e.c.SSH(e.ctx, clientNode, fmt.Sprintf("systemd-run --quiet --scope -p %s %s pull http://%s:%d/bytes?n=%d", quota, bin, serverIP, port, size))
		n, err := rate(string(out), err)
		if err != nil {
			t.Errorf("throughput node to node: %v", err)
			return
		}
		best[0], best[1] = max(best[0], c), max(best[1], n)
	}
	t.Logf("measured: TCP throughput %s -> %s (direct routes, best of 2 x %d MiB, both ends limited to %s CPU): container to container %.1f MiB/s, node to node %.1f MiB/s, ratio %.2f",
		r.Node, client.Node, size>>20, netCPU, best[0], best[1], best[0]/best[1])
}

// netcheckFailed is nil when err is netcheck's own failure of cmd (the
// connection or lookup was refused, as a negative check wants), with
// want in its message when given; any other error (the container is
// gone, ssh failed) means the check did not run, which must not pass.
func netcheckFailed(err error, cmd, want string) error {
	msg := err.Error()
	if !strings.Contains(msg, "netcheck "+cmd+": ") {
		return fmt.Errorf("the check did not run: %v", err)
	}
	if want != "" && !strings.Contains(msg, want) {
		return fmt.Errorf("netcheck %s failed, but not with %q: %v", cmd, want, err)
	}
	return nil
}
