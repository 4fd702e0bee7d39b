package ctl

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/authpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/registry"
	"github.com/berth-os/berth/agent/volume"
)

// TenantGrant is one key range of a tenant's etcd role.
type TenantGrant struct {
	What     string // for messages: "shared image tags"
	Key, End string
	Perm     clientv3.PermissionType
}

// TenantGrants is everything the etcd role of tenant holds: read-write on
// its jobs and its outside-registry credentials; read-only on the rest of
// its subtree, on its own and the shared library/ registry tags (so
// berthctl run can pin a berth.local image, its own or library/, to a
// digest) and on the nodes' API addresses. Nothing of other tenants.
// berthctl tenant add and the agents' EnsureTenantRoles use this one list.
func TenantGrants(tenant string) []TenantGrant {
	read := clientv3.PermissionType(clientv3.PermRead)
	rw := clientv3.PermissionType(clientv3.PermReadWrite)
	prefix := func(what, p string, perm clientv3.PermissionType) TenantGrant {
		return TenantGrant{What: what, Key: p, End: clientv3.GetPrefixRangeEnd(p), Perm: perm}
	}
	return []TenantGrant{
		prefix("jobs", jobs.JobsPrefix(tenant), rw),
		prefix("tenant read", jobs.TenantPrefix(tenant), read),
		prefix("own image tags", registry.TagNamespacePrefix(tenant), read),
		prefix("shared image tags", registry.TagNamespacePrefix(jobs.SharedNamespace), read),
		prefix("registry credentials", jobs.RegistryAuthPrefix(tenant), rw), // outside /berth/v1/: ops cannot read it
		prefix("node addresses", nodedoc.RolesPrefix, read),
		prefix("replicated volumes", volume.Prefix+tenant+"/", read),
	}
}

// MissingTenantGrants returns the grants of TenantGrants(tenant) that the
// role's permissions have lack: none on exactly that range, or a weaker one.
// Extra permissions an administrator added are left alone.
func MissingTenantGrants(tenant string, have []*authpb.Permission) []TenantGrant {
	var missing []TenantGrant
	for _, g := range TenantGrants(tenant) {
		held := false
		for _, h := range have {
			if string(h.Key) == g.Key && string(h.RangeEnd) == g.End &&
				(h.PermType == authpb.Permission_Type(g.Perm) || h.PermType == authpb.READWRITE) {
				held = true
				break
			}
		}
		if !held {
			missing = append(missing, g)
		}
	}
	return missing
}

// TenantRoleFix says what EnsureTenantRoles granted to a tenant's role.
type TenantRoleFix struct {
	Tenant  string
	Granted []string // TenantGrant.What
}

// EnsureTenantRoles brings every tenant role (tenant:NAME) in etcd up to
// TenantGrants. Roles are written only by berthctl tenant add, so a tenant
// added by an older berthctl keeps an older grant set: without the
// registry tag ranges it cannot pin even library/ images at berthctl run.
// The agents (etcd root) call this at start, so upgrading the cluster is
// enough; it writes nothing when every role is complete. Needs etcd's root
// role.
func EnsureTenantRoles(ctx context.Context, cli *clientv3.Client) ([]TenantRoleFix, error) {
	roles, err := cli.RoleList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd roles: %w", err)
	}
	var fixed []TenantRoleFix
	for _, role := range roles.Roles {
		tenant, ok := jobs.TenantFromCN(role)
		if !ok || jobs.CheckTenantName(tenant) != nil {
			continue // not a tenant's role
		}
		got, err := cli.RoleGet(ctx, role)
		if err != nil {
			return fixed, fmt.Errorf("read etcd role %s: %w", role, err)
		}
		fix := TenantRoleFix{Tenant: tenant}
		for _, g := range MissingTenantGrants(tenant, got.Perm) {
			if _, err := cli.RoleGrantPermission(ctx, role, g.Key, g.End, g.Perm); err != nil {
				if len(fix.Granted) > 0 {
					fixed = append(fixed, fix)
				}
				return fixed, fmt.Errorf("grant %s to etcd role %s: %w", g.What, role, err)
			}
			fix.Granted = append(fix.Granted, g.What)
		}
		if len(fix.Granted) > 0 {
			fixed = append(fixed, fix)
		}
	}
	return fixed, nil
}
