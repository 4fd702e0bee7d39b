package joinapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/internal/retry"
)

// Server admits new nodes. It runs on agents that hold the CA key.
type Server struct {
	Client   *clientv3.Client
	CA       *pki.CA
	CAKeyPEM []byte
	Token    pki.Token
	// SelfName is this agent's node name: nobody may join under it.
	SelfName string
	Log      *slog.Logger
	// Timeout bounds one join (waiting for a pending learner, retrying
	// etcd's "unhealthy cluster" answers); default 45 s.
	Timeout time.Duration
	// Joined, if set, is called with the outcome ("learner", "client",
	// "refused", "error") for metrics.
	Joined func(outcome string)
	// Room, if set, is asked before a node that will run containers is
	// admitted (Request.Containers): an error refuses the join with it.
	Room func(ctx context.Context, node string) error

	mu sync.Mutex // one join at a time: decisions depend on the member list
}

// etcdCallTimeout bounds each single etcd request; clientv3 retries forever
// without a deadline.
const etcdCallTimeout = 5 * time.Second

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == CAPath {
		s.serveCA(w, r)
		return
	}
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refuse(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	var req Request
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.refuse(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	if !s.Token.SecretMatches(req.Secret) {
		s.log().Warn("join refused: wrong token secret", "name", req.Name, "remote", r.RemoteAddr)
		s.refuse(w, http.StatusForbidden, "join token secret does not match this cluster's token")
		return
	}
	if err := validate(req); err != nil {
		s.refuse(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Name == s.SelfName {
		s.refuse(w, http.StatusConflict, fmt.Sprintf("node name %q is the name of the agent answering this join", req.Name))
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Containers && s.Room != nil {
		cctx, cancel := context.WithTimeout(r.Context(), etcdCallTimeout)
		err := s.Room(cctx, req.Name)
		cancel()
		if err != nil {
			s.log().Warn("join refused", "name", req.Name, "err", err)
			s.count("refused")
			s.refuse(w, http.StatusConflict, err.Error())
			return
		}
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 45 * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	resp, err := s.admit(ctx, req)
	if err != nil {
		s.log().Error("join failed", "name", req.Name, "err", err)
		s.count("error")
		s.refuse(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.log().Info("node joined", "name", req.Name, "role", resp.Role)
	s.count(resp.Role)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func validate(req Request) error {
	if err := nodedoc.CheckName(req.Name); err != nil {
		return err
	}
	for _, u := range []struct{ name, v string }{{"peer_url", req.PeerURL}, {"client_url", req.ClientURL}, {"api_url", req.APIURL}} {
		parsed, err := url.Parse(u.v)
		if err != nil || parsed.Scheme != "https" || parsed.Hostname() == "" || parsed.Port() == "" {
			return fmt.Errorf("%s %q must be https://host:port", u.name, u.v)
		}
	}
	return nil
}

func (s *Server) admit(ctx context.Context, req Request) (*Response, error) {
	cfg, err := s.clusterConfig(ctx)
	if err != nil {
		return nil, err
	}
	// Identity first: the user must exist before the node's first request.
	if err := s.ensureUser(ctx, req.Name); err != nil {
		return nil, err
	}
	ips, dns := CertAddresses(req.PeerURL, req.ClientURL, req.APIURL)
	certPEM, keyPEM, err := s.CA.Issue(req.Name, pki.ServerClient, ips, dns)
	if err != nil {
		return nil, fmt.Errorf("issue node certificate: %w", err)
	}
	resp := &Response{
		CACert: string(s.CA.CertPEM), NodeCert: string(certPEM), NodeKey: string(keyPEM),
		Token: s.Token.String(),
	}

	backoff := retry.NewBackoff(retry.Policy{Initial: 250 * time.Millisecond, Max: 2 * time.Second})
	for {
		members, err := s.memberList(ctx)
		if err != nil {
			return nil, err
		}
		if stale := staleMembers(members, req); len(stale) > 0 {
			for _, m := range stale {
				if err := s.removeMember(ctx, m); err != nil {
					return nil, err
				}
			}
			continue
		}
		voters, learners := countMembers(members)
		resp.ClientURLs = voterClientURLs(members)
		switch {
		case learners > 0:
			// Only one learner at a time: wait for the promoter to finish.
			s.log().Debug("join waits for a pending learner", "name", req.Name)
		case voters >= cfg.Voters:
			resp.Role = RoleClient
		default:
			initial, err := s.addLearner(ctx, req)
			if err == nil {
				resp.Role, resp.InitialCluster, resp.CAKey = RoleLearner, initial, string(s.CAKeyPEM)
				break
			}
			s.log().Debug("add learner failed, retrying", "name", req.Name, "err", err)
		}
		if resp.Role != "" {
			break
		}
		select {
		case <-ctx.Done():
			if voters, _ := countMembers(members); voters > 0 {
				// The cluster works but cannot take a member now: the node
				// is still useful as a client.
				resp.Role = RoleClient
				break
			}
			return nil, fmt.Errorf("cluster did not accept a new member in time: %w", ctx.Err())
		case <-time.After(backoff.Next()):
			continue
		}
		break
	}

	entry, _ := json.Marshal(nodedoc.RoleEntry{Role: resp.Role, PeerURL: req.PeerURL, ClientURL: req.ClientURL, APIURL: req.APIURL})
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), etcdCallTimeout)
	defer cancel()
	if _, err := s.Client.Put(cctx, nodedoc.RoleKey(req.Name), string(entry)); err != nil {
		return nil, fmt.Errorf("record role of %s: %w", req.Name, err)
	}
	return resp, nil
}

func (s *Server) clusterConfig(ctx context.Context) (nodedoc.ClusterConfig, error) {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	got, err := s.Client.Get(cctx, nodedoc.ClusterConfigKey)
	if err != nil {
		return nodedoc.ClusterConfig{}, fmt.Errorf("read cluster config: %w", err)
	}
	if len(got.Kvs) == 0 {
		return nodedoc.ClusterConfig{}, errors.New("cluster config is missing")
	}
	var cfg nodedoc.ClusterConfig
	if err := json.Unmarshal(got.Kvs[0].Value, &cfg); err != nil {
		return nodedoc.ClusterConfig{}, fmt.Errorf("parse cluster config: %w", err)
	}
	return cfg, nil
}

// ensureUser creates the etcd user named after the node (etcd takes the
// user name from the client certificate's CN) with the root role.
func (s *Server) ensureUser(ctx context.Context, name string) error {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	_, err := s.Client.UserAddWithOptions(cctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("create etcd user %s: %w", name, err)
	}
	if _, err := s.Client.UserGrantRole(cctx, name, "root"); err != nil {
		return fmt.Errorf("grant root role to %s: %w", name, err)
	}
	return nil
}

func (s *Server) memberList(ctx context.Context) ([]*etcdserverpb.Member, error) {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	resp, err := s.Client.MemberList(cctx)
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	return resp.Members, nil
}

// staleMembers are members left behind by an earlier life of the joining
// node (same name or same peer URL): a node only calls join with an empty
// data dir, so such a member can never come back.
func staleMembers(members []*etcdserverpb.Member, req Request) []*etcdserverpb.Member {
	var out []*etcdserverpb.Member
	for _, m := range members {
		if m.Name == req.Name || slices.Contains(m.PeerURLs, req.PeerURL) {
			out = append(out, m)
		}
	}
	return out
}

func (s *Server) removeMember(ctx context.Context, m *etcdserverpb.Member) error {
	var last error
	err := retry.Do(ctx, retry.Policy{
		Initial: 250 * time.Millisecond, Max: 2 * time.Second,
		OnRetry: func(err error, _ time.Duration) {
			s.log().Debug("remove stale member failed, retrying", "id", fmt.Sprintf("%x", m.ID), "err", err)
		},
	}, func() error {
		cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
		_, err := s.Client.MemberRemove(cctx, m.ID)
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrMemberNotFound) {
			return nil
		}
		last = err
		return err
	})
	if err != nil {
		// Only ctx ends the retries; the etcd error says more than it.
		return fmt.Errorf("remove stale member %s (%x): %w", m.Name, m.ID, last)
	}
	s.log().Info("removed stale member", "name", m.Name, "id", fmt.Sprintf("%x", m.ID))
	return nil
}

func countMembers(members []*etcdserverpb.Member) (voters, learners int) {
	for _, m := range members {
		if m.IsLearner {
			learners++
		} else {
			voters++
		}
	}
	return voters, learners
}

func voterClientURLs(members []*etcdserverpb.Member) []string {
	var urls []string
	for _, m := range members {
		if !m.IsLearner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	return urls
}

// addLearner adds the node as a learner and returns etcd's initial-cluster
// string for it (every member, the new one under its own name).
func (s *Server) addLearner(ctx context.Context, req Request) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	added, err := s.Client.MemberAddAsLearner(cctx, []string{req.PeerURL})
	if err != nil {
		return "", fmt.Errorf("add learner %s: %w", req.Name, err)
	}
	var parts []string
	for _, m := range added.Members {
		name := m.Name
		switch {
		case m.ID == added.Member.ID:
			name = req.Name
		case name == "":
			// A member that never started has no name yet; etcd matches
			// members by peer URL, so any unique placeholder works.
			name = fmt.Sprintf("unstarted-%x", m.ID)
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	return strings.Join(parts, ","), nil
}

func (s *Server) refuse(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusForbidden || code == http.StatusBadRequest || code == http.StatusConflict {
		s.count("refused")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg})
}

func (s *Server) count(outcome string) {
	if s.Joined != nil {
		s.Joined(outcome)
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// ServerTLSConfig serves the join API with the node certificate and sends
// the CA certificate along in the chain: the joining node has no CA file
// yet and pins the CA by the hash in its token.
func ServerTLSConfig(nodeCertPEM, nodeKeyPEM, caCertPEM []byte) (*tls.Config, error) {
	chain := append(append([]byte{}, nodeCertPEM...), caCertPEM...)
	cert, err := tls.X509KeyPair(chain, nodeKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("join API certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
