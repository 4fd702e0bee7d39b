package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	berthrt "github.com/berth-os/berth/agent/runtime"
)

// portProxy forwards host TCP ports to the container in userspace. It lives
// in the shim (host network namespace) so it keeps working while the agent
// restarts, and it needs no iptables.
type portProxy struct {
	listeners []net.Listener
	wg        sync.WaitGroup
	log       *slog.Logger
}

// listenPorts binds every host port before the container starts, so a port
// already in use is a start failure, not a silent half-working container.
func listenPorts(ports []berthrt.Port, log *slog.Logger) (*portProxy, error) {
	p := &portProxy{log: log}
	for _, port := range ports {
		addr := net.JoinHostPort(port.HostIP, strconv.Itoa(port.HostPort))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("publish port %s: %w", addr, err)
		}
		p.listeners = append(p.listeners, ln)
	}
	return p, nil
}

// serve starts forwarding. With a container IP the proxy dials it; without
// one (container with loopback only) it dials 127.0.0.1 from inside the
// container's network namespace (netnsPath).
func (p *portProxy) serve(ports []berthrt.Port, containerIP, netnsPath string) {
	for i, ln := range p.listeners {
		port := ports[i]
		var dial func() (net.Conn, error)
		if containerIP != "" {
			target := net.JoinHostPort(containerIP, strconv.Itoa(port.ContainerPort))
			dial = func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) }
		} else {
			target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port.ContainerPort))
			dial = func() (net.Conn, error) { return dialInNetns(netnsPath, target) }
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return // closed
				}
				go p.forward(c, dial)
			}
		}()
	}
}

func (p *portProxy) forward(client net.Conn, dial func() (net.Conn, error)) {
	defer client.Close()
	upstream, err := dial()
	if err != nil {
		p.log.Warn("port proxy: cannot reach container", "err", err)
		return
	}
	defer upstream.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite() // pass the half-close on, e.g. for request/response protocols
		}
		done <- struct{}{}
	}
	go pipe(upstream, client)
	go pipe(client, upstream)
	<-done
	<-done
}

func (p *portProxy) Close() {
	for _, ln := range p.listeners {
		ln.Close()
	}
	p.wg.Wait()
}

// dialInNetns creates the socket inside another network namespace: a socket
// belongs to the namespace of the thread that created it, so switch one
// locked thread there and back.
func dialInNetns(netnsPath, target string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		host, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("open host netns: %w", err)}
			return
		}
		defer unix.Close(host)
		targetNS, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("open container netns: %w", err)}
			return
		}
		defer unix.Close(targetNS)
		if err := unix.Setns(targetNS, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("enter container netns: %w", err)}
			return
		}
		c, err := net.DialTimeout("tcp", target, 5*time.Second)
		if unix.Setns(host, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: leave the thread locked so Go discards it
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
