package servicedns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/internal/syncbuf"
)

// Sources in these tests: 127.0.0.2 is a container of acme, 127.0.0.3 one
// of globex, 127.0.0.1 the node, 127.0.0.9 a stranger.
var testTenants = map[string]string{"127.0.0.2": "acme", "127.0.0.3": "globex"}

func testConfig(ups []netip.AddrPort, logw *syncbuf.Buffer) Config {
	return Config{
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams: ups,
		TenantOf: func(a netip.Addr) (string, bool) {
			t, ok := testTenants[a.String()]
			return t, ok
		},
		IsNode:         func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.1") },
		ForwardTimeout: time.Second,
		Log:            slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func startServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := Start(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// fakeUpstream is a DNS server on loopback standing in for the node's
// resolver: example.test has an address, big.test is truncated over UDP
// and has 40 addresses over TCP, fail.test is SERVFAIL, all else NXDOMAIN.
type fakeUpstream struct {
	addr     netip.AddrPort
	udp, tcp atomic.Int32
	mu       sync.Mutex
	names    []string
}

func startUpstream(tb testing.TB) *fakeUpstream {
	tb.Helper()
	u := &fakeUpstream{}
	pc, ln, addr, err := bind(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		tb.Fatal(err)
	}
	u.addr = addr
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		tcp := w.LocalAddr().Network() == "tcp"
		if tcp {
			u.tcp.Add(1)
		} else {
			u.udp.Add(1)
		}
		name := strings.ToLower(r.Question[0].Name)
		u.mu.Lock()
		u.names = append(u.names, name)
		u.mu.Unlock()
		m := new(dns.Msg).SetReply(r)
		m.RecursionAvailable = true
		switch name {
		case "example.test.":
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		case "big.test.":
			if !tcp {
				m.Truncated = true
				break
			}
			for i := range 40 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(10+i))})
			}
		case "fail.test.":
			m.Rcode = dns.RcodeServerFailure
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		tb.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func (u *fakeUpstream) saw(sub string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range u.names {
		if strings.Contains(n, sub) {
			return true
		}
	}
	return false
}

// deadUpstream is a loopback port nobody listens on.
func deadUpstream(tb testing.TB) netip.AddrPort {
	tb.Helper()
	pc, ln, addr, err := bind(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		tb.Fatal(err)
	}
	pc.Close()
	ln.Close()
	return addr
}

// ask sends one query from the source address over network (udp, tcp).
func ask(tb testing.TB, server netip.AddrPort, from, network, name string, qtype uint16, edns bool) *dns.Msg {
	tb.Helper()
	src := net.ParseIP(from)
	d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: src}}
	if network == "tcp" {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	c := &dns.Client{Net: network, Dialer: d, Timeout: 5 * time.Second}
	m := new(dns.Msg).SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(4096, false)
	}
	r, _, err := c.Exchange(m, server.String())
	if err != nil {
		tb.Fatalf("%s from %s over %s: %v", name, from, network, err)
	}
	return r
}

func addrsOf(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

func TestServerTenantBySource(t *testing.T) {
	up := startUpstream(t)
	var logs syncbuf.Buffer
	s := startServer(t, testConfig([]netip.AddrPort{up.addr}, &logs))
	s.Update(testView())
	srv := s.Addrs()[0]
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range []struct {
			from, name string
			rcode      int
			n          int
		}{
			{"127.0.0.2", "web.acme.berth.", dns.RcodeSuccess, 2},
			{"127.0.0.2", "web.globex.berth.", dns.RcodeNameError, 0},
			{"127.0.0.2", "r0.web.globex.berth.", dns.RcodeNameError, 0},
			{"127.0.0.3", "web.globex.berth.", dns.RcodeSuccess, 1},
			{"127.0.0.3", "web.acme.berth.", dns.RcodeNameError, 0},
			{"127.0.0.1", "web.acme.berth.", dns.RcodeSuccess, 2},
			{"127.0.0.1", "web.globex.berth.", dns.RcodeSuccess, 1},
			{"127.0.0.9", "web.acme.berth.", dns.RcodeRefused, 0},
			{"127.0.0.9", "example.test.", dns.RcodeRefused, 0},
		} {
			r := ask(t, srv, c.from, network, c.name, dns.TypeA, false)
			if r.Rcode != c.rcode || len(r.Answer) != c.n {
				t.Errorf("%s: %s from %s: %s with %d answers, want %s with %d", network, c.name, c.from,
					dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[c.rcode], c.n)
			}
			if c.rcode != dns.RcodeRefused && (!r.Authoritative || !r.RecursionAvailable) {
				t.Errorf("%s: %s from %s: AA=%v RA=%v", network, c.name, c.from, r.Authoritative, r.RecursionAvailable)
			}
		}
	}
	if up.saw("example.test") || up.saw("berth") {
		t.Error("a refused or berth. query reached the upstream")
	}
}

