package etcdtest

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Stall sits on loopback between one client and the member and can hold
// every byte in both directions: a client whose answers come late (a
// starved node, a slow leader change) without the server noticing
// anything until the bytes flow again.
type Stall struct {
	mu      sync.Mutex
	held    bool
	release chan struct{}
}

// Hold stops the flow until Release.
func (s *Stall) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.held {
		s.held, s.release = true, make(chan struct{})
	}
}

// Release lets the held bytes through.
func (s *Stall) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held {
		s.held = false
		close(s.release)
	}
}

func (s *Stall) wait() {
	s.mu.Lock()
	held, ch := s.held, s.release
	s.mu.Unlock()
	if held {
		<-ch
	}
}

func (s *Stall) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}

// StalledClient returns a client that reaches the member through a Stall.
func (e *Etcd) StalledClient(tb testing.TB) (*clientv3.Client, *Stall) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &Stall{}
	target := strings.TrimPrefix(e.Endpoint, "https://")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go s.pipe(up, c)
			go s.pipe(c, up)
		}
	}()
	tlsCfg, err := transport.TLSInfo{CertFile: e.ClientCert, KeyFile: e.ClientKey, TrustedCAFile: e.CAFile}.ClientConfig()
	if err != nil {
		tb.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"https://" + ln.Addr().String()}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.Release()
		cli.Close()
		ln.Close()
	})
	return cli, s
}
