package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/berth-os/berth/agent/pki"
)

// pruneCluster is two agents' registries as on a cluster (TLS,
// authorization, one tag store); node-2 fetches from node-1 and counts
// the requests that reach it.
type pruneCluster struct {
	tags         *MemTags
	node1, node2 Node
	dir2         string
	reg2         *Registry
	seen2        *counting
	close1       func()
	admin, node  *Client
	nodeHTTP     http.RoundTripper
}

func newPruneCluster(t *testing.T) pruneCluster {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	c := pruneCluster{tags: &MemTags{}, dir2: t.TempDir()}
	nodeTransport := clientAs(t, ca, "node-2", pki.ServerClient)
	s1 := tlsRegistry(t, ca, Options{Dir: t.TempDir(), Authorize: true, Tags: c.tags})
	if c.reg2, err = New(Options{Dir: c.dir2, Authorize: true, Tags: c.tags,
		Peers: func() []string { return []string{s1.URL} }, PeerClient: &http.Client{Transport: nodeTransport}}); err != nil {
		t.Fatal(err)
	}
	c.seen2 = &counting{next: c.reg2}
	s2 := tlsServe(t, ca, c.seen2)
	c.node1, c.node2 = Node{Name: "node-1", URL: s1.URL}, Node{Name: "node-2", URL: s2.URL}
	c.close1 = func() {
		s1.CloseClientConnections()
		s1.Close()
	}
	c.admin = &Client{Transport: clientAs(t, ca, "admin", pki.ClientOnly)}
	c.node = &Client{Transport: nodeTransport}
	c.nodeHTTP = nodeTransport
	return c
}

