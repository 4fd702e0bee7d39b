package netsetup

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/netnstest"
)

// sandbox is a lab (see netnstest) whose home namespace holds the Network
// under test, and the directory its container namespaces are mounted in.
type sandbox struct {
	t      *testing.T
	lab    *netnstest.Lab
	netDir string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	s := &sandbox{t: t, lab: netnstest.New(t), netDir: filepath.Join(t.TempDir(), "netns")}
	// Open turns the netns dir into a mount point; undo that before TempDir cleanup.
	t.Cleanup(func() { unix.Unmount(s.netDir, unix.MNT_DETACH) })
	return s
}

func (s *sandbox) config(stateDir string) Config {
	return Config{
		Bridge:   "btest0",
		Subnet4:  netip.MustParsePrefix("10.250.7.0/24"),
		Subnet6:  netip.MustParsePrefix("fd00:beef:7::/64"),
		StateDir: stateDir,
		NetNSDir: s.netDir,
	}
}

func (s *sandbox) open(cfg Config) *Network {
	s.t.Helper()
	n, err := Open(cfg)
	if err != nil {
		s.t.Fatalf("Open: %v", err)
	}
	s.t.Cleanup(func() { n.Close() })
	return n
}

// at opens the netns at path (the sandbox when path is "") for as long as fn runs.
func (s *sandbox) at(path string, fn func(ns netns.NsHandle)) {
	s.t.Helper()
	if path == "" {
		fn(s.lab.Home)
		return
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		s.t.Fatalf("open netns %s: %v", path, err)
	}
	defer h.Close()
	fn(h)
}

// in runs fn with the test thread inside the netns at path, then returns to the sandbox.
func (s *sandbox) in(path string, fn func()) {
	s.t.Helper()
	s.at(path, func(ns netns.NsHandle) { s.lab.In(ns, fn) })
}

// hostSysctl reads a sysctl in the host namespace from a separate locked thread.
func (s *sandbox) hostSysctl(name string) string {
	out := make(chan string, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(s.lab.Host); err != nil {
			out <- "error: " + err.Error()
			return
		}
		b, err := os.ReadFile("/proc/sys/" + name)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- strings.TrimSpace(string(b))
	}()
	return <-out
}

func mustAttach(t *testing.T, n *Network, id string) Attachment {
	t.Helper()
	a, err := n.Attach(id)
	if err != nil {
		t.Fatalf("Attach(%s): %v", id, err)
	}
	return a
}

// listen opens a TCP greeting server inside the netns at path (or the sandbox when path is "").
func (s *sandbox) listen(path string, ip netip.Addr) netip.AddrPort {
	s.t.Helper()
	var ap netip.AddrPort
	s.at(path, func(ns netns.NsHandle) {
		ap = s.lab.ServeTCP(ns, netip.AddrPortFrom(ip, 0).String(), func(c net.Conn) {
			io.WriteString(c, "hello from "+ip.String())
		})
	})
	return ap
}

// dial connects from inside the netns at path (or the sandbox when path is "")
// and returns what the server said.
func (s *sandbox) dial(path string, addr string) (string, error) {
	return s.dialTimeout(path, addr, 3*time.Second)
}

func (s *sandbox) dialTimeout(path string, addr string, timeout time.Duration) (got string, err error) {
	s.at(path, func(ns netns.NsHandle) { got, err = s.lab.Ask(ns, "tcp", addr, timeout) })
	return got, err
}

