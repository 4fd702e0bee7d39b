package jobs

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// ClusterRegistryHost names the cluster-local registry in image references.
const ClusterRegistryHost = "berth.local"

// Namespaces of the cluster registry that belong to no tenant. Their names
// are reserved as tenant names so that a tenant's namespace (its own name)
// never overlaps them.
const (
	// SharedNamespace holds images every tenant may read; only admin writes.
	SharedNamespace = "library"
	// SystemNamespace holds the OS payloads (berth/os); only admin writes.
	SystemNamespace = "berth"
)

var digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// IsDigest tells whether s is a sha256 digest (sha256:<64 hex>).
func IsDigest(s string) bool { return digestRE.MatchString(s) }

// ClusterRepository maps the repository path of a berth.local reference,
// as a tenant writes it, to the repository in the cluster registry:
// library/... stays shared, TENANT/... is already the tenant's own, and
// anything else goes under the tenant's namespace (web -> acme/web). No
// path of one tenant can name another tenant's repository.
func ClusterRepository(tenant, path string) string {
	first, _, _ := strings.Cut(path, "/")
	if first == SharedNamespace || first == tenant {
		return path
	}
	return tenant + "/" + path
}

// ClusterImage is an image reference split for the cluster registry.
type ClusterImage struct {
	Repository string // in the cluster registry, e.g. acme/web
	Tag        string // "" when the reference is by digest
	Digest     string // "" when the reference is by tag
}

// ParseClusterImage reads a berth.local/PATH[:TAG][@DIGEST] reference of
// tenant's; ok is false for references to other registries.
func ParseClusterImage(tenant, ref string) (img ClusterImage, ok bool, err error) {
	rest, ok := strings.CutPrefix(ref, ClusterRegistryHost+"/")
	if !ok {
		return ClusterImage{}, false, nil
	}
	if rest, d, found := strings.Cut(rest, "@"); found {
		if !IsDigest(d) {
			return ClusterImage{}, true, fmt.Errorf("image %q: %q is not a sha256 digest", ref, d)
		}
		img.Digest = d
		ref = ClusterRegistryHost + "/" + rest // the tag beside a digest is only a label
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return ClusterImage{}, true, fmt.Errorf("image %q: %w", ref, err)
	}
	img.Repository = ClusterRepository(tenant, r.Context().RepositoryStr())
	if t, isTag := r.(name.Tag); isTag && img.Digest == "" {
		img.Tag = t.TagStr()
	}
	return img, true, nil
}

// PinnedRef is the reference a node pulls for a job: the job's image with
// its tag replaced by the digest pinned at submission, so every replica on
// every node runs the same bytes whatever happens to the tag later.
func PinnedRef(ref, digest string) string {
	if digest == "" {
		return ref
	}
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref + "@" + digest
}

// SecretsPrefix holds what only its owner and the nodes may read. It is
// outside nodedoc.Prefix on purpose: the ops role reads all of /berth/v1/.
const SecretsPrefix = "/berth/secrets/v1/"

// RegistryAuthPrefix holds a tenant's credentials for registries outside
// the cluster, one key per registry host.
func RegistryAuthPrefix(tenant string) string {
	return SecretsPrefix + "tenants/" + tenant + "/registry-auth/"
}

// RegistryAuthKey is the key of tenant's credentials for registry (HOST[:PORT]).
func RegistryAuthKey(tenant, registry string) string { return RegistryAuthPrefix(tenant) + registry }

// RegistryAuth is the value at RegistryAuthKey: a user name and password,
// or a token, as in a docker config.json's auths entry.
type RegistryAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identity_token,omitempty"`
	RegistryToken string `json:"registry_token,omitempty"`
}

// String hides the secrets, so a credential printed by mistake says nothing.
func (a RegistryAuth) String() string {
	return fmt.Sprintf("registry credentials (user %q)", a.Username)
}

// GoString hides the secrets from %#v as well.
func (a RegistryAuth) GoString() string { return a.String() }
