package servicedns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Config is everything Start needs; Start validates all of it first.
type Config struct {
	// Listen are the addresses to serve on, UDP and TCP each: the node's
	// container bridge gateways, port 53 (e.g. 10.88.3.1:53, [fdxx::1]:53).
	// Port 0 picks a free port (tests); Server.Addrs says which.
	Listen []netip.AddrPort
	// Upstreams receive every name not under berth., tried in order. Give
	// either Upstreams or ResolvConf (default DefaultResolvConf, whose
	// nameserver lines are re-read when the file changes).
	Upstreams  []netip.AddrPort
	ResolvConf string
	// TenantOf names the tenant of a container address of this node; nil:
	// the addresses of running replicas in the current View.
	TenantOf func(netip.Addr) (tenant string, ok bool)
	// IsNode says a source that is no container is the node itself (it
	// sees all tenants); nil: loopback and the Listen addresses. Every
	// other source is refused.
	IsNode func(netip.Addr) bool
	// ForwardTimeout bounds one exchange with one upstream (default 2 s).
	ForwardTimeout time.Duration
	Log            *slog.Logger
}

// Server answers on the configured addresses until Close or the end of
// Start's context.
type Server struct {
	cfg     Config
	log     *slog.Logger
	view    atomic.Pointer[View]
	ups     *upstreams
	servers []*dns.Server
	conns   []interface{ Close() error }
	addrs   []netip.AddrPort
	listen  map[netip.Addr]bool
	rr      atomic.Uint32

	failLog, refuseLog throttle

	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
}

// udpSize is the payload we advertise in EDNS replies (the DNS flag day
// size: no IP fragmentation).
const udpSize = 1232

// Start validates cfg, binds every listen address and serves an empty View
// until the first Update. Errors are one line naming the remedy.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg, ups, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, ups: ups, listen: map[netip.Addr]bool{}}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.view.Store(NewView(nil, nil))
	for _, ap := range cfg.Listen {
		s.listen[ap.Addr()] = true
		pc, ln, got, err := bind(ap)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.conns = append(s.conns, pc, ln)
		s.addrs = append(s.addrs, got)
		for _, srv := range []*dns.Server{
			{PacketConn: pc, Handler: s, UDPSize: 4096},
			{Listener: ln, Handler: s},
		} {
			started, done := make(chan struct{}), make(chan error, 1)
			srv.NotifyStartedFunc = func() { close(started) }
			go func() { done <- srv.ActivateAndServe() }()
			select { // Shutdown refuses a server that has not started
			case <-started:
			case err := <-done:
				s.Close()
				return nil, fmt.Errorf("servicedns: serve %s: %w; report this as a bug", got, err)
			}
			s.servers = append(s.servers, srv)
			go func() {
				if err := <-done; err != nil && s.ctx.Err() == nil {
					s.log.Error("servicedns: serving stopped; containers of this node lose DNS until the agent restarts", "addr", got, "err", err)
				}
			}()
		}
	}
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.ctx.Done():
		}
	}()
	s.log.Info("servicedns: serving", "listen", s.addrs, "upstreams", ups.describe())
	return s, nil
}

func (c Config) validate() (Config, *upstreams, error) {
	if len(c.Listen) == 0 {
		return c, nil, errors.New("servicedns: Config.Listen is empty; give the node's container bridge gateways, e.g. 10.88.3.1:53")
	}
	seen := map[netip.AddrPort]bool{}
	for _, ap := range c.Listen {
		switch {
		case !ap.IsValid():
			return c, nil, fmt.Errorf("servicedns: listen address %q is not an address; give IP:PORT of a bridge gateway", ap)
		case ap.Addr().IsUnspecified():
			return c, nil, fmt.Errorf("servicedns: listen address %s is a wildcard; give the bridge gateways themselves (a wildcard would also take the node's own resolver addresses)", ap)
		case seen[ap]:
			return c, nil, fmt.Errorf("servicedns: listen address %s is given twice; list each gateway once", ap)
		}
		seen[ap] = true
	}
	if len(c.Upstreams) > 0 && c.ResolvConf != "" {
		return c, nil, errors.New("servicedns: Config gives both Upstreams and ResolvConf; give one")
	}
	if c.ForwardTimeout < 0 {
		return c, nil, fmt.Errorf("servicedns: ForwardTimeout %s is negative; give a duration like 2s (0 = default)", c.ForwardTimeout)
	}
	if c.ForwardTimeout == 0 {
		c.ForwardTimeout = 2 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	u := &upstreams{path: c.ResolvConf, self: seen, log: c.Log}
	if len(c.Upstreams) > 0 {
		for _, ap := range c.Upstreams {
			if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
				return c, nil, fmt.Errorf("servicedns: upstream %q is not IP:PORT of a DNS server; e.g. 127.0.0.53:53", ap)
			}
		}
		u.path = ""
		u.list = slices.Clone(c.Upstreams)
	} else {
		if u.path == "" {
			u.path = DefaultResolvConf
		}
		list, err := readResolvConf(u.path)
		if err != nil {
			return c, nil, fmt.Errorf("servicedns: %w", err)
		}
		u.list = list
		if fi, err := os.Stat(u.path); err == nil {
			u.mod, u.size = fi.ModTime(), fi.Size()
		}
		u.checked = time.Now()
	}
	for _, ap := range u.list {
		if seen[ap] {
			return c, nil, fmt.Errorf("servicedns: upstream %s is one of our own listen addresses, which would forward in a loop; point the node's resolv.conf elsewhere or give Config.Upstreams", ap)
		}
	}
	return c, u, nil
}

