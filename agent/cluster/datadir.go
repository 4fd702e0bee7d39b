package cluster

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/berth-os/berth/internal/atomicfile"
)

// Files in the agent's data dir.
const (
	pkiDir    = "pki"
	etcdDir   = "etcd"
	tokenFile = "token"
	// recordFile keeps its historical name: data dirs in the field have it.
	recordFile = "node.json"
)

// dataDir is the agent's data directory: the record, the node's
// certificates (and the CA key on voters), the join token and etcd's data.
type dataDir string

func (d dataDir) path(parts ...string) string {
	return filepath.Join(append([]string{string(d)}, parts...)...)
}

// tlsInfo is the member's server and peer TLS: the node certificate,
// client certificates required and checked against the cluster CA.
func (d dataDir) tlsInfo() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:       d.path(pkiDir, "node.crt"),
		KeyFile:        d.path(pkiDir, "node.key"),
		TrustedCAFile:  d.path(pkiDir, "ca.crt"),
		ClientCertAuth: true,
	}
}

// clientTLS is the TLS of the node's etcd clients: etcd auth knows the
// node by its certificate's CN.
func (d dataDir) clientTLS() (*tls.Config, error) {
	tlsCfg, err := transport.TLSInfo{
		CertFile: d.path(pkiDir, "node.crt"), KeyFile: d.path(pkiDir, "node.key"),
		TrustedCAFile: d.path(pkiDir, "ca.crt"),
	}.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client TLS: %w", err)
	}
	return tlsCfg, nil
}

// dataDirRecord is node.json in the data dir: what bootstrap, join or
// rejoin decided, so that a restart comes back in the same role.
type dataDirRecord struct {
	Name string `json:"name"`
	// Member is true for etcd members (voters and learners), false for clients.
	Member bool `json:"member"`
	// InitialCluster and ClusterState start etcd the first time; later
	// starts read everything from the etcd data dir.
	InitialCluster string `json:"initial_cluster,omitempty"`
	ClusterState   string `json:"cluster_state,omitempty"`
	ClusterToken   string `json:"cluster_token,omitempty"`
	// Endpoints are the cluster's client URLs as last known.
	Endpoints []string `json:"endpoints"`
	// AuthDone is set once bootstrap configured etcd users and auth, so an
	// interrupted bootstrap finishes on restart.
	AuthDone bool `json:"auth_done,omitempty"`
	// JoinURLs are the other agents' API URLs as last known: a member
	// removed while it was down joins again through them.
	JoinURLs []string `json:"join_urls,omitempty"`
}

func (r *dataDirRecord) clone() *dataDirRecord {
	c := *r
	c.Endpoints = slices.Clone(r.Endpoints)
	c.JoinURLs = slices.Clone(r.JoinURLs)
	return &c
}

// loadRecord reads the record; nil without error when there is none
// (an empty or cleared data dir).
func (d dataDir) loadRecord() (*dataDirRecord, error) {
	data, err := os.ReadFile(d.path(recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read data dir record: %w", err)
	}
	var r dataDirRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", d.path(recordFile), err)
	}
	return &r, nil
}

// saveRecord replaces the record atomically: a crash never leaves a
// half-written file that a restart would misread.
func (d dataDir) saveRecord(r *dataDirRecord) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode data dir record: %w", err)
	}
	if err := atomicfile.WriteFile(d.path(recordFile), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save data dir record: %w", err)
	}
	return nil
}

// recordStore is the running agent's copy of the record: the loops that
// change it (promotion, join URLs) save it under one lock.
type recordStore struct {
	dir dataDir
	mu  sync.Mutex
	rec *dataDirRecord
}

// get returns a copy, safe to read while the loops update the record.
func (s *recordStore) get() *dataDirRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.clone()
}

// update changes the record and saves it when change reports a change.
func (s *recordStore) update(change func(r *dataDirRecord) bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !change(s.rec) {
		return nil
	}
	return s.dir.saveRecord(s.rec)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
