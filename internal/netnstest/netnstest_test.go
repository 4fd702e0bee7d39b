package netnstest

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inHome fails unless the calling thread sits in l's home namespace.
func inHome(t *testing.T, l *Lab) {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if !cur.Equal(l.Home) || cur.Equal(l.Host) {
		t.Fatalf("thread in %s, want home %s (host %s)", cur, l.Home, l.Host)
	}
}

func TestLab(t *testing.T) {
	l := New(t, NoDAD())
	inHome(t, l)
	a := l.NewNS()
	inHome(t, l)

	l.In(a, func() {
		lo, err := netlink.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("loopback in a new namespace: %v %v", lo, err)
		}
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/default/accept_dad")
		if strings.TrimSpace(string(b)) != "0" {
			t.Errorf("accept_dad %q (%v), want 0 with NoDAD", b, err)
		}
	})
	inHome(t, l)

	tcp := l.ServeTCP(a, "127.0.0.1:0", TellPeer)
	if got, err := l.Ask(a, "tcp", tcp.String(), time.Second); err != nil || got != "127.0.0.1" {
		t.Errorf("ask over tcp inside the namespace: %q, %v", got, err)
	}
	// The server's loopback is not home's.
	if got, err := l.Ask(l.Home, "tcp", tcp.String(), time.Second); err == nil {
		t.Errorf("reached a's loopback server from home (it said %q)", got)
	}
	udp := l.ServeUDP(a, "[::1]:0")
	if got, err := l.Ask(a, "udp", udp.String(), time.Second); err != nil || got != "::1" {
		t.Errorf("ask over udp inside the namespace: %q, %v", got, err)
	}
	inHome(t, l)

	t.Run("sub", func(t *testing.T) {
		s := l.Sub(t)
		inHome(t, s)
		if got, err := s.Ask(a, "tcp", tcp.String(), time.Second); err != nil || got != "127.0.0.1" {
			t.Errorf("ask from a subtest: %q, %v", got, err)
		}
		inHome(t, s)
	})
}