// bind opens UDP and TCP on one address (the same port for both when
// the port is 0).
func bind(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, netip.AddrPort, error) {
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, nil, ap, bindError("udp", ap, err)
		}
		got := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		got = netip.AddrPortFrom(ap.Addr(), got.Port())
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(got))
		if err == nil {
			return pc, ln, got, nil
		}
		pc.Close()
		if ap.Port() != 0 || attempt == 10 {
			return nil, nil, ap, bindError("tcp", got, err)
		}
	}
}

func bindError(network string, ap netip.AddrPort, err error) error {
	remedy := "check the address"
	switch {
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		remedy = "the address is not on this node: configure the container bridge before starting the DNS server"
	case errors.Is(err, syscall.EADDRINUSE):
		remedy = "another DNS server (dnsmasq, a resolver stub) holds it: stop it or have it listen elsewhere"
	case errors.Is(err, syscall.EACCES):
		remedy = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
	}
	return fmt.Errorf("servicedns: listen %s %s: %w; %s", network, ap, err, remedy)
}

// Update makes v the answered names, atomically (nil: no names).
func (s *Server) Update(v *View) {
	if v == nil {
		v = NewView(nil, nil)
	}
	s.view.Store(v)
}

// Addrs are the addresses served (with the port chosen for port 0).
func (s *Server) Addrs() []netip.AddrPort { return slices.Clone(s.addrs) }

// Close stops serving and waits for in-flight replies (up to 2 s).
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var errs []error
		for _, srv := range s.servers {
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range s.conns {
			c.Close() // already closed by Shutdown, or never served
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("servicedns: close: %w", err)
		}
	})
	return s.closeErr
}

// ServeDNS answers one query; it is the dns.Handler of every listener.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	src := addrOf(w.RemoteAddr())
	tcp := w.LocalAddr().Network() == "tcp"
	tenant, ok := s.tenantOf(src)
	var reply *dns.Msg
	switch {
	case !ok:
		s.refuseLog.do(func(suppressed int) {
			s.log.Debug("servicedns: refused a query from an address that is no container of this node", "src", src, "suppressed", suppressed)
		})
		reply = new(dns.Msg).SetRcode(req, dns.RcodeRefused)
	case req.Opcode != dns.OpcodeQuery || len(req.Question) != 1:
		reply = new(dns.Msg).SetRcode(req, dns.RcodeNotImplemented)
	case IsZone(req.Question[0].Name):
		reply = Answer(s.view.Load(), tenant, req.Question[0])
		reply.Id, reply.Opcode = req.Id, req.Opcode
		reply.RecursionDesired, reply.CheckingDisabled = req.RecursionDesired, req.CheckingDisabled
		s.rotate(reply)
		if req.IsEdns0() != nil {
			reply.SetEdns0(udpSize, false)
		}
	default:
		reply = s.forward(req, tcp)
	}
	reply.RecursionAvailable = ok
	size := dns.MaxMsgSize
	if !tcp {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
	}
	reply.Truncate(size)
	if err := w.WriteMsg(reply); err != nil {
		s.log.Debug("servicedns: write reply", "src", src, "err", err)
	}
}

