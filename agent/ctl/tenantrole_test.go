package ctl_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/agent/registry"
)

// A tenant pins a library/ image at berthctl run; a tenant whose role was
// made before the registry grants existed cannot, until EnsureTenantRoles
// (what every agent runs at start) completes its role. Neither can write
// the library/ tags.
func TestTenantRolesReadLibraryTags(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{Auth: true})
	root := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	digest := "sha256:" + strings.Repeat("ab", 32)
	tag, _ := json.Marshal(registry.Tag{Digest: digest, MediaType: "application/vnd.oci.image.manifest.v1+json", Pushed: time.Now(), By: "admin"})
	if _, err := root.Put(ctx, registry.TagKey("library/busybox", "1"), string(tag)); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := berthctl(t, envFor(e), "tenant", "add", "acme"); code != ctl.ExitOK {
		t.Fatalf("tenant add: exit %d: %s", code, errOut)
	}
	// globex as the berthctl before the registry work made it: jobs,
	// its subtree, the nodes' addresses; no tags, no credentials.
	old := jobs.TenantUser("globex")
	steps := []func() error{
		func() error { _, err := root.RoleAdd(ctx, old); return err },
		func() error {
			p := jobs.JobsPrefix("globex")
			_, err := root.RoleGrantPermission(ctx, old, p, clientv3.GetPrefixRangeEnd(p), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error {
			p := jobs.TenantPrefix("globex")
			_, err := root.RoleGrantPermission(ctx, old, p, clientv3.GetPrefixRangeEnd(p), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error {
			_, err := root.RoleGrantPermission(ctx, old, nodedoc.RolesPrefix, clientv3.GetPrefixRangeEnd(nodedoc.RolesPrefix), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error {
			_, err := root.UserAddWithOptions(ctx, old, "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, old, old); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("old role, step %d: %v", i, err)
		}
	}

	jobFile := filepath.Join(t.TempDir(), "lib.yaml")
	if err := os.WriteFile(jobFile, []byte("name: lib\nimage: berth.local/library/busybox:1\ncommand: [sleep, '1000']\nresources: {cpu: 20m, memory: 16Mi}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(tenant string) (int, string, string) {
		env := envFor(e)
		env["BERTHCTL_CERT"], env["BERTHCTL_KEY"] = e.Issue(t, jobs.TenantUser(tenant), false)
		return berthctl(t, env, "run", "-f", jobFile)
	}
	if code, out, errOut := run("acme"); code != ctl.ExitOK || !strings.Contains(out, "pinned to "+digest) {
		t.Fatalf("acme's run of a library/ image: exit %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run("globex"); code != ctl.ExitError || !strings.Contains(errOut, "resolve image") || !strings.Contains(errOut, "lacks permission") {
		t.Fatalf("globex with the old role: exit %d %q, want the resolve refused by etcd", code, errOut)
	}

	fixed, err := ctl.EnsureTenantRoles(ctx, root)
	want := []ctl.TenantRoleFix{{Tenant: "globex", Granted: []string{"own image tags", "shared image tags", "registry credentials", "replicated volumes"}}}
	if err != nil || !slices.EqualFunc(fixed, want, func(a, b ctl.TenantRoleFix) bool { return a.Tenant == b.Tenant && slices.Equal(a.Granted, b.Granted) }) {
		t.Fatalf("EnsureTenantRoles = %+v, %v; want %+v", fixed, err, want)
	}
	if code, out, errOut := run("globex"); code != ctl.ExitOK || !strings.Contains(out, "pinned to "+digest) {
		t.Fatalf("globex's run after EnsureTenantRoles: exit %d %q %q", code, out, errOut)
	}
	if fixed, err := ctl.EnsureTenantRoles(ctx, root); err != nil || len(fixed) != 0 {
		t.Fatalf("second EnsureTenantRoles = %+v, %v; want nothing to do", fixed, err)
	}

	// Read-only: no tenant writes or deletes a library/ tag in etcd.
	for _, tenant := range []string{"acme", "globex"} {
		crt, key := e.Issue(t, jobs.TenantUser(tenant), false)
		cli := e.ClientAs(t, crt, key)
		if _, err := cli.Put(ctx, registry.TagKey("library/busybox", "1"), "{}"); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("%s writing a library/ tag: %v", tenant, err)
		}
		if _, err := cli.Delete(ctx, registry.TagKey("library/busybox", "1")); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("%s deleting a library/ tag: %v", tenant, err)
		}
	}
}

// A permission on the same range that is at least as strong counts as
// held; a narrower or weaker one does not; extra ones are ignored.
func TestMissingTenantGrants(t *testing.T) {
	var have []*authpb.Permission
	for _, g := range ctl.TenantGrants("acme") {
		have = append(have, &authpb.Permission{PermType: authpb.READWRITE, Key: []byte(g.Key), RangeEnd: []byte(g.End)})
	}
	have = append(have, &authpb.Permission{PermType: authpb.READ, Key: []byte("/extra/")})
	if m := ctl.MissingTenantGrants("acme", have); len(m) != 0 {
		t.Fatalf("read-write on every range: missing %+v", m)
	}
	lib := registry.TagNamespacePrefix(jobs.SharedNamespace)
	have = slices.DeleteFunc(have, func(p *authpb.Permission) bool { return string(p.Key) == lib })
	have = append(have,
		&authpb.Permission{PermType: authpb.WRITE, Key: []byte(lib), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(lib))},
		&authpb.Permission{PermType: authpb.READ, Key: []byte(lib + "busybox:1")}) // one key only
	if m := ctl.MissingTenantGrants("acme", have); len(m) != 1 || m[0].What != "shared image tags" || m[0].Key != lib {
		t.Fatalf("write-only and one-key permissions on library/: missing %+v, want the shared image tags range", m)
	}
}
