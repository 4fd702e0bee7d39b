package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/berth-os/berth/agent/pki"
)

// clientCluster is two agents' registries over TLS with authorization and
// one tag store, as on a cluster, and an admin and a node Client.
type clientCluster struct {
	node1, node2 Node
	admin, node  *Client
	close1       func()
}

func newClientCluster(t *testing.T) clientCluster {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	tags := &MemTags{}
	nodeTransport := clientAs(t, ca, "node-2", pki.ServerClient)
	s1 := tlsRegistry(t, ca, Options{Dir: t.TempDir(), Authorize: true, Tags: tags})
	s2 := tlsRegistry(t, ca, Options{Dir: t.TempDir(), Authorize: true, Tags: tags,
		Peers: func() []string { return []string{s1.URL} }, PeerClient: &http.Client{Transport: nodeTransport}})
	return clientCluster{
		node1: Node{Name: "node-1", URL: s1.URL}, node2: Node{Name: "node-2", URL: s2.URL},
		admin: &Client{Transport: clientAs(t, ca, "admin", pki.ClientOnly)},
		node:  &Client{Transport: nodeTransport},
		close1: func() {
			s1.CloseClientConnections()
			s1.Close()
		},
	}
}

func mustRef(t *testing.T, n Node, target string) name.Reference {
	t.Helper()
	r, err := n.Ref(target)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func randomImage(t *testing.T, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(4096, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// blobBytes is what Download reads of img: its config and its layers.
func blobBytes(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	total := m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total
}

// Push reports its progress up to the whole image; Has finds tags and
// digests on every node (tags are cluster-wide, a miss asks the peers);
// Download through node-2 leaves node-2 holding every blob.
func TestClientPushHasDownload(t *testing.T) {
	c := newClientCluster(t)
	ctx := context.Background()
	img := randomImage(t, 3)
	digest, _ := img.Digest()

	var last [2]int64
	calls := 0
	if err := c.admin.Push(ctx, mustRef(t, c.node1, "berth/os:1.0"), img, func(done, total int64) {
		calls++
		last = [2]int64{done, total}
	}); err != nil {
		t.Fatal(err)
	}
	if calls == 0 || last[0] != last[1] || last[1] < blobBytes(t, img) {
		t.Errorf("progress: %d calls, last %d of %d; want it to end at the whole image (%d bytes at least)", calls, last[0], last[1], blobBytes(t, img))
	}

	for _, c2 := range []struct {
		node   Node
		target string
		want   bool
	}{
		{c.node1, "berth/os:1.0", true},
		{c.node2, "berth/os:1.0", true},
		{c.node2, "berth/os@" + digest.String(), true},
		{c.node2, "berth/os:2.0", false},
		{c.node1, "berth/other:1.0", false},
	} {
		got, err := c.node.Has(ctx, mustRef(t, c2.node, c2.target))
		if err != nil || got != c2.want {
			t.Errorf("Has %s on %s = %v, %v; want %v", c2.target, c2.node.Name, got, err, c2.want)
		}
	}

	n, err := c.node.Download(ctx, mustRef(t, c.node2, "berth/os:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	if want := blobBytes(t, img); n != want {
		t.Errorf("Download read %d bytes, want %d", n, want)
	}
	// node-1 gone: node-2 serves the image from its own disk.
	c.close1()
	if _, err := c.node.Download(ctx, mustRef(t, c.node2, "berth/os@"+digest.String())); err != nil {
		t.Fatalf("node-2 lacks what Download read through it: %v", err)
	}

	if _, err := c.node.Download(ctx, mustRef(t, c.node2, "berth/os:9.9")); err == nil || !strings.Contains(err.Error(), "berth/os:9.9") {
		t.Errorf("Download of a missing tag: %v", err)
	}
	// A node pushes nothing: the registry's refusal comes back.
	if err := c.node.Push(ctx, mustRef(t, c.node2, "berth/os:1.1"), img, nil); !denied(err) {
		t.Errorf("a node's push: %v, want DENIED", err)
	}
}

// recorder is a Progress that remembers what it was told.
type recorder struct {
	mu    *sync.Mutex
	log   *[]string
	node  string
	bytes int
}

func (r *recorder) Bytes(done, total int64) { r.bytes++ }

func (r *recorder) Done() {
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.log = append(*r.log, fmt.Sprintf("%s done after %t", r.node, r.bytes > 0))
}

func downURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "https://" + l.Addr().String()
	l.Close()
	return u
}

// PushToAny and HasOnAny try the nodes in order, skip the ones that fail
// and say which node is next.
func TestClientOnAnyNode(t *testing.T) {
	c := newClientCluster(t)
	ctx := context.Background()
	nodes := []Node{{Name: "node-a", URL: "not a url"}, {Name: "node-b", URL: downURL(t)}, c.node2}
	if got := SortedNodes(map[string]string{"node-b": nodes[1].URL, "node-2": c.node2.URL, "node-a": "not a url"}); !slices.Equal(got, []Node{c.node2, nodes[0], nodes[1]}) {
		t.Errorf("SortedNodes = %v", got)
	}

	var mu sync.Mutex
	var log []string
	img := randomImage(t, 1)
	got, err := c.admin.PushToAny(ctx, nodes, "berth/os:1.0", img, PushOptions{
		Progress: func(n Node) Progress { return &recorder{mu: &mu, log: &log, node: n.Name} },
		Failed: func(err error, next *Node) {
			log = append(log, fmt.Sprintf("failed: %v; next %s", err, next.Name))
		},
	})
	if err != nil || got != c.node2 {
		t.Fatalf("PushToAny = %v, %v; want node-2", got, err)
	}
	if len(log) != 4 ||
		!strings.HasPrefix(log[0], `failed: node node-a has a bad API URL "not a url"; next node-b`) ||
		log[1] != "node-b done after false" ||
		!strings.HasPrefix(log[2], "failed: push to node node-b: ") || !strings.HasSuffix(log[2], "; next node-2") ||
		log[3] != "node-2 done after true" {
		t.Errorf("PushToAny's reports:\n%s", strings.Join(log, "\n"))
	}

	found, err := c.admin.HasOnAny(ctx, nodes, "berth/os:1.0", 0)
	if err != nil || !found {
		t.Errorf("HasOnAny of a pushed tag = %v, %v", found, err)
	}
	found, err = c.admin.HasOnAny(ctx, nodes, "berth/os:2.0", 0)
	if err != nil || found {
		t.Errorf("HasOnAny of a missing tag = %v, %v", found, err)
	}
	_, err = c.admin.HasOnAny(ctx, nodes[:2], "berth/os:1.0", 0)
	if err == nil || !strings.Contains(err.Error(), "no node's registry answered") ||
		!strings.Contains(err.Error(), "node-a has a bad API URL") || !strings.Contains(err.Error(), "node node-b: ") {
		t.Errorf("HasOnAny without a node answering: %v", err)
	}

	if _, err := c.admin.PushToAny(ctx, nil, "berth/os:1.0", img, PushOptions{}); !errors.Is(err, ErrNoNodes) {
		t.Errorf("PushToAny without nodes: %v", err)
	}
	if _, err := c.admin.HasOnAny(ctx, nil, "berth/os:1.0", 0); !errors.Is(err, ErrNoNodes) {
		t.Errorf("HasOnAny without nodes: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.admin.PushToAny(cancelled, nodes[1:], "berth/os:1.0", img, PushOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("PushToAny with a cancelled context: %v", err)
	}
}