func (s *Server) tenantOf(src netip.Addr) (string, bool) {
	var t string
	var ok bool
	if s.cfg.TenantOf != nil {
		t, ok = s.cfg.TenantOf(src)
	} else {
		t, ok = s.view.Load().TenantOf(src)
	}
	if ok && t != "" && t != AllTenants { // "*" from a caller grants nothing
		return t, true
	}
	if s.cfg.IsNode != nil {
		if s.cfg.IsNode(src) {
			return AllTenants, true
		}
		return "", false
	}
	if src.IsLoopback() || s.listen[src] {
		return AllTenants, true
	}
	return "", false
}

// rotate turns the address answers round, so clients that take the first
// record spread over the replicas.
func (s *Server) rotate(m *dns.Msg) {
	if n := len(m.Answer); n > 1 {
		k := int(s.rr.Add(1) % uint32(n))
		m.Answer = append(m.Answer[k:], m.Answer[:k]...)
	}
}

// forward asks the upstreams in order; the first real answer wins.
func (s *Server) forward(req *dns.Msg, tcp bool) *dns.Msg {
	ups := s.ups.get()
	out := req.Copy()
	var errs []string
	for _, up := range ups {
		out.Id = dns.Id()
		r, err := s.exchange(out, up, tcp)
		if err == nil && (r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused) {
			err = errors.New(dns.RcodeToString[r.Rcode])
		}
		if err != nil {
			errs = append(errs, up.String()+": "+err.Error())
			continue
		}
		r.Id = req.Id
		return r
	}
	s.failLog.do(func(suppressed int) {
		s.log.Warn("servicedns: no upstream server answered; containers get SERVFAIL for names outside berth.: check the node's resolver (resolvectl status) and "+s.ups.describe(),
			"name", req.Question[0].Name, "errors", strings.Join(errs, "; "), "suppressed", suppressed)
	})
	return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
}

// exchange asks one upstream: UDP, then TCP when the UDP reply is
// truncated; TCP at once for a client that came over TCP.
func (s *Server) exchange(m *dns.Msg, up netip.AddrPort, tcp bool) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	defer cancel()
	if !tcp {
		c := dns.Client{Net: "udp"}
		r, _, err := c.ExchangeContext(ctx, m, up.String())
		if err != nil || !r.Truncated {
			return r, err
		}
	}
	c := dns.Client{Net: "tcp"}
	r, _, err := c.ExchangeContext(ctx, m, up.String())
	return r, err
}

func addrOf(a net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return ap.Addr().Unmap().WithZone("")
}

// upstreams is the list of servers forwarded to, re-read from its file
// (at most every few seconds) when the file changes.
type upstreams struct {
	path string
	self map[netip.AddrPort]bool
	log  *slog.Logger

	mu        sync.Mutex
	list      []netip.AddrPort
	checked   time.Time
	mod       time.Time
	size      int64
	lastError string
}

const recheckResolvConf = 3 * time.Second

func (u *upstreams) get() []netip.AddrPort {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.path == "" || time.Since(u.checked) < recheckResolvConf {
		return u.list
	}
	u.checked = time.Now()
	fi, err := os.Stat(u.path)
	if err == nil && fi.ModTime().Equal(u.mod) && fi.Size() == u.size {
		return u.list
	}
	list, err := readResolvConf(u.path)
	if err == nil {
		list = slices.DeleteFunc(list, func(ap netip.AddrPort) bool { return u.self[ap] })
		if len(list) == 0 {
			err = fmt.Errorf("%s names only this DNS server; that would loop", u.path)
		}
	}
	if err != nil {
		if err.Error() != u.lastError {
			u.log.Warn("servicedns: keeping the previous upstream servers", "upstreams", u.list, "err", err)
			u.lastError = err.Error()
		}
		return u.list
	}
	u.lastError = ""
	if fi != nil {
		u.mod, u.size = fi.ModTime(), fi.Size()
	}
	if !slices.Equal(list, u.list) {
		u.log.Info("servicedns: upstream servers changed", "from", u.path, "upstreams", list)
	}
	u.list = list
	return list
}

func (u *upstreams) describe() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.path == "" {
		return fmt.Sprintf("upstreams %v (Config.Upstreams)", u.list)
	}
	return fmt.Sprintf("upstreams %v (from %s)", u.list, u.path)
}

// throttle lets a repeated log line through at most every 10 s and counts
// what it held back.
type throttle struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (t *throttle) do(f func(suppressed int)) {
	t.mu.Lock()
	if time.Since(t.last) < 10*time.Second {
		t.suppressed++
		t.mu.Unlock()
		return
	}
	n := t.suppressed
	t.last, t.suppressed = time.Now(), 0
	t.mu.Unlock()
	f(n)
}
