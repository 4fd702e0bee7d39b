package jobs

import (
	"strings"
	"testing"
)

func TestClusterImage(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		tenant, ref string
		want        ClusterImage
		cluster     bool
		err         string
	}{
		{"acme", "berth.local/web:1.4", ClusterImage{Repository: "acme/web", Tag: "1.4"}, true, ""},
		{"acme", "berth.local/web", ClusterImage{Repository: "acme/web", Tag: "latest"}, true, ""},
		{"acme", "berth.local/acme/web:1", ClusterImage{Repository: "acme/web", Tag: "1"}, true, ""},
		{"acme", "berth.local/library/busybox:1", ClusterImage{Repository: "library/busybox", Tag: "1"}, true, ""},
		// Another tenant's name is only a path inside one's own namespace.
		{"globex", "berth.local/acme/web:1", ClusterImage{Repository: "globex/acme/web", Tag: "1"}, true, ""},
		{"acme", "berth.local/berth/os:1.0.0", ClusterImage{Repository: "acme/berth/os", Tag: "1.0.0"}, true, ""},
		{"acme", "berth.local/web@" + d, ClusterImage{Repository: "acme/web", Digest: d}, true, ""},
		{"acme", "berth.local/web:1@" + d, ClusterImage{Repository: "acme/web", Digest: d}, true, ""},
		{"acme", "berth.local/web@sha256:12", ClusterImage{}, true, "not a sha256 digest"},
		{"acme", "registry.example/web:1", ClusterImage{}, false, ""},
		{"acme", "berth.localx/web:1", ClusterImage{}, false, ""},
	} {
		got, cluster, err := ParseClusterImage(c.tenant, c.ref)
		if cluster != c.cluster || got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("ParseClusterImage(%s, %s) = %+v %v %v, want %+v %v %q", c.tenant, c.ref, got, cluster, err, c.want, c.cluster, c.err)
		}
	}
}

func TestPinnedRef(t *testing.T) {
	d := "sha256:" + strings.Repeat("0", 64)
	for ref, want := range map[string]string{
		"berth.local/web:1.4":               "berth.local/web@" + d,
		"berth.local/web":                   "berth.local/web@" + d,
		"registry.example:5000/a/b:2":       "registry.example:5000/a/b@" + d,
		"registry.example:5000/a/b":         "registry.example:5000/a/b@" + d,
		"berth.local/web:1@sha256:" + d[7:]: "berth.local/web@" + d,
	} {
		if got := PinnedRef(ref, d); got != want {
			t.Errorf("PinnedRef(%s) = %s, want %s", ref, got, want)
		}
	}
	if got := PinnedRef("a/b:1", ""); got != "a/b:1" {
		t.Errorf("unpinned: %s", got)
	}
}

func TestReservedTenantNames(t *testing.T) {
	for _, n := range []string{SharedNamespace, SystemNamespace} {
		if err := CheckTenantName(n); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("CheckTenantName(%q) = %v", n, err)
		}
	}
	if err := CheckTenantName("acme"); err != nil {
		t.Error(err)
	}
}

func TestImageDigestValidated(t *testing.T) {
	j := Job{Name: "web", Tenant: "acme", Image: "berth.local/web:1", Replicas: 1,
		Resources: Resources{CPUMillis: 100, MemoryBytes: 64 << 20}, ImageDigest: "sha256:nothex"}.WithDefaults()
	if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "image_digest") {
		t.Fatalf("bad image_digest: %v", err)
	}
	j.ImageDigest = "sha256:" + strings.Repeat("1", 64)
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryAuthHidesSecrets(t *testing.T) {
	a := RegistryAuth{Username: "u", Password: "hunter2", RegistryToken: "tok"}
	for _, s := range []string{a.String(), a.GoString()} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "tok") {
			t.Fatalf("credentials printed: %s", s)
		}
	}
}