func TestAttachConnectsContainers(t *testing.T) {
	s := newSandbox(t)
	hostForward := s.hostSysctl("net/ipv4/ip_forward")
	n := s.open(s.config(t.TempDir()))
	if !n.IPv6Enabled() {
		t.Fatal("IPv6 should be on: the sandbox netns has it enabled")
	}

	br, err := netlink.LinkByName("btest0")
	if err != nil {
		t.Fatal(err)
	}
	brMAC := br.Attrs().HardwareAddr.String()

	a := mustAttach(t, n, "acme.web.0.g1")
	b := mustAttach(t, n, "acme.web.1.g1")
	t.Cleanup(func() { n.Detach("acme.web.0.g1"); n.Detach("acme.web.1.g1") })

	if a.IPv4 != netip.MustParseAddr("10.250.7.2") || b.IPv4 != netip.MustParseAddr("10.250.7.3") {
		t.Fatalf("want lowest free addresses .2 and .3, got %s and %s", a.IPv4, b.IPv4)
	}
	if !netip.MustParsePrefix("fd00:beef:7::/64").Contains(a.IPv6) || a.IPv6 == b.IPv6 {
		t.Fatalf("bad IPv6 addresses %s, %s", a.IPv6, b.IPv6)
	}
	if a.NetNSPath != filepath.Join(s.netDir, "acme.web.0.g1") {
		t.Fatalf("netns path %s", a.NetNSPath)
	}
	if ok, _ := isNetNSMount(a.NetNSPath); !ok {
		t.Fatalf("%s is not a mounted netns", a.NetNSPath)
	}

	// IPv4 and IPv6, container to container across the bridge.
	for _, ip := range []netip.Addr{b.IPv4, b.IPv6} {
		srv := s.listen(b.NetNSPath, ip)
		got, err := s.dial(a.NetNSPath, srv.String())
		if err != nil || got != "hello from "+ip.String() {
			t.Fatalf("a -> b %s: got %q, %v", srv, got, err)
		}
	}
	// Container to the gateway (the node side of the bridge) uses the default route.
	for _, gw := range []netip.Addr{n.Gateway4(), n.Gateway6()} {
		srv := s.listen("", gw)
		got, err := s.dial(a.NetNSPath, srv.String())
		if err != nil || got != "hello from "+gw.String() {
			t.Fatalf("container -> gateway %s: got %q, %v", srv, got, err)
		}
	}
	// Sanity check of the probe itself: an unassigned address does not answer.
	if _, err := s.dialTimeout(a.NetNSPath, "10.250.7.99:80", 300*time.Millisecond); err == nil {
		t.Fatal("dial to an unassigned address unexpectedly worked")
	}

	// Ports joining must not change the bridge MAC (containers cache it for the gateway).
	if br, err = netlink.LinkByName("btest0"); err != nil || br.Attrs().HardwareAddr.String() != brMAC {
		t.Fatalf("bridge MAC changed from %s to %v (%v)", brMAC, br.Attrs().HardwareAddr, err)
	}

	// Container side: eth0 with a MAC derived from its IPv4 and a default route through the gateway.
	s.in(a.NetNSPath, func() {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			t.Fatalf("no eth0 in container: %v", err)
		}
		if got := eth0.Attrs().HardwareAddr.String(); got != "02:be:0a:fa:07:02" {
			t.Fatalf("eth0 MAC %s, want 02:be:0a:fa:07:02", got)
		}
		routes, err := netlink.RouteList(eth0, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var gws []string
		for _, r := range routes {
			if r.Gw != nil {
				gws = append(gws, r.Gw.String())
			}
		}
		if strings.Join(gws, ",") != "10.250.7.1,fd00:beef:7::1" {
			t.Fatalf("default routes via %v, want 10.250.7.1 and fd00:beef:7::1", gws)
		}
	})

	// Forwarding was enabled in the sandbox only.
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if strings.TrimSpace(string(fwd)) != "1" {
		t.Fatalf("ip_forward in sandbox = %q, want 1", fwd)
	}
	if got := s.hostSysctl("net/ipv4/ip_forward"); got != hostForward {
		t.Fatalf("host ip_forward changed from %s to %s", hostForward, got)
	}
}

