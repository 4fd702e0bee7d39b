package registry

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/berth-os/berth/agent/pki"
)

func TestAuthorizeTable(t *testing.T) {
	acme := Identity{Role: RoleTenant, Name: "acme"}
	globex := Identity{Role: RoleTenant, Name: "globex"}
	ops := Identity{Role: RoleOps, Name: "ops"}
	admin := Identity{Role: RoleAdmin, Name: "admin"}
	node := Identity{Role: RoleNode, Name: "node-1"}
	none := Identity{Role: RoleNone, Name: "stranger"}
	type tc struct {
		id     Identity
		repo   string
		action Action
		allow  bool
		reason string // a part of the reason
	}
	cases := []tc{
		{acme, "acme/web", ActionPull, true, "own"},
		{acme, "acme/web", ActionPush, true, "own"},
		{acme, "acme/web", ActionDelete, true, "own"},
		{acme, "acme/team/web", ActionPush, true, "own"},
		{acme, "acme", ActionPush, false, "under acme/"},         // the namespace itself is no repository of its
		{acme, "acmecorp/web", ActionPull, false, "under acme/"}, // a prefix is not the namespace
		{globex, "acme/web", ActionPull, false, "tenant globex may not pull acme/web"},
		{globex, "acme/web", ActionPush, false, "tenant globex may not push acme/web"},
		{globex, "acme/web", ActionDelete, false, "may not delete"},
		{acme, "library/busybox", ActionPull, true, "shared read-only"},
		{acme, "library/busybox", ActionPush, false, "only admin may push"},
		{acme, "library/busybox", ActionDelete, false, "only admin may delete"},
		{acme, "berth/os", ActionPull, false, "OS payloads"},
		{acme, "berth/os", ActionPush, false, "OS payloads"},
		{acme, "web", ActionPull, false, "under acme/"},
		{ops, "acme/web", ActionPull, true, "reads everything"},
		{ops, "berth/os", ActionPull, true, "reads everything"},
		{ops, "library/rcheck", ActionPush, false, "ops is read-only"},
		{ops, "acme/web", ActionDelete, false, "ops is read-only"},
		{admin, "berth/os", ActionPush, true, "admin"},
		{admin, "library/busybox", ActionPush, true, "admin"},
		{admin, "acme/web", ActionDelete, true, "admin"},
		{node, "acme/web", ActionPull, true, "nodes pull"},
		{node, "berth/os", ActionPull, true, "nodes pull"},
		{node, "berth/os", ActionPush, false, "nodes only pull"},
		{node, "acme/web", ActionDelete, false, "nodes only pull"},
		{none, "library/busybox", ActionPull, false, "no access"},
	}
	for _, c := range cases {
		d := Authorize(c.id, c.repo, c.action)
		if d.Allow != c.allow || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("Authorize(%s, %s, %s) = %v %q, want %v and a reason with %q", c.id, c.repo, c.action, d.Allow, d.Reason, c.allow, c.reason)
		}
	}
}

func TestIdentityFromCert(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cn   string
		kind pki.Kind
		want Identity
	}{
		{"admin", pki.ClientOnly, Identity{RoleAdmin, "admin"}},
		{"ops", pki.ClientOnly, Identity{RoleOps, "ops"}},
		{"tenant:acme", pki.ClientOnly, Identity{RoleTenant, "acme"}},
		{"tenant:library", pki.ClientOnly, Identity{RoleNone, "tenant:library"}}, // reserved name
		{"tenant:Bad", pki.ClientOnly, Identity{RoleNone, "tenant:Bad"}},
		{"node-1", pki.ServerClient, Identity{RoleNode, "node-1"}},
		{"node-1", pki.ClientOnly, Identity{RoleNone, "node-1"}}, // a client-only certificate is no node
		{"Node_1", pki.ServerClient, Identity{RoleNone, "Node_1"}},
	} {
		certPEM, _, err := ca.Issue(c.cn, c.kind, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(certPEM)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if got := IdentityFromCert(cert); got != c.want {
			t.Errorf("IdentityFromCert(%s, kind %d) = %+v, want %+v", c.cn, c.kind, got, c.want)
		}
	}
}