// Answers of several replicas rotate, so clients taking the first spread.
func TestServerRotates(t *testing.T) {
	s := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))
	s.Update(testView())
	firsts := map[string]bool{}
	for range 4 {
		r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "web.acme.berth.", dns.TypeA, false)
		firsts[addrsOf(r)[0]] = true
	}
	if len(firsts) != 2 {
		t.Errorf("first answers %v, want both replicas", firsts)
	}
}

func TestServerForwards(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, testConfig([]netip.AddrPort{up.addr}, &syncbuf.Buffer{}))
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, s.Addrs()[0], "127.0.0.2", network, "Example.Test.", dns.TypeA, false)
		if got := addrsOf(r); r.Rcode != dns.RcodeSuccess || len(got) != 1 || got[0] != "192.0.2.1" {
			t.Errorf("%s: example.test: %s %v", network, dns.RcodeToString[r.Rcode], got)
		}
		if r.Question[0].Name != "Example.Test." {
			t.Errorf("%s: question came back as %q", network, r.Question[0].Name)
		}
		if r := ask(t, s.Addrs()[0], "127.0.0.2", network, "nope.test.", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: nope.test: %s, want the upstream's NXDOMAIN", network, dns.RcodeToString[r.Rcode])
		}
		// Names under berth. are ours even when we do not know them.
		for _, name := range []string{"nope.acme.berth.", "NOPE.ACME.BERTH.", "berth."} {
			ask(t, s.Addrs()[0], "127.0.0.2", network, name, dns.TypeA, false)
		}
	}
	if up.saw("berth") {
		t.Error("a berth. name was forwarded")
	}
	if up.udp.Load() != 2 || up.tcp.Load() != 2 {
		t.Errorf("upstream saw %d udp, %d tcp queries, want 2 and 2 (tcp clients go out over tcp)", up.udp.Load(), up.tcp.Load())
	}
}

func TestServerForwardFallsBackToTCP(t *testing.T) {
	up := startUpstream(t)
	s := startServer(t, testConfig([]netip.AddrPort{up.addr}, &syncbuf.Buffer{}))
	r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "big.test.", dns.TypeA, true)
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("big.test over udp with edns: TC=%v, %d answers, want 40", r.Truncated, len(r.Answer))
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Errorf("upstream saw %d udp, %d tcp, want 1 and 1", up.udp.Load(), up.tcp.Load())
	}
	// A client without EDNS gets 512 bytes, truncated, and retries over TCP.
	r = ask(t, s.Addrs()[0], "127.0.0.2", "udp", "big.test.", dns.TypeA, false)
	if !r.Truncated || len(r.Answer) >= 40 {
		t.Errorf("big.test over udp without edns: TC=%v, %d answers, want truncated", r.Truncated, len(r.Answer))
	}
	if r = ask(t, s.Addrs()[0], "127.0.0.2", "tcp", "big.test.", dns.TypeA, false); len(r.Answer) != 40 {
		t.Errorf("big.test over tcp: %d answers, want 40", len(r.Answer))
	}
}

// A job of many replicas does not fit 512 bytes: truncated over UDP, whole
// over TCP.
func TestServerTruncatesLargeBerthAnswers(t *testing.T) {
	s := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))
	var sts []jobs.ReplicaStatus
	for i := range 100 {
		sts = append(sts, running("acme", "many", i, fmt.Sprintf("10.88.3.%d", i+2), ""))
	}
	s.Update(NewView([]jobs.Job{job("acme", "many", 100)}, sts))
	r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "many.acme.berth.", dns.TypeA, false)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Errorf("udp: TC=%v with %d answers, want truncated", r.Truncated, len(r.Answer))
	}
	if r = ask(t, s.Addrs()[0], "127.0.0.2", "tcp", "many.acme.berth.", dns.TypeA, false); r.Truncated || len(r.Answer) != 100 {
		t.Errorf("tcp: TC=%v with %d answers, want 100", r.Truncated, len(r.Answer))
	}
	if r = ask(t, s.Addrs()[0], "127.0.0.2", "udp", "many.acme.berth.", dns.TypeA, true); r.Truncated || len(r.Answer) != 100 || r.IsEdns0() == nil {
		t.Errorf("udp with edns 4096: TC=%v with %d answers (OPT %v), want 100", r.Truncated, len(r.Answer), r.IsEdns0() != nil)
	}
}

