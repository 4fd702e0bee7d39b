package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/internal/atomicfile"
)

// Files in the agent's data dir.
const (
	pkiDir        = "pki"
	etcdDir       = "etcd"
	tokenFile     = "token"
	nodeStateFile = "node.json"
)

// nodeState is what a restart needs to come back in the same role.
type nodeState struct {
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

func (a *Agent) path(parts ...string) string {
	return filepath.Join(append([]string{a.opts.DataDir}, parts...)...)
}

func (a *Agent) loadNodeState() (*nodeState, error) {
	data, err := os.ReadFile(a.path(nodeStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node state: %w", err)
	}
	var st nodeState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", a.path(nodeStateFile), err)
	}
	return &st, nil
}

func (a *Agent) saveNodeState(st *nodeState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	return atomicfile.WriteFile(a.path(nodeStateFile), append(data, '\n'), 0o600)
}

// writeFileAtomic writes via a temporary file and rename, so a crash never
// leaves a half-written file that a restart would misread.

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