func TestRepoOfPath(t *testing.T) {
	for path, want := range map[string]string{
		"/v2/":                                   "",
		"/v2/_catalog":                           "",
		"/v2/acme/web/manifests/v1":              "acme/web",
		"/v2/acme/web/blobs/uploads/":            "acme/web",
		"/v2/acme/web/blobs/uploads/abc":         "acme/web",
		"/v2/acme/manifests/blobs/sha256:00":     "acme/manifests",
		"/v2/acme/blobs/x/manifests/latest":      "acme/blobs/x",
		"/v2/acme/web/tags/list":                 "acme/web",
		"/v2/library/busybox/blobs/sha256:abcd0": "library/busybox",
	} {
		if got, _ := repoOfPath(path); got != want {
			t.Errorf("repoOfPath(%q) = %q, want %q", path, got, want)
		}
	}
}

// tlsRegistry serves a registry with authorization over TLS on loopback,
// trusting ca for client certificates, as the agent does.
func tlsRegistry(t testing.TB, ca *pki.CA, o Options) *httptest.Server {
	t.Helper()
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return tlsServe(t, ca, h)
}

// tlsServe serves h over TLS on loopback as tlsRegistry does.
func tlsServe(t testing.TB, ca *pki.CA, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	certPEM, keyPEM, err := ca.Issue("registry", pki.ServerClient, []net.IP{net.IPv4(127, 0, 0, 1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// clientAs is an HTTPS transport presenting a certificate with CN cn
// ("" = none).
func clientAs(t testing.TB, ca *pki.CA, cn string, kind pki.Kind) *http.Transport {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cn != "" {
		certPEM, keyPEM, err := ca.Issue(cn, kind, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
}

func TestAuthorizedRegistryOverTLS(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	tags := &MemTags{} // one tag store, two registries: as two agents on one etcd
	node2Dir := t.TempDir()
	var node1URL string
	node1 := tlsRegistry(t, ca, Options{Dir: t.TempDir(), Authorize: true, Tags: tags})
	node1URL = node1.URL
	nodeTransport := clientAs(t, ca, "node-2", pki.ServerClient)
	node2 := tlsRegistry(t, ca, Options{Dir: node2Dir, Authorize: true, Tags: tags,
		Peers: func() []string { return []string{node1URL} }, PeerClient: &http.Client{Transport: nodeTransport}})
	host1, host2 := strings.TrimPrefix(node1.URL, "https://"), strings.TrimPrefix(node2.URL, "https://")

	ids := map[string]*http.Transport{
		"acme":   clientAs(t, ca, "tenant:acme", pki.ClientOnly),
		"globex": clientAs(t, ca, "tenant:globex", pki.ClientOnly),
		"ops":    clientAs(t, ca, "ops", pki.ClientOnly),
		"admin":  clientAs(t, ca, "admin", pki.ClientOnly),
		"node":   clientAs(t, ca, "node-1", pki.ServerClient),
		"none":   clientAs(t, ca, "", 0),
	}
	pushAs := func(who, host, repoTag string) (string, error) {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		r, err := name.ParseReference(host + "/" + repoTag)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		return d.String(), remote.Write(r, img, remote.WithTransport(ids[who]))
	}
	digestAs := func(who, host, repoTag string) (string, error) {
		r, err := name.ParseReference(host + "/" + repoTag)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Get(r, remote.WithTransport(ids[who]))
		if err != nil {
			return "", err
		}
		return desc.Digest.String(), nil
	}
	raw := func(who, method, url string) (int, http.Header, string) {
		req, _ := http.NewRequest(method, url, nil)
		resp, err := (&http.Client{Transport: ids[who]}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}
	// No certificate: 401 with a challenge, on every route.
	for _, p := range []string{"/v2/", "/v2/_catalog", "/v2/acme/web/manifests/v1"} {
		code, h, body := raw("none", "GET", node1.URL+p)
		if code != 401 || h.Get("WWW-Authenticate") == "" || !strings.Contains(body, "UNAUTHORIZED") {
			t.Fatalf("GET %s without a certificate: %d %q %s", p, code, h.Get("WWW-Authenticate"), body)
		}
	}
	if _, err := pushAs("none", host1, "acme/web:v1"); err == nil {
		t.Fatal("push without a certificate succeeded")
	}

	d1, err := pushAs("acme", host1, "acme/web:v1")
	if err != nil {
		t.Fatalf("acme pushes its own repository: %v", err)
	}
	// Another tenant can neither overwrite, read nor delete it.
	if _, err := pushAs("globex", host1, "acme/web:v1"); !denied(err) {
		t.Fatalf("globex overwriting acme/web:v1: %v", err)
	}
	if _, err := digestAs("globex", host2, "acme/web:v1"); !denied(err) {
		t.Fatalf("globex reading acme/web:v1: %v", err)
	}
	code, _, body := raw("globex", "DELETE", node2.URL+"/v2/acme/web/manifests/v1")
	if code != 403 || !strings.Contains(body, "DENIED") || !strings.Contains(body, "tenant globex may not delete acme/web") {
		t.Fatalf("globex deleting acme's tag: %d %s", code, body)
	}
	// Shared library: admin writes, tenants read, nobody else writes.
	if _, err := pushAs("acme", host1, "library/busybox:1"); !denied(err) {
		t.Fatalf("tenant pushing into library/: %v", err)
	}
	if _, err := pushAs("ops", host1, "library/rcheck:ops"); !denied(err) {
		t.Fatalf("ops pushing: %v", err)
	}
	if _, err := pushAs("acme", host1, "berth/os:9.9.9"); !denied(err) {
		t.Fatalf("tenant pushing an OS payload: %v", err)
	}
	if _, err := pushAs("node", host1, "berth/os:9.9.9"); !denied(err) {
		t.Fatalf("node pushing an OS payload: %v", err)
	}
	lib, err := pushAs("admin", host1, "library/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pushAs("admin", host1, "berth/os:1.0.0"); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"acme", "globex", "ops", "node"} {
		if got, err := digestAs(who, host2, "library/busybox:1"); err != nil || got != lib {
			t.Fatalf("%s reading library/busybox:1 on the other node: %s %v", who, got, err)
		}
	}
	if got, err := digestAs("node", host2, "berth/os:1.0.0"); err != nil || got == "" {
		t.Fatalf("node reading berth/os: %v", err)
	}
	if _, err := digestAs("acme", host2, "berth/os:1.0.0"); !denied(err) {
		t.Fatalf("tenant reading berth/os: %v", err)
	}

	// One truth for tags: a re-push on node 1 is what node 2 answers at once.
	if got, err := digestAs("acme", host2, "acme/web:v1"); err != nil || got != d1 {
		t.Fatalf("node 2 answers acme/web:v1 = %s %v, want %s", got, err, d1)
	}
	d2, err := pushAs("acme", host1, "acme/web:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{host1, host2} {
		if got, err := digestAs("ops", h, "acme/web:v1"); err != nil || got != d2 {
			t.Fatalf("%s answers acme/web:v1 = %s %v after the re-push, want %s", h, got, err, d2)
		}
	}
	// The old digest stays pullable by digest (a job pinned to it runs on).
	if got, err := digestAs("acme", host2, "acme/web@"+d1); err != nil || got != d1 {
		t.Fatalf("old digest: %s %v", got, err)
	}

	// Catalogs agree across nodes and show only what the caller may read.
	if _, err := pushAs("globex", host2, "globex/api:1"); err != nil {
		t.Fatal(err)
	}
	catalog := func(who, base string) []string {
		code, _, body := raw(who, "GET", base+"/v2/_catalog")
		if code != 200 {
			t.Fatalf("catalog as %s: %d %s", who, code, body)
		}
		var c struct{ Repositories []string }
		if err := json.Unmarshal([]byte(body), &c); err != nil {
			t.Fatal(err)
		}
		return c.Repositories
	}
	for who, want := range map[string][]string{
		"acme":   {"acme/web", "library/busybox"},
		"globex": {"globex/api", "library/busybox"},
		"ops":    {"acme/web", "berth/os", "globex/api", "library/busybox"},
		"admin":  {"acme/web", "berth/os", "globex/api", "library/busybox"},
	} {
		c1, c2 := catalog(who, node1.URL), catalog(who, node2.URL)
		if !slices.Equal(c1, want) || !slices.Equal(c2, want) {
			t.Fatalf("catalog as %s: node 1 %v, node 2 %v, want %v", who, c1, c2, want)
		}
	}
	// Pagination keeps to the filtered list.
	code, h, body := raw("ops", "GET", node2.URL+"/v2/_catalog?n=2")
	if code != 200 || !strings.Contains(body, `["acme/web","berth/os"]`) || !strings.Contains(h.Get("Link"), "last=berth/os") {
		t.Fatalf("catalog page: %d %s %q", code, body, h.Get("Link"))
	}
	code, _, body = raw("acme", "GET", node2.URL+"/v2/acme/web/tags/list")
	if code != 200 || !strings.Contains(body, `"tags":["v1"]`) {
		t.Fatalf("tags/list: %d %s", code, body)
	}

	// Delete by tag: only the owner; then every node says unknown.
	code, _, body = raw("ops", "DELETE", node1.URL+"/v2/acme/web/manifests/v1")
	if code != 403 || !strings.Contains(body, "ops is read-only") {
		t.Fatalf("ops deleting: %d %s", code, body)
	}
	if code, _, body = raw("acme", "DELETE", node2.URL+"/v2/acme/web/manifests/v1"); code != 202 {
		t.Fatalf("acme deleting its tag: %d %s", code, body)
	}
	for _, h := range []string{host1, host2} {
		if _, err := digestAs("acme", h, "acme/web:v1"); err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
			t.Fatalf("%s after the tag's delete: %v", h, err)
		}
	}
	// Blobs are per repository: globex cannot read acme's layer through a
	// repository of its own, not even after naming it in a manifest.
	acmeImg, err := remote.Image(ref(t, host2, "acme/web@"+d2), remote.WithTransport(ids["acme"]))
	if err != nil {
		t.Fatal(err)
	}
	acmeLayers, _ := acmeImg.Layers()
	layerDigest, _ := acmeLayers[0].Digest()
	for _, base := range []string{node1.URL, node2.URL} {
		if code, _, body := raw("acme", "GET", base+"/v2/acme/web/blobs/"+layerDigest.String()); code != 200 {
			t.Fatalf("acme reading its layer: %d %s", code, body)
		}
		if code, _, body := raw("globex", "GET", base+"/v2/globex/api/blobs/"+layerDigest.String()); code != 404 || !strings.Contains(body, "BLOB_UNKNOWN") {
			t.Fatalf("globex reading acme's layer through globex/api: %d %s", code, body)
		}
	}
	rawManifest, _ := acmeImg.RawManifest()
	mt, _ := acmeImg.MediaType()
	req, _ := http.NewRequest("PUT", node1.URL+"/v2/globex/stolen/manifests/x", strings.NewReader(string(rawManifest)))
	req.Header.Set("Content-Type", string(mt))
	resp, err := (&http.Client{Transport: ids["globex"]}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("manifest naming acme's blobs: %s (the test wants it stored, to show the blobs stay out of reach)", resp.Status)
	}
	if err := pullAll(ids["globex"], host1, "globex/stolen:x"); err == nil || !strings.Contains(err.Error(), "BLOB_UNKNOWN") && !strings.Contains(err.Error(), "404") {
		t.Fatalf("globex pulling a manifest naming acme's blobs: %v", err)
	}
	// A blob delete only unlinks it from that repository.
	if code, _, body := raw("globex", "DELETE", node1.URL+"/v2/globex/api/blobs/"+layerDigest.String()); code != 404 {
		t.Fatalf("globex deleting a blob it does not hold: %d %s", code, body)
	}
	if code, _, body := raw("acme", "GET", node1.URL+"/v2/acme/web/blobs/"+layerDigest.String()); code != 200 {
		t.Fatalf("acme's layer after globex's delete: %d %s", code, body)
	}

	// A tenant cannot mount another tenant's blob into its own repository.
	code, _, body = raw("globex", "POST", node1.URL+"/v2/globex/x/blobs/uploads/?mount="+d1+"&from=acme/web")
	if code != 403 || !strings.Contains(body, "may not pull acme/web") {
		t.Fatalf("globex mounting from acme: %d %s", code, body)
	}
}

// denied tells whether a client error is the registry's 403 (a HEAD
// answer has no body, so the code may be missing).
func denied(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "DENIED") || strings.Contains(err.Error(), "403 Forbidden"))
}

// pullAll pulls repoRef completely (manifest, config, layers).
func pullAll(tr http.RoundTripper, host, repoRef string) error {
	r, err := name.ParseReference(host + "/" + repoRef)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithTransport(tr))
	if err != nil {
		return err
	}
	if _, err := img.ConfigFile(); err != nil {
		return err
	}
	return readAll(img)
}
