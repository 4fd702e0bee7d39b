package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/joinapi"
	"github.com/berth-os/berth/agent/pki"
)

// apiServer is the agent's HTTPS API, which every node serves: the join
// endpoints where this node holds the CA key, and whatever extra adds
// (node API, registry). Client certificates are verified when given, so
// handlers can tell cluster identities (r.TLS.VerifiedChains) from
// anonymous callers.
type apiServer struct {
	dir  dataDir // the node's certificates, the CA (key) and the token
	url  string  // https://host:port to listen on
	self string  // this node's name: nobody may join under it
	// cli admits joining nodes into the cluster.
	cli   *clientv3.Client
	extra func(mux *http.ServeMux)
	log   *slog.Logger
	// room refuses a containers node's join when no subnet is left.
	room func(ctx context.Context, cli *clientv3.Client, node string) error

	srv  *http.Server
	addr net.Addr // where it listens, once started
}

// handler is the API's mux.
func (s *apiServer) handler() (http.Handler, error) {
	mux := http.NewServeMux()
	if exists(s.dir.path(pkiDir, "ca.key")) {
		join, err := s.joinHandler()
		if err != nil {
			return nil, err
		}
		mux.Handle(joinapi.Path, join)
		mux.Handle(joinapi.CAPath, join)
	}
	if s.extra != nil {
		s.extra(mux)
	}
	return mux, nil
}

func (s *apiServer) joinHandler() (http.Handler, error) {
	ca, err := pki.LoadCA(s.dir.path(pkiDir))
	if err != nil {
		return nil, fmt.Errorf("join API: %w", err)
	}
	caKey, err := os.ReadFile(s.dir.path(pkiDir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("join API: %w", err)
	}
	var room func(context.Context, string) error
	if s.room != nil {
		room = func(ctx context.Context, node string) error { return s.room(ctx, s.cli, node) }
	}
	tokenText, err := os.ReadFile(s.dir.path(tokenFile))
	if err != nil {
		return nil, fmt.Errorf("join API: %w", err)
	}
	token, err := pki.ParseToken(strings.TrimRight(string(tokenText), "\r\n "))
	if err != nil {
		return nil, fmt.Errorf("join API: token file: %w", err)
	}
	return &joinapi.Server{
		Client: s.cli, CA: ca, CAKeyPEM: caKey, Token: token, SelfName: s.self,
		Log: s.log.With("component", "joinapi"), Joined: func(o string) { joinsTotal.WithLabelValues(o).Inc() },
		Room: room,
	}, nil
}

// tlsConfig serves the node certificate and verifies client certificates
// against the cluster CA when a client presents one.
func (s *apiServer) tlsConfig() (*tls.Config, error) {
	ca, err := os.ReadFile(s.dir.path(pkiDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	nodeCert, err := os.ReadFile(s.dir.path(pkiDir, "node.crt"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	nodeKey, err := os.ReadFile(s.dir.path(pkiDir, "node.key"))
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	tlsCfg, err := joinapi.ServerTLSConfig(nodeCert, nodeKey, ca)
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tlsCfg.ClientCAs = pool
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	return tlsCfg, nil
}

// start listens and serves in the background until close.
func (s *apiServer) start() error {
	mux, err := s.handler()
	if err != nil {
		return err
	}
	tlsCfg, err := s.tlsConfig()
	if err != nil {
		return err
	}
	u, err := url.Parse(s.url)
	if err != nil {
		return fmt.Errorf("api url: %w", err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return fmt.Errorf("agent API: %w", err)
	}
	s.addr = ln.Addr()
	s.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("agent API stopped", "err", err)
		}
	}()
	s.log.Info("agent API listening", "url", s.url)
	return nil
}

// close stops serving at once.
func (s *apiServer) close() {
	if s.srv != nil {
		_ = s.srv.Close()
	}
}
