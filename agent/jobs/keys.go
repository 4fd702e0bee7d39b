package jobs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Key layout under nodedoc.Prefix (/berth/v1/). Tenant data lives under one
// prefix per tenant so that etcd RBAC can grant a tenant exactly its own
// subtree; scheduler output for nodes lives under assign/ so that each agent
// watches one prefix of its own.
const (
	TenantsPrefix  = nodedoc.Prefix + "tenants/"
	QuotaPrefix    = nodedoc.Prefix + "tenantquota/"
	AssignPrefix   = nodedoc.Prefix + "assign/"
	VolumesPrefix  = nodedoc.Prefix + "volumes/"
	ElectionPrefix = nodedoc.Prefix + "scheduler/election"
)

// TenantPrefix is everything of one tenant.
func TenantPrefix(tenant string) string { return TenantsPrefix + tenant + "/" }

// JobsPrefix holds the tenant's job documents.
func JobsPrefix(tenant string) string { return TenantPrefix(tenant) + "jobs/" }

// JobKey is the key of a job document.
func JobKey(tenant, job string) string { return JobsPrefix(tenant) + job }

// StatusPrefix holds the replica statuses of all of a tenant's jobs.
func StatusPrefix(tenant string) string { return TenantPrefix(tenant) + "status/" }

// JobStatusPrefix holds the replica statuses of one job.
func JobStatusPrefix(tenant, job string) string { return StatusPrefix(tenant) + job + "/" }

// StatusKey is the key of one replica's status.
func StatusKey(tenant, job string, replica int) string {
	return JobStatusPrefix(tenant, job) + strconv.Itoa(replica)
}

// PlacementPrefix holds the scheduler's placement summaries of a tenant.
func PlacementPrefix(tenant string) string { return TenantPrefix(tenant) + "placement/" }

// PlacementKey is the key of a job's placement summary.
func PlacementKey(tenant, job string) string { return PlacementPrefix(tenant) + job }

// UsagePrefix holds a tenant's usage, one document per node.
func UsagePrefix(tenant string) string { return TenantPrefix(tenant) + "usage/" }

// UsageKey is the key of a tenant's usage on one node.
func UsageKey(tenant, node string) string { return UsagePrefix(tenant) + node }

// QuotaKey is the key of a tenant's quota (written by ops, read by agents).
func QuotaKey(tenant string) string { return QuotaPrefix + tenant }

// AssignNodePrefix holds everything assigned to one node.
func AssignNodePrefix(node string) string { return AssignPrefix + node + "/" }

// AssignKey is the key of one replica's assignment to a node.
func AssignKey(node, tenant, job string, replica int) string {
	return AssignNodePrefix(node) + tenant + "/" + job + "/" + strconv.Itoa(replica)
}

// VolumeHomeKey records the node holding a replica's volumes.
func VolumeHomeKey(tenant, job string, replica int) string {
	return VolumesPrefix + tenant + "/" + job + "/" + strconv.Itoa(replica)
}

// ReplicaID names one replica cluster-wide.
type ReplicaID struct {
	Tenant  string
	Job     string
	Replica int
}

func (r ReplicaID) String() string { return fmt.Sprintf("%s/%s/%d", r.Tenant, r.Job, r.Replica) }

// JobRef names one job cluster-wide.
type JobRef struct{ Tenant, Job string }

func (r JobRef) String() string { return r.Tenant + "/" + r.Job }

