// Package pprofserve serves Go's runtime profiles (net/http/pprof) on a
// loopback address, for finding where a daemon spends its CPU on a live
// node (e.g. an emulated node under test). It is off unless asked for.
package pprofserve

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// Env names the variable that turns the server on: a loopback host:port
// such as 127.0.0.1:6060.
const Env = "BERTH_PPROF"

// Start listens on addr (which must be a loopback address: profiles and
// goroutine dumps reveal internals) and serves /debug/pprof/ until the
// process ends. An empty addr does nothing.
func Start(addr string, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("%s=%q: want a loopback address and port such as 127.0.0.1:6060", Env, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", Env, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("serving runtime profiles", "addr", ln.Addr().String(), "path", "/debug/pprof/")
	return nil
}