func TestAttachIsIdempotentAndSurvivesRestart(t *testing.T) {
	s := newSandbox(t)
	state := t.TempDir()
	cfg := s.config(state)
	n := s.open(cfg)
	a1 := mustAttach(t, n, "t.a.0.g1")
	b1 := mustAttach(t, n, "t.b.0.g1")

	again := mustAttach(t, n, "t.a.0.g1")
	if again != a1 {
		t.Fatalf("second Attach returned %+v, first %+v", again, a1)
	}

	// Restart: a fresh Network over the same state and bridge.
	n.Close()
	if _, err := n.Attach("t.c"); err == nil {
		t.Fatal("Attach on a closed Network should fail")
	}
	n2 := s.open(cfg)
	t.Cleanup(func() { n2.Detach("t.a.0.g1"); n2.Detach("t.b.0.g1") })
	a2 := mustAttach(t, n2, "t.a.0.g1")
	b2 := mustAttach(t, n2, "t.b.0.g1")
	if a2 != a1 || b2 != b1 {
		t.Fatalf("addresses changed across restart: %+v %+v -> %+v %+v", a1, b1, a2, b2)
	}
	srv := s.listen(b2.NetNSPath, b2.IPv4)
	if got, err := s.dial(a2.NetNSPath, srv.String()); err != nil || !strings.HasPrefix(got, "hello") {
		t.Fatalf("after restart: %q, %v", got, err)
	}

	// Repair: someone deleted the host veth; Attach recreates the pair.
	link, err := netlink.LinkByName(hostVethName("t.a.0.g1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	a3 := mustAttach(t, n2, "t.a.0.g1")
	if a3 != a1 {
		t.Fatalf("repair changed attachment: %+v -> %+v", a1, a3)
	}
	if got, err := s.dial(a3.NetNSPath, srv.String()); err != nil || !strings.HasPrefix(got, "hello") {
		t.Fatalf("after repair: %q, %v", got, err)
	}
}

func TestDetachFreesEverything(t *testing.T) {
	s := newSandbox(t)
	n := s.open(s.config(t.TempDir()))
	a := mustAttach(t, n, "x.0")
	b := mustAttach(t, n, "x.1")
	t.Cleanup(func() { n.Detach("x.1"); n.Detach("x.2") })

	if err := n.Detach("x.0"); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if _, err := os.Stat(a.NetNSPath); !os.IsNotExist(err) {
		t.Fatalf("netns file still there: %v", err)
	}
	if _, err := netlink.LinkByName(hostVethName("x.0")); err == nil {
		t.Fatal("host veth still there")
	}
	if _, ok, _ := n.Lookup("x.0"); ok {
		t.Fatal("address still allocated")
	}
	if err := n.Detach("x.0"); err != nil {
		t.Fatalf("second Detach should be a no-op: %v", err)
	}
	if err := n.Detach("never.attached"); err != nil {
		t.Fatalf("Detach of unknown id: %v", err)
	}
	// The freed, lowest address is handed out again; b keeps its own.
	c := mustAttach(t, n, "x.2")
	if c.IPv4 != a.IPv4 || c.IPv6 != a.IPv6 {
		t.Fatalf("freed address not reused: a=%s/%s c=%s/%s", a.IPv4, a.IPv6, c.IPv4, c.IPv6)
	}
	if b2 := mustAttach(t, n, "x.1"); b2 != b {
		t.Fatalf("b changed: %+v -> %+v", b, b2)
	}
}

func TestIPv6Disabled(t *testing.T) {
	s := newSandbox(t)
	cfg := s.config(t.TempDir())
	cfg.DisableIPv6 = true
	n := s.open(cfg)
	a := mustAttach(t, n, "v4only")
	t.Cleanup(func() { n.Detach("v4only") })
	if a.IPv6.IsValid() || n.Gateway6().IsValid() {
		t.Fatalf("IPv6 disabled but got %s / gateway %s", a.IPv6, n.Gateway6())
	}
	s.in(a.NetNSPath, func() {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := netlink.AddrList(eth0, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			if ad.IP.IsGlobalUnicast() {
				t.Fatalf("unexpected IPv6 address %s", ad.IP)
			}
		}
	})
}

func TestBadInput(t *testing.T) {
	s := newSandbox(t)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"tiny subnet", func(c *Config) { c.Subnet4 = netip.MustParsePrefix("10.1.1.0/31") }, "too small"},
		{"v6 as v4", func(c *Config) { c.Subnet4 = netip.MustParsePrefix("fd00::/64") }, "not an IPv4 prefix"},
		{"v4 as v6", func(c *Config) { c.Subnet6 = netip.MustParsePrefix("10.0.0.0/8") }, "not an IPv6 prefix"},
		{"long bridge", func(c *Config) { c.Bridge = "a-very-long-bridge-name" }, "invalid bridge name"},
		{"bridge is not a bridge", func(c *Config) { c.Bridge = "lo" }, "not a bridge"},
	} {
		cfg := s.config(t.TempDir())
		tc.mod(&cfg)
		_, err := Open(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Open error %v, want one line containing %q", tc.name, err, tc.want)
		}
	}

	cfg := s.config(t.TempDir())
	cfg.Subnet4 = netip.MustParsePrefix("10.250.9.0/30") // room for exactly one container
	n := s.open(cfg)
	for _, id := range []string{"", "../etc", "Upper", "a/b", strings.Repeat("a", 129)} {
		if _, err := n.Attach(id); err == nil || !strings.Contains(err.Error(), "invalid container id") {
			t.Errorf("Attach(%q): %v, want invalid container id", id, err)
		}
		if err := n.Detach(id); err == nil {
			t.Errorf("Detach(%q) accepted a bad id", id)
		}
	}
	first := mustAttach(t, n, "only")
	t.Cleanup(func() { n.Detach("only") })
	if first.IPv4 != netip.MustParseAddr("10.250.9.2") {
		t.Fatalf("got %s", first.IPv4)
	}
	_, err := n.Attach("second")
	if err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("Attach on a full subnet: %v, want exhausted", err)
	}
	// The failed attempt left nothing behind.
	if _, statErr := os.Stat(n.NetNSPath("second")); !os.IsNotExist(statErr) {
		t.Fatalf("failed Attach left %s: %v", n.NetNSPath("second"), statErr)
	}
}

