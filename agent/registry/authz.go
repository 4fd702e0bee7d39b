package registry

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
)

// Role is what a client certificate of the cluster CA makes its holder:
// the same identities etcd knows (CN admin, ops, tenant:NAME, node names).
type Role int

// Roles, from no rights to all.
const (
	RoleNone Role = iota
	RoleTenant
	RoleOps
	RoleNode
	RoleAdmin
)

func (r Role) String() string {
	return [...]string{"none", "tenant", "ops", "node", "admin"}[r]
}

// Identity is a registry client as authorization sees it.
type Identity struct {
	Role Role
	Name string // the tenant's or node's name; the CN for the others
}

func (id Identity) String() string {
	switch id.Role {
	case RoleTenant:
		return jobs.TenantUser(id.Name)
	case RoleNode:
		return "node " + id.Name
	case RoleNone:
		return fmt.Sprintf("unknown identity %q", id.Name)
	}
	return id.Name
}

// Names of the operator identities (certificate CNs), as in agent/cluster.
const (
	adminCN = "admin"
	opsCN   = "ops"
)

// IdentityFromCert maps a verified client certificate to its identity.
// Nodes are told apart from operator certificates by their server-auth
// usage: issue-cert makes client-only certificates, joins make nodes'.
func IdentityFromCert(cert *x509.Certificate) Identity {
	cn := cert.Subject.CommonName
	switch {
	case cn == adminCN:
		return Identity{Role: RoleAdmin, Name: cn}
	case cn == opsCN:
		return Identity{Role: RoleOps, Name: cn}
	}
	if t, ok := jobs.TenantFromCN(cn); ok {
		if jobs.CheckTenantName(t) != nil {
			return Identity{Role: RoleNone, Name: cn}
		}
		return Identity{Role: RoleTenant, Name: t}
	}
	if nodedoc.CheckName(cn) == nil && slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return Identity{Role: RoleNode, Name: cn}
	}
	return Identity{Role: RoleNone, Name: cn}
}

// Action is what a request does to a repository.
type Action string

// Actions. Overwriting a tag is a push; removing a tag or manifest is a delete.
const (
	ActionPull   Action = "pull"
	ActionPush   Action = "push"
	ActionDelete Action = "delete"
)

// Decision is the outcome of Authorize; Reason says why, for the client.
type Decision struct {
	Allow  bool
	Reason string
}

func allow(format string, a ...any) Decision { return Decision{true, fmt.Sprintf(format, a...)} }
func deny(format string, a ...any) Decision  { return Decision{false, fmt.Sprintf(format, a...)} }

// Authorize decides whether id may do action on repo. It is the whole
// policy; the HTTP layer only maps requests to (repository, action).
//
//	TENANT/...  the tenant: pull, push, delete; nobody else but admin
//	library/... every identity pulls; admin writes
//	berth/...   OS payloads: nodes, ops and admin pull; admin writes
//	anything    admin: everything; ops: pull; nodes: pull (they run every
//	            tenant's jobs and fetch from each other)
func Authorize(id Identity, repo string, action Action) Decision {
	ns, _, _ := strings.Cut(repo, "/")
	write := action != ActionPull
	switch id.Role {
	case RoleAdmin:
		return allow("admin may %s anything", action)
	case RoleOps:
		if write {
			return deny("ops is read-only: it may pull but not %s %s", action, repo)
		}
		return allow("ops reads everything")
	case RoleNode:
		if write {
			return deny("node %s may not %s %s: nodes only pull (pushes come from admin or tenants)", id.Name, action, repo)
		}
		return allow("nodes pull what their jobs run and what peers ask for")
	case RoleTenant:
		switch {
		case ns == id.Name && strings.Contains(repo, "/"):
			return allow("%s is tenant %s's own repository", repo, id.Name)
		case ns == jobs.SharedNamespace && !write:
			return allow("%s/ is shared read-only", jobs.SharedNamespace)
		case ns == jobs.SharedNamespace:
			return deny("%s/ is shared read-only: only admin may %s %s", jobs.SharedNamespace, action, repo)
		case ns == jobs.SystemNamespace:
			return deny("%s/ holds the OS payloads: tenant %s may not %s %s", jobs.SystemNamespace, id.Name, action, repo)
		}
		return deny("tenant %s may not %s %s: a tenant's repositories are under %s/ (and %s/ is read-only)", id.Name, action, repo, id.Name, jobs.SharedNamespace)
	}
	return deny("%s has no access to the cluster registry", id)
}

// requestAction maps a /v2/ request to the action it needs. Reads are
// GET and HEAD; a blob upload (POST/PATCH/PUT under blobs/uploads) and a
// manifest PUT are pushes; DELETE of anything is a delete.
func requestAction(method string) Action {
	switch method {
	case http.MethodGet, http.MethodHead:
		return ActionPull
	case http.MethodDelete:
		return ActionDelete
	}
	return ActionPush
}

// repoOfPath returns the repository a /v2/ path is about ("" for /v2/
// itself and the catalog): everything before /manifests/, /blobs/ or
// /tags/list.
func repoOfPath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok || rest == "" || rest == "_catalog" {
		return "", ok
	}
	if r, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return r, true
	}
	// The last separator wins: repository names may contain "manifests".
	i := max(strings.LastIndex(rest, "/manifests/"), strings.LastIndex(rest, "/blobs/"))
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}