func TestServerUpstreamFailover(t *testing.T) {
	up := startUpstream(t)
	var logs syncbuf.Buffer
	s := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t), up.addr}, &logs))
	if r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "example.test.", dns.TypeA, false); len(r.Answer) != 1 {
		t.Errorf("with the first upstream dead: %s %v", dns.RcodeToString[r.Rcode], addrsOf(r))
	}
	// SERVFAIL from the only live upstream, then none left: SERVFAIL and a log line.
	r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "fail.test.", dns.TypeA, false)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("fail.test: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	log := logs.String()
	if !strings.Contains(log, "no upstream server answered") || !strings.Contains(log, up.addr.String()+": SERVFAIL") || !strings.Contains(log, "fail.test") {
		t.Errorf("log does not say why:\n%s", log)
	}
}

func TestServerNoUpstreamAnswers(t *testing.T) {
	var logs syncbuf.Buffer
	dead := deadUpstream(t)
	s := startServer(t, testConfig([]netip.AddrPort{dead}, &logs))
	start := time.Now()
	for range 3 {
		if r := ask(t, s.Addrs()[0], "127.0.0.2", "udp", "example.test.", dns.TypeA, false); r.Rcode != dns.RcodeServerFailure {
			t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
	}
	t.Logf("3 SERVFAILs in %s", time.Since(start))
	if n := strings.Count(logs.String(), "no upstream server answered"); n != 1 {
		t.Errorf("%d log lines for 3 failures, want 1 (throttled):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), dead.String()) {
		t.Errorf("log does not name the upstream:\n%s", logs.String())
	}
}

func TestStartValidates(t *testing.T) {
	first := startServer(t, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))
	taken := first.Addrs()[0]
	good := netip.MustParseAddrPort("127.0.0.1:0")
	up := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5399")}
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no listen", Config{Upstreams: up}, "Config.Listen is empty"},
		{"zero address", Config{Listen: []netip.AddrPort{{}}, Upstreams: up}, "is not an address"},
		{"wildcard", Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}, Upstreams: up}, "wildcard"},
		{"twice", Config{Listen: []netip.AddrPort{taken, taken}, Upstreams: up}, "given twice"},
		{"both upstream kinds", Config{Listen: []netip.AddrPort{good}, Upstreams: up, ResolvConf: "/etc/resolv.conf"}, "give one"},
		{"bad upstream", Config{Listen: []netip.AddrPort{good}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}, "is not IP:PORT"},
		{"no resolv.conf", Config{Listen: []netip.AddrPort{good}, ResolvConf: t.TempDir() + "/none"}, "set Config.ResolvConf"},
		{"loop", Config{Listen: []netip.AddrPort{taken}, Upstreams: []netip.AddrPort{taken}}, "loop"},
		{"negative timeout", Config{Listen: []netip.AddrPort{good}, Upstreams: up, ForwardTimeout: -time.Second}, "negative"},
		{"in use", Config{Listen: []netip.AddrPort{taken}, Upstreams: up}, "another DNS server"},
		{"not ours", Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:5353")}, Upstreams: up}, "not on this node"},
	} {
		c.cfg.Log = slog.New(slog.DiscardHandler)
		s, err := Start(context.Background(), c.cfg)
		if err == nil {
			s.Close()
			t.Errorf("%s: started", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %q, want one line with %q", c.name, err, c.want)
		}
	}
}

// The end of Start's context stops the server.
func TestServerStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, testConfig([]netip.AddrPort{deadUpstream(t)}, &syncbuf.Buffer{}))
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0]
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err != nil {
			break // closed
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still listening 5 s after the context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after the context ended: %v", err)
	}
}

// BenchmarkQuery measures one UDP round trip through the server for a
// berth. name (answered from memory) and for a name forwarded to a
// loopback upstream.
func BenchmarkQuery(b *testing.B) {
	up := startUpstream(b)
	s := startServer(b, testConfig([]netip.AddrPort{up.addr}, &syncbuf.Buffer{}))
	s.Update(testView())
	for _, name := range []string{"web.acme.berth.", "example.test."} {
		b.Run(strings.TrimSuffix(name, "."), func(b *testing.B) {
			c := &dns.Client{Net: "udp", Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}}, Timeout: 5 * time.Second}
			conn, err := c.Dial(s.Addrs()[0].String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			m := new(dns.Msg).SetQuestion(name, dns.TypeA)
			b.ResetTimer()
			for b.Loop() {
				r, _, err := c.ExchangeWithConn(m, conn)
				if err != nil || len(r.Answer) == 0 {
					b.Fatalf("%s: %v %v", name, err, r)
				}
			}
		})
	}
}
