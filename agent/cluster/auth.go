package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/pki"
)

// OpsUser is the etcd user (and certificate CN) of operators: read-only on
// the berth prefix.
const OpsUser = "ops"

// AdminUser is the etcd user (and certificate CN) of cluster
// administrators: full access, as the nodes have.
const AdminUser = "admin"

// authSetup is what a new cluster's first voter writes before it turns
// etcd auth on.
type authSetup struct {
	// Node is the bootstrapping node's name; its certificate's CN becomes
	// a root user.
	Node string
	// Config is the cluster's configuration document.
	Config nodedoc.ClusterConfig
	// Role is the node's role entry (a voter).
	Role nodedoc.RoleEntry
}

// setupAuth writes the cluster config and the node's role, creates the
// users and roles of a new cluster and turns auth on. Every step tolerates
// "already exists" so an interrupted bootstrap can run it again.
func setupAuth(ctx context.Context, cli *clientv3.Client, s authSetup, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg, err := json.Marshal(s.Config)
	if err != nil {
		return fmt.Errorf("bootstrap auth: encode cluster config: %w", err)
	}
	role, err := json.Marshal(s.Role)
	if err != nil {
		return fmt.Errorf("bootstrap auth: encode role: %w", err)
	}
	addUser := func(name, role string) error {
		if _, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !isAlreadyExists(err) {
			return err
		}
		_, err := cli.UserGrantRole(ctx, name, role)
		return err
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"write cluster config", func() error { _, err := cli.Put(ctx, nodedoc.ClusterConfigKey, string(cfg)); return err }},
		{"write role", func() error { _, err := cli.Put(ctx, nodedoc.RoleKey(s.Node), string(role)); return err }},
		{"add role root", func() error { _, err := cli.RoleAdd(ctx, "root"); return err }},
		{"add user root", func() error { return addUser("root", "root") }},
		{"add node user", func() error { return addUser(s.Node, "root") }},
		{"add role ops", func() error { _, err := cli.RoleAdd(ctx, OpsUser); return err }},
		{"grant ops read", func() error {
			_, err := cli.RoleGrantPermission(ctx, OpsUser, nodedoc.Prefix, clientv3.GetPrefixRangeEnd(nodedoc.Prefix), clientv3.PermissionType(clientv3.PermRead))
			return err
		}},
		{"add user ops", func() error { return addUser(OpsUser, OpsUser) }},
		{"add user admin", func() error { return addUser(AdminUser, "root") }},
		{"enable auth", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil && !isAlreadyExists(err) {
			return fmt.Errorf("bootstrap auth: %s: %w", st.what, err)
		}
	}
	log.Info("etcd auth enabled", "ops_role", "read-only "+nodedoc.Prefix)
	return nil
}

func isAlreadyExists(err error) bool {
	return errors.Is(err, rpctypes.ErrRoleAlreadyExist) || errors.Is(err, rpctypes.ErrUserAlreadyExist) ||
		errors.Is(err, rpctypes.ErrGRPCRoleAlreadyExist) || errors.Is(err, rpctypes.ErrGRPCUserAlreadyExist)
}

// caHash is the hash of the cluster CA in dir, "" when unreadable.
func caHash(dir dataDir) string {
	cert, _, err := pki.LoadCACert(dir.path(pkiDir, "ca.crt"))
	if err != nil {
		return ""
	}
	return pki.CAHash(cert)
}