func TestHostVethName(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"a", "b", "acme.web.0.g1", "acme.web.0.g2", strings.Repeat("z", 128)} {
		name := hostVethName(id)
		if len(name) > 15 || !strings.HasPrefix(name, "bv") || name != hostVethName(id) {
			t.Fatalf("bad name %q for %q", name, id)
		}
		if other, dup := seen[name]; dup {
			t.Fatalf("%q and %q share %s", id, other, name)
		}
		seen[name] = id
	}
}

func TestConcurrentAttachSharedState(t *testing.T) {
	s := newSandbox(t)
	cfg := s.config(t.TempDir())
	// Two Networks over one state dir stand in for two processes: only the
	// IPAM flock keeps their allocations apart.
	n1, n2 := s.open(cfg), s.open(cfg)
	const perNet = 6
	type result struct {
		id  string
		att Attachment
		err error
	}
	results := make(chan result, 2*perNet)
	for i := range 2 * perNet {
		n := n1
		if i%2 == 1 {
			n = n2
		}
		id := fmt.Sprintf("c.%d", i)
		t.Cleanup(func() { n.Detach(id) })
		go func() {
			a, err := n.Attach(id)
			results <- result{id, a, err}
		}()
	}
	seen4, seen6 := map[netip.Addr]string{}, map[netip.Addr]string{}
	for range 2 * perNet {
		r := <-results
		if r.err != nil {
			t.Fatalf("Attach(%s): %v", r.id, r.err)
		}
		if other, dup := seen4[r.att.IPv4]; dup {
			t.Fatalf("%s and %s both got %s", r.id, other, r.att.IPv4)
		}
		if other, dup := seen6[r.att.IPv6]; dup {
			t.Fatalf("%s and %s both got %s", r.id, other, r.att.IPv6)
		}
		seen4[r.att.IPv4], seen6[r.att.IPv6] = r.id, r.id
	}
	// The lowest 2*perNet addresses, none skipped.
	for i := range 2 * perNet {
		want := netip.AddrFrom4([4]byte{10, 250, 7, byte(2 + i)})
		if _, ok := seen4[want]; !ok {
			t.Fatalf("address %s not handed out; got %v", want, seen4)
		}
	}
}

func TestAttachReplacesLeftoverFile(t *testing.T) {
	s := newSandbox(t)
	n := s.open(s.config(t.TempDir()))
	// A crash between creating the file and mounting the netns leaves a plain file.
	if err := os.WriteFile(n.NetNSPath("crashed"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	a := mustAttach(t, n, "crashed")
	t.Cleanup(func() { n.Detach("crashed") })
	if ok, err := isNetNSMount(a.NetNSPath); !ok || err != nil {
		t.Fatalf("leftover file not replaced by a netns: %v %v", ok, err)
	}
}