// ParseAssignKey splits assign/<node>/<tenant>/<job>/<replica>.
func ParseAssignKey(key string) (node string, id ReplicaID, err error) {
	rest, ok := strings.CutPrefix(key, AssignPrefix)
	if !ok {
		return "", ReplicaID{}, fmt.Errorf("key %q is not under %s", key, AssignPrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", ReplicaID{}, fmt.Errorf("key %q: want %s<node>/<tenant>/<job>/<replica>", key, AssignPrefix)
	}
	if err := nodedoc.CheckName(parts[0]); err != nil {
		return "", ReplicaID{}, fmt.Errorf("key %q: %w", key, err)
	}
	id, err = replicaFromParts(key, parts[1], parts[2], parts[3])
	return parts[0], id, err
}

// ParseVolumeHomeKey splits volumes/<tenant>/<job>/<replica>.
func ParseVolumeHomeKey(key string) (ReplicaID, error) {
	rest, ok := strings.CutPrefix(key, VolumesPrefix)
	if !ok {
		return ReplicaID{}, fmt.Errorf("key %q is not under %s", key, VolumesPrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return ReplicaID{}, fmt.Errorf("key %q: want %s<tenant>/<job>/<replica>", key, VolumesPrefix)
	}
	return replicaFromParts(key, parts[0], parts[1], parts[2])
}

// ParseJobKey splits tenants/<tenant>/jobs/<job>; ok is false for any other
// key (status, placement, usage ... share the tenants/ prefix).
func ParseJobKey(key string) (ref JobRef, ok bool) {
	return parseTenantKey(key, "jobs")
}

// ParsePlacementKey splits tenants/<tenant>/placement/<job>.
func ParsePlacementKey(key string) (ref JobRef, ok bool) {
	return parseTenantKey(key, "placement")
}

func parseTenantKey(key, kind string) (JobRef, bool) {
	rest, ok := strings.CutPrefix(key, TenantsPrefix)
	if !ok {
		return JobRef{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[1] != kind || CheckTenantName(parts[0]) != nil || CheckJobName(parts[2]) != nil {
		return JobRef{}, false
	}
	return JobRef{Tenant: parts[0], Job: parts[2]}, true
}

// ParseStatusKey splits tenants/<tenant>/status/<job>/<replica>; ok is
// false for any other key.
func ParseStatusKey(key string) (ReplicaID, bool) {
	rest, ok := strings.CutPrefix(key, TenantsPrefix)
	if !ok {
		return ReplicaID{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "status" {
		return ReplicaID{}, false
	}
	id, err := replicaFromParts(key, parts[0], parts[2], parts[3])
	return id, err == nil
}

func replicaFromParts(key, tenant, job, replica string) (ReplicaID, error) {
	if err := CheckTenantName(tenant); err != nil {
		return ReplicaID{}, fmt.Errorf("key %q: %w", key, err)
	}
	if err := CheckJobName(job); err != nil {
		return ReplicaID{}, fmt.Errorf("key %q: %w", key, err)
	}
	n, err := parseIndex(replica)
	if err != nil {
		return ReplicaID{}, fmt.Errorf("key %q: replica %w", key, err)
	}
	return ReplicaID{Tenant: tenant, Job: job, Replica: n}, nil
}

// parseIndex accepts the canonical decimal form only ("7", not "07" or "+7"),
// so that one replica has exactly one key.
func parseIndex(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= MaxReplicas || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("index %q is not a number 0..%d", s, MaxReplicas-1)
	}
	return n, nil
}

// ContainerID is the container's ID on its node. Tenant names have no dots,
// so the first dot ends the tenant; replica and generation are the last two
// dot-separated fields, so job names may contain dots.
func ContainerID(tenant, job string, replica int, generation int64) string {
	return tenant + "." + job + "." + strconv.Itoa(replica) + ".g" + strconv.FormatInt(generation, 10)
}

// ParseContainerID is the inverse of ContainerID.
func ParseContainerID(id string) (r ReplicaID, generation int64, err error) {
	tenant, rest, ok := strings.Cut(id, ".")
	if !ok {
		return ReplicaID{}, 0, fmt.Errorf("container id %q: want <tenant>.<job>.<replica>.g<generation>", id)
	}
	genAt := strings.LastIndex(rest, ".")
	if genAt < 0 {
		return ReplicaID{}, 0, fmt.Errorf("container id %q: want <tenant>.<job>.<replica>.g<generation>", id)
	}
	gen, ok := strings.CutPrefix(rest[genAt+1:], "g")
	rest = rest[:genAt]
	replicaAt := strings.LastIndex(rest, ".")
	if !ok || replicaAt < 0 {
		return ReplicaID{}, 0, fmt.Errorf("container id %q: want <tenant>.<job>.<replica>.g<generation>", id)
	}
	r, err = replicaFromParts(id, tenant, rest[:replicaAt], rest[replicaAt+1:])
	if err != nil {
		return ReplicaID{}, 0, err
	}
	generation, err = strconv.ParseInt(gen, 10, 64)
	if err != nil || generation < 0 || strconv.FormatInt(generation, 10) != gen {
		return ReplicaID{}, 0, fmt.Errorf("container id %q: generation %q is not a number", id, gen)
	}
	return r, generation, nil
}

// TenantCNPrefix starts the certificate CN (and etcd user name) of a
// tenant's identity: tenant:NAME.
const TenantCNPrefix = "tenant:"

// TenantUser is the etcd user (and certificate CN) of a tenant.
func TenantUser(tenant string) string { return TenantCNPrefix + tenant }

// TenantFromCN returns the tenant a certificate CN names; ok is false for
// the cluster's own identities (nodes, admin, ops).
func TenantFromCN(cn string) (tenant string, ok bool) {
	return strings.CutPrefix(cn, TenantCNPrefix)
}
