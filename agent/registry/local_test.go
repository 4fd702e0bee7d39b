package registry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// LocalTransport serves a whole push and pull in process, under the access
// rules of the identity it names.
func TestLocalTransport(t *testing.T) {
	reg, err := New(Options{Dir: t.TempDir(), Authorize: true, Tags: &MemTags{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	as := func(id Identity) remote.Option { return remote.WithTransport(reg.LocalTransport(id)) }
	admin := Identity{Role: RoleAdmin, Name: "admin"}
	node := Identity{Role: RoleNode, Name: "node-1"}
	tenant := Identity{Role: RoleTenant, Name: "acme"}

	img, err := random.Image(300_000, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference("berth.local/berth/os:0.2.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), as(admin)); err != nil {
		t.Fatalf("push as admin: %v", err)
	}
	got, err := remote.Image(ref, remote.WithContext(ctx), as(node))
	if err != nil {
		t.Fatalf("pull as node: %v", err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
	layers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed() // digest verified while read
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("read layer: %v", err)
		}
		rc.Close()
	}
	// HEAD (ggcr's remote.Head) answers without a body.
	if desc, err := remote.Head(ref, remote.WithContext(ctx), as(node)); err != nil || desc.Digest != want {
		t.Fatalf("head: %v %v", desc, err)
	}
	// The access rules hold in process too: a tenant cannot push an OS.
	err = remote.Write(ref, img, remote.WithContext(ctx), as(tenant))
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusForbidden {
		t.Fatalf("tenant push of berth/os: %v, want 403", err)
	}
	// A cancelled request returns at once.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := remote.Image(ref, remote.WithContext(cctx), as(node)); err == nil {
		t.Fatal("pull with a cancelled context succeeded")
	}
}
