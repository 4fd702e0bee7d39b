// Package netnstest builds network-namespace labs for tests that need a
// real kernel network (links, routes, nftables) without touching the
// host's. It is for tests only; it is a normal package so that tests in
// any package can import it.
//
// The test goroutine is locked to its thread, which moves into a fresh
// "home" namespace and is never unlocked: the Go runtime destroys the
// thread when the test ends, so no thread ever goes back to the host in
// a changed state and the host namespace is never entered again.
package netnstest

import (
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// replyWait bounds how long Ask waits for an answer once connected: lab
// servers answer at once, the margin is for a loaded machine.
const replyWait = 3 * time.Second

// Lab is the test thread's home namespace and the namespaces made from it.
// Its methods must run on the goroutine of the test it was made for (see Sub).
type Lab struct {
	// Home is where the test thread lives; In always returns here.
	Home netns.NsHandle
	// Host is the namespace the test started in, for reading it from
	// another thread; the test thread never enters it again.
	Host netns.NsHandle

	t     testing.TB
	noDAD bool
}

// Option changes how New sets a lab up.
type Option func(*Lab)

// NoDAD turns IPv6 duplicate address detection off in every namespace of
// the lab, so addresses (link-local ones too) are usable at once instead
// of after a second or two. Leave it out where the code under test must
// cope with DAD itself.
func NoDAD() Option { return func(l *Lab) { l.noDAD = true } }

// New skips the test unless it runs as root, then locks the test
// goroutine's thread into a fresh home namespace with loopback up. The
// handles are closed when the test ends.
func New(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	runtime.LockOSThread() // never unlocked, see the package comment
	host, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	home, err := netns.New()
	if err != nil {
		host.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { home.Close(); host.Close() })
	l := &Lab{Home: home, Host: host, t: t}
	for _, o := range opts {
		o(l)
	}
	l.prepare()
	return l
}

// Sub is the lab for subtest t. t.Run starts a new goroutine, whose thread
// must be locked and sit in Home before anything switches namespaces; like
// New's, it is never unlocked and dies with the subtest.
func (l *Lab) Sub(t testing.TB) *Lab {
	t.Helper()
	runtime.LockOSThread()
	if err := netns.Set(l.Home); err != nil {
		t.Fatalf("enter the home namespace: %v", err)
	}
	return &Lab{Home: l.Home, Host: l.Host, t: t, noDAD: l.noDAD}
}

// NewNS makes a namespace with loopback up and returns to Home. The
// handle is closed when the test ends.
func (l *Lab) NewNS() netns.NsHandle {
	l.t.Helper()
	h, err := netns.New() // also moves the thread into it
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { h.Close() })
	defer l.goHome()
	l.prepare()
	return h
}

// prepare sets up the namespace the thread is in.
func (l *Lab) prepare() {
	l.t.Helper()
	if l.noDAD {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0o644); err != nil {
				l.t.Fatal(err)
			}
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		l.t.Fatalf("loopback up: %v", err)
	}
}

// goHome panics rather than failing the test: a thread left in another
// namespace would run the rest of the test (and its cleanups) there.
func (l *Lab) goHome() {
	if err := netns.Set(l.Home); err != nil {
		panic("netnstest: cannot return to the home namespace: " + err.Error())
	}
}

// In runs fn with the test thread in ns, then returns to Home. Sockets
// keep the namespace they were made in, so fn only has to create them.
func (l *Lab) In(ns netns.NsHandle, fn func()) {
	l.t.Helper()
	if err := netns.Set(ns); err != nil {
		l.t.Fatalf("enter namespace %s: %v", ns, err)
	}
	defer l.goHome()
	fn()
}

// ServeTCP listens on addr inside ns until the test ends and hands each
// connection to handle on its own goroutine, closing it afterwards. It
// returns the address bound (addr may ask for port 0).
func (l *Lab) ServeTCP(ns netns.NsHandle, addr string, handle func(net.Conn)) netip.AddrPort {
	l.t.Helper()
	var ln net.Listener
	var err error
	l.In(ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		l.t.Fatalf("listen on tcp %s inside %s: %v", addr, ns, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TellPeer is a ServeTCP handler that writes the client's address as the
// server saw it, so a test can tell whether it was translated on the way.
func TellPeer(c net.Conn) {
	io.WriteString(c, peer(c.RemoteAddr()))
}

// ServeUDP answers every datagram on addr inside ns with its sender's
// address (as TellPeer does) until the test ends.
func (l *Lab) ServeUDP(ns netns.NsHandle, addr string) netip.AddrPort {
	l.t.Helper()
	var pc net.PacketConn
	var err error
	l.In(ns, func() { pc, err = net.ListenPacket("udp", addr) })
	if err != nil {
		l.t.Fatalf("listen on udp %s inside %s: %v", addr, ns, err)
	}
	l.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(peer(from)), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// peer is a remote address without port, IPv4-mapped IPv6 shown as IPv4.
func peer(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap().String()
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap().String()
	}
	return a.String()
}

// Dial connects from inside ns to addr ("tcp", "udp", ...), giving up
// after timeout.
func (l *Lab) Dial(ns netns.NsHandle, network, addr string, timeout time.Duration) (net.Conn, error) {
	l.t.Helper()
	var c net.Conn
	var err error
	l.In(ns, func() { c, err = net.DialTimeout(network, addr, timeout) })
	return c, err
}

// Ask connects from inside ns to addr within timeout and returns what the
// server says: over TCP all it writes before closing, over UDP the answer
// to one datagram it sends. The answer must come within 3 seconds of
// connecting; a short timeout is for probes that should not connect.
func (l *Lab) Ask(ns netns.NsHandle, network, addr string, timeout time.Duration) (string, error) {
	l.t.Helper()
	c, err := l.Dial(ns, network, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(replyWait))
	if _, ok := c.(*net.TCPConn); ok {
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if _, err := c.Write([]byte("hi")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n > 0 {
		err = nil
	}
	return string(buf[:n]), err
}