// blobsOf lists an image's config and layer digests.
func blobsOf(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

func blobOnDisk(dir, digest string) bool {
	_, err := os.Stat(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
	return err == nil
}

// recordedDigests is what the manifest records under dir name, per repository.
func recordedDigests(t *testing.T, dir string) map[string]map[string]bool {
	t.Helper()
	st, err := newManifestStore(filepath.Join(dir, "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	recs, _, skipped := st.load()
	if len(skipped) > 0 {
		t.Fatalf("manifest store: %v", skipped)
	}
	out := map[string]map[string]bool{}
	for _, r := range recs {
		if out[r.Repo] == nil {
			out[r.Repo] = map[string]bool{}
		}
		out[r.Repo][r.Digest] = true
	}
	return out
}

func digestOf(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// PruneLocal on node-2 removes the old OS payload's manifest and the blobs
// only it uses from node-2's disk, keeps a blob another repository uses,
// leaves the cluster's tags alone and answers no request; node-2 still
// serves the kept payload, and the old one comes back from node-1 on a pull.
func TestPruneLocal(t *testing.T) {
	c := newPruneCluster(t)
	ctx := context.Background()
	shared, err := random.Layer(4096, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	withShared := func() v1.Image {
		img, err := mutate.AppendLayers(randomImage(t, 1), shared)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	old, app, next := withShared(), withShared(), randomImage(t, 2)
	images := map[string]v1.Image{"berth/os:0.1.0": old, "berth/os:0.2.0": next, "acme/app:1": app}
	for target, img := range images {
		if err := c.admin.Push(ctx, mustRef(t, c.node1, target), img, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.node.Download(ctx, mustRef(t, c.node2, target)); err != nil {
			t.Fatalf("download %s through node-2: %v", target, err)
		}
	}
	tagsBefore, _ := c.tags.List(ctx, "")
	requestsBefore := c.seen2.total.Load()

	freed, err := c.reg2.PruneLocal(ctx, "berth/os", "0.2.0")
	if err != nil {
		t.Fatal(err)
	}
	if n := c.seen2.total.Load() - requestsBefore; n != 0 {
		t.Errorf("PruneLocal made %d requests to the registry's API, want none", n)
	}
	if tags, _ := c.tags.List(ctx, ""); !reflect.DeepEqual(tags, tagsBefore) {
		t.Errorf("tags changed by a local prune:\n%v\nwant\n%v", tags, tagsBefore)
	}

	oldBlobs := blobsOf(t, old)
	sharedDigest, _ := shared.Digest()
	oldOwn := oldBlobs[:len(oldBlobs)-1] // config and its own layer; the last layer is shared
	rawOld, _ := old.RawManifest()
	var want int64 = int64(len(rawOld))
	for _, b := range oldOwn {
		if blobOnDisk(c.dir2, b) {
			t.Errorf("blob %s of the pruned 0.1.0 is still on disk", b)
		}
		h, _ := v1.NewHash(b)
		want += blobSize(t, old, h)
	}
	if freed != want {
		t.Errorf("PruneLocal freed %d bytes, want %d (0.1.0's manifest, config and own layer)", freed, want)
	}
	for _, b := range append(append([]string{sharedDigest.String()}, blobsOf(t, next)...), blobsOf(t, app)...) {
		if !blobOnDisk(c.dir2, b) {
			t.Errorf("blob %s of a kept image was removed", b)
		}
	}
	recs := recordedDigests(t, c.dir2)
	if recs["berth/os"][digestOf(t, old)] || !recs["berth/os"][digestOf(t, next)] || !recs["acme/app"][digestOf(t, app)] {
		t.Errorf("manifest records after the prune: %v; want 0.1.0 gone, 0.2.0 and acme/app kept", recs)
	}
	if _, err := os.Stat(filepath.Join(c.dir2, "manifests", "content", "sha256", strings.TrimPrefix(digestOf(t, old), "sha256:"))); err == nil {
		t.Error("the pruned manifest's bytes are still on disk")
	}
	if c.reg2.s.hasManifest(ctx, "berth/os", digestOf(t, old)) {
		t.Error("the pruned manifest is still served from memory")
	}
	if n, err := c.reg2.PruneLocal(ctx, "berth/os", "0.2.0"); n != 0 || err != nil {
		t.Errorf("second PruneLocal = %d, %v; want nothing to do", n, err)
	}

	// The tag still resolves cluster-wide: node-2 fetches 0.1.0 back.
	if _, err := c.node.Download(ctx, mustRef(t, c.node2, "berth/os:0.1.0")); err != nil {
		t.Fatalf("pull of the pruned 0.1.0 through node-2: %v", err)
	}
	for _, b := range oldBlobs {
		if !blobOnDisk(c.dir2, b) {
			t.Errorf("blob %s of 0.1.0 was not fetched back", b)
		}
	}
	if !recordedDigests(t, c.dir2)["berth/os"][digestOf(t, old)] {
		t.Error("the manifest of 0.1.0 was not stored again")
	}
	// node-1 gone: node-2 serves everything from its own disk.
	c.close1()
	for target := range images {
		if _, err := c.node.Download(ctx, mustRef(t, c.node2, target)); err != nil {
			t.Errorf("node-2 alone: download %s: %v", target, err)
		}
	}
}

func blobSize(t *testing.T, img v1.Image, h v1.Hash) int64 {
	t.Helper()
	m, _ := img.Manifest()
	if m.Config.Digest == h {
		return m.Config.Size
	}
	for _, l := range m.Layers {
		if l.Digest == h {
			return l.Size
		}
	}
	t.Fatalf("%s is no blob of the image", h)
	return 0
}

// The old prune went over HTTPS as the node: a node may not delete (403)
// and a tag delete would have removed the version for the whole cluster.
// PruneLocal does what it needs without either.
func TestPruneLocalNeedsNoHTTP(t *testing.T) {
	c := newPruneCluster(t)
	ctx := context.Background()
	one := randomImage(t, 1)
	for v, img := range map[string]v1.Image{"1": one, "2": randomImage(t, 1)} {
		if err := c.admin.Push(ctx, mustRef(t, c.node2, "berth/os:"+v), img, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A push to another repository that has uploaded 1's layer and not
	// yet its manifest: the layer must stay.
	oneBlobs := blobsOf(t, one)
	if err := c.reg2.s.links.add("acme/wip", oneBlobs[1]); err != nil {
		t.Fatal(err)
	}
	// What the old prune sent first: DELETE of the tag, as the node.
	if err := remote.Delete(mustRef(t, c.node2, "berth/os:1"), remote.WithTransport(c.nodeHTTP)); !denied(err) {
		t.Fatalf("a node's DELETE over HTTPS: %v, want DENIED", err)
	}
	before := c.seen2.total.Load()
	if _, err := c.reg2.PruneLocal(ctx, "berth/os", "2"); err != nil {
		t.Fatalf("PruneLocal: %v", err)
	}
	if n := c.seen2.total.Load() - before; n != 0 {
		t.Errorf("PruneLocal sent %d requests, want none (no DELETE)", n)
	}
	if blobOnDisk(c.dir2, oneBlobs[0]) || !blobOnDisk(c.dir2, oneBlobs[1]) {
		t.Error("after the prune: want 1's config gone and its layer, held by acme/wip, kept")
	}
	if _, ok, _ := c.tags.Get(ctx, "berth/os", "1"); !ok {
		t.Error("the pruned version's tag is gone from the cluster")
	}
	if ok, err := c.node.Has(ctx, mustRef(t, c.node2, "berth/os:1")); ok || err != nil {
		t.Errorf("Has berth/os:1 on node-2 without a peer holding it = %v, %v; want false (pruned locally)", ok, err)
	}
}

// Without a cluster tag store tags are records of their own; a kept tag
// of an index keeps its children; a kept tag the cluster store does not
// know is an error that removes nothing.
func TestPruneLocalKeepRules(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	reg, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	// x/img:1 shares a layer with y/other:1; nothing links blobs to
	// repositories here, so only y/other's manifest keeps it.
	shared, err := random.Layer(2048, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	var other v1.Image
	for _, target := range []string{"x/img:1", "y/other:1"} {
		base, err := random.Image(2048, 2)
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(base, shared)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref(t, host, target), img); err != nil {
			t.Fatal(err)
		}
		other = img
	}
	two := push(t, host, "x/img:2")
	idx, err := random.Index(1024, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref(t, host, "x/idx:1"), idx); err != nil {
		t.Fatal(err)
	}
	push(t, host, "x/idx:0")

	if _, err := reg.PruneLocal(ctx, "x/img", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(ref(t, host, "x/img:1")); err == nil {
		t.Error("x/img:1 still served after a local prune without a tag store")
	}
	pullAndCheck(t, host, "x/img:2", two)
	pullAndCheck(t, host, "y/other:1", other)
	// Keeping by digest: nothing else is left to remove.
	if n, err := reg.PruneLocal(ctx, "x/img", digestOf(t, two)); n != 0 || err != nil {
		t.Errorf("PruneLocal keeping 2 by digest = %d, %v", n, err)
	}

	if _, err := reg.PruneLocal(ctx, "x/idx", "1"); err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	for _, d := range im.Manifests {
		r, _ := name.NewDigest(host + "/x/idx@" + d.Digest.String())
		img, err := remote.Image(r)
		if err == nil {
			_, err = img.ConfigFile()
		}
		if err != nil {
			t.Errorf("child %s of the kept index: %v", d.Digest, err)
		}
	}
	if _, err := remote.Image(ref(t, host, "x/idx:0")); err == nil {
		t.Error("x/idx:0 still served")
	}

	tags := &MemTags{}
	tdir := t.TempDir()
	treg, err := New(Options{Dir: tdir, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	tsrv := httptest.NewServer(treg)
	defer tsrv.Close()
	thost := strings.TrimPrefix(tsrv.URL, "http://")
	one := push(t, thost, "berth/os:1")
	if _, err := treg.PruneLocal(ctx, "berth/os", "9.9"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("PruneLocal keeping an unknown tag: %v, want an error", err)
	}
	pullAndCheck(t, thost, "berth/os:1", one)
	if _, err := treg.PruneLocal(ctx, "Bad Repo", "1"); err == nil {
		t.Error("PruneLocal of an invalid repository name: no error")
	}
}
