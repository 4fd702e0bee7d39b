package main

// Issue 14 on the containers cluster: registry authorization per identity,
// tags as one truth in etcd, jobs pinned to digests, invalid stored jobs
// listed, and pulls from an outside registry with a tenant's credentials.
// It runs inside TestContainersAcrossCluster, on its three agents.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/images/imagetest"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/agent/registry"
	brt "github.com/berth-os/berth/agent/runtime"
)

// regClient is one identity's way to the cluster registry, from the
// cluster's network namespace.
type regClient struct {
	who string
	tr  *http.Transport
}

func (e *containerEnv) regClient(who, certFile, keyFile string) regClient {
	e.t.Helper()
	ca, err := os.ReadFile(filepath.Join(e.certDir, "ca.crt"))
	if err != nil {
		e.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			e.t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return regClient{who: who, tr: &http.Transport{TLSClientConfig: cfg, DialContext: netnsDialer(e.ns)}}
}

func hostOf(n *testNode) string { return strings.TrimPrefix(n.api, "https://") }

func (c regClient) ref(t *testing.T, n *testNode, repoRef string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(hostOf(n) + "/" + repoRef)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (c regClient) push(t *testing.T, n *testNode, repoTag string, img v1.Image) error {
	return remote.Write(c.ref(t, n, repoTag), img, remote.WithTransport(c.tr))
}

func (c regClient) digest(t *testing.T, n *testNode, repoRef string) (string, error) {
	desc, err := remote.Head(c.ref(t, n, repoRef), remote.WithTransport(c.tr))
	if err != nil {
		return "", err
	}
	return desc.Digest.String(), nil
}

// pull fetches the whole image (manifest, config, every layer, verified).
func (c regClient) pull(t *testing.T, n *testNode, repoRef string) error {
	img, err := remote.Image(c.ref(t, n, repoRef), remote.WithTransport(c.tr))
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (c regClient) raw(t *testing.T, method, url string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: c.tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s as %s: %v", method, url, c.who, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func (c regClient) catalog(t *testing.T, n *testNode) []string {
	t.Helper()
	code, _, body := c.raw(t, "GET", n.api+"/v2/_catalog")
	if code != http.StatusOK {
		t.Fatalf("catalog of %s as %s: %d %s", n.name, c.who, code, body)
	}
	var cat struct{ Repositories []string }
	if err := json.Unmarshal([]byte(body), &cat); err != nil {
		t.Fatal(err)
	}
	return cat.Repositories
}

// isDenied tells a 403 (DENIED, or a HEAD's bare 403) apart from other failures.
func isDenied(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "DENIED") || strings.Contains(err.Error(), "403 Forbidden"))
}

// runningDigests reads, from each node's container state (not etcd), the
// image digest every running container of a job was started from.
func (e *containerEnv) runningDigests(tenant, job string) map[string]string {
	out := map[string]string{}
	for _, n := range e.c.nodes {
		rt, err := e.runtimeOf(n)
		if err != nil {
			e.t.Fatal(err)
		}
		ctx, cancel := ctxT(5 * time.Second)
		states, _ := rt.List(ctx)
		cancel()
		for _, st := range states {
			if st.Status == brt.StatusRunning && st.Labels["berth.tenant"] == tenant && st.Labels["berth.job"] == job {
				out[n.name+"/"+st.ID] = st.Labels["berth.image-digest"]
			}
		}
	}
	return out
}

// allOn checks that want replicas run, each on the digest want.
func allOn(got map[string]string, replicas int, digest string) error {
	if len(got) != replicas {
		return fmt.Errorf("%d containers running, want %d: %v", len(got), replicas, got)
	}
	for c, d := range got {
		if d != digest {
			return fmt.Errorf("container %s runs %s, want %s", c, d, digest)
		}
	}
	return nil
}

func (e *containerEnv) ctlStdin(stdin, identity string, args ...string) (string, error) {
	n1 := e.c.nodes["node-1"]
	full := append([]string{"netns", "exec", e.ns, e.berthct,
		"--endpoints", n1.client, "--cacert", filepath.Join(e.certDir, "ca.crt"),
		"--cert", filepath.Join(e.certDir, "tenant-"+identity+".crt"), "--key", filepath.Join(e.certDir, "tenant-"+identity+".key"),
		"--timeout", "5s"}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// registryScenario needs the three agents of TestContainersAcrossCluster
// up, tenants acme and globex, and acme's busybox:test pushed.
func (e *containerEnv) registryScenario(t *testing.T) {
	c := e.c
	n1, n2, n3 := c.nodes["node-1"], c.nodes["node-2"], c.nodes["node-3"]
	nodes := []*testNode{n1, n2, n3}
	step := stepTimer(t)
	done := step("registry authorization matrix")
	e.issue(n1, "--ops")
	cert := func(id string) (string, string) {
		return filepath.Join(e.certDir, id+".crt"), filepath.Join(e.certDir, id+".key")
	}
	id := map[string]regClient{}
	for _, who := range []string{"admin", "ops", "tenant-acme", "tenant-globex"} {
		crt, key := cert(who)
		id[strings.TrimPrefix(who, "tenant-")] = e.regClient(who, crt, key)
	}
	id["node"] = e.regClient("node-2", filepath.Join(n2.dir, "pki", "node.crt"), filepath.Join(n2.dir, "pki", "node.key"))
	id["none"] = e.regClient("none", "", "")
	rnd := func() v1.Image {
		img, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}

	// Push: each identity into each kind of repository.
	type pushCase struct {
		who, repoTag string
		allowed      bool
	}
	for _, pc := range []pushCase{
		{"acme", "acme/app:v1", true},
		{"globex", "globex/app:v1", true},
		{"admin", "library/base:1", true},
		{"admin", "berth/os:0.0.1-regtest", true}, // an OS payload push: admin only
		{"globex", "acme/app:v1", false},          // tag overwrite of another tenant
		{"globex", "acme/new:v1", false},
		{"acme", "library/base:1", false},
		{"acme", "berth/os:9.9.9", false},
		{"ops", "library/rcheck:ops", false},
		{"ops", "berth/os:9.9.9", false},
		{"node", "berth/os:9.9.9", false},
		{"node", "acme/app:v1", false},
	} {
		err := id[pc.who].push(t, nodes[len(pc.repoTag)%3], pc.repoTag, rnd())
		if pc.allowed && err != nil {
			t.Fatalf("%s pushing %s: %v", pc.who, pc.repoTag, err)
		}
		if !pc.allowed && !isDenied(err) {
			t.Fatalf("%s pushing %s: want 403 DENIED, got %v", pc.who, pc.repoTag, err)
		}
	}
	if err := id["none"].push(t, n1, "acme/app:v1", rnd()); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("push without a certificate: want 401, got %v", err)
	}
	code, h, body := id["none"].raw(t, "GET", n2.api+"/v2/acme/app/manifests/v1")
	if code != 401 || !strings.Contains(h.Get("WWW-Authenticate"), "realm=") || !strings.Contains(body, "UNAUTHORIZED") {
		t.Fatalf("pull without a certificate: %d %q %s", code, h.Get("WWW-Authenticate"), body)
	}
	code, _, body = id["globex"].raw(t, "GET", n3.api+"/v2/acme/app/manifests/v1")
	if code != 403 || !strings.Contains(body, `"DENIED"`) || !strings.Contains(body, "tenant globex may not pull acme/app") {
		t.Fatalf("globex pulling acme/app: %d %s", code, body)
	}

	// Pull: on another node than the push, so peers are involved.
	for _, pc := range []pushCase{
		{"acme", "acme/app:v1", true}, {"ops", "acme/app:v1", true}, {"node", "acme/app:v1", true}, {"admin", "acme/app:v1", true},
		{"globex", "acme/app:v1", false},
		{"acme", "library/base:1", true}, {"globex", "library/base:1", true}, {"ops", "library/base:1", true},
		{"node", "berth/os:0.0.1-regtest", true}, {"ops", "berth/os:0.0.1-regtest", true},
		{"acme", "berth/os:0.0.1-regtest", false}, {"globex", "globex/app:v1", true}, {"acme", "globex/app:v1", false},
	} {
		err := id[pc.who].pull(t, nodes[(len(pc.repoTag)+1)%3], pc.repoTag)
		if pc.allowed && err != nil {
			t.Fatalf("%s pulling %s: %v", pc.who, pc.repoTag, err)
		}
		if !pc.allowed && !isDenied(err) {
			t.Fatalf("%s pulling %s: want 403 DENIED, got %v", pc.who, pc.repoTag, err)
		}
	}

	// Catalogs: only what the caller may read, the same on every node.
	wantCatalog := map[string][]string{
		"acme":   {"acme/app", "acme/busybox", "library/base"},
		"globex": {"globex/app", "library/base"},
		"ops":    {"acme/app", "acme/busybox", "berth/os", "globex/app", "library/base"},
		"admin":  {"acme/app", "acme/busybox", "berth/os", "globex/app", "library/base"},
	}
	for who, want := range wantCatalog {
		for _, n := range nodes {
			if got := id[who].catalog(t, n); !slices.Equal(got, want) {
				t.Fatalf("catalog of %s as %s: %v, want %v", n.name, who, got, want)
			}
		}
	}

	// Delete: only the owner (or admin).
	for _, who := range []string{"globex", "ops", "node"} {
		if code, _, body := id[who].raw(t, "DELETE", n1.api+"/v2/acme/app/manifests/v1"); code != 403 || !strings.Contains(body, "DENIED") {
			t.Fatalf("%s deleting acme/app:v1: %d %s", who, code, body)
		}
	}
	if code, _, body := id["acme"].raw(t, "DELETE", n2.api+"/v2/acme/app/manifests/v1"); code != 202 {
		t.Fatalf("acme deleting acme/app:v1: %d %s", code, body)
	}
	for _, n := range nodes {
		if _, err := id["acme"].digest(t, n, "acme/app:v1"); err == nil || !strings.Contains(err.Error(), "404") && !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
			t.Fatalf("%s still answers a deleted tag: %v", n.name, err)
		}
	}
	done()

	done = step("pinned digests, re-push, no hijack")
	d1, err := id["acme"].digest(t, n1, "acme/busybox:test")
	if err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin.yaml")
	writeFile(t, pinFile, "name: pin\nimage: berth.local/busybox:test\ncommand: [sleep, '100000']\nreplicas: 3\nstop_timeout_seconds: 1\nresources: {cpu: 20m, memory: 16Mi}\n")
	if out := e.mustCtl("acme", "run", "-f", pinFile); !strings.Contains(out, "pinned to "+d1) {
		t.Fatalf("run said %q, want the job pinned to %s", out, d1)
	}
	eventually(t, 60*time.Second, "pin: 3 replicas on "+d1, func() error { return allOn(e.runningDigests("acme", "pin"), 3, d1) })
	if out := e.mustCtl("acme", "ps", "pin"); strings.Count(out, d1) != 3 {
		t.Fatalf("ps does not show the digest of each replica:\n%s", out)
	}

	// globex tries everything a tenant can do to the name acme's job uses.
	evil := imagetest.BusyboxImage(t, map[string]string{"/etc/motd": "globex was here\n"})
	evilTar := filepath.Join(t.TempDir(), "evil.tar")
	imagetest.WriteTarball(t, evil, evilTar, "busybox:test")
	if out := e.mustCtl("globex", "image", "push", evilTar, "busybox:test"); !strings.Contains(out, "as globex/busybox:test") {
		t.Fatalf("globex's push of busybox:test went to %q, want its own namespace", out)
	}
	for _, repoTag := range []string{"acme/busybox:test", "library/busybox:test", "acme/busybox:evil"} {
		for _, n := range nodes {
			if err := id["globex"].push(t, n, repoTag, evil); !isDenied(err) {
				t.Fatalf("globex pushing %s on %s: %v", repoTag, n.name, err)
			}
		}
	}
	evilDigest, _ := evil.Digest()
	for _, path := range []string{"/v2/acme/busybox/manifests/test", "/v2/acme/busybox/manifests/" + d1} {
		if code, _, body := id["globex"].raw(t, "DELETE", n3.api+path); code != 403 {
			t.Fatalf("globex DELETE %s: %d %s", path, code, body)
		}
	}
	// A job of globex naming berth.local/acme/busybox is globex's own acme/ subpath.
	if ci, _, _ := jobs.ParseClusterImage("globex", "berth.local/acme/busybox:test"); ci.Repository != "globex/acme/busybox" {
		t.Fatalf("globex's berth.local/acme/busybox maps to %s", ci.Repository)
	}
	for _, n := range nodes {
		if got, err := id["acme"].digest(t, n, "acme/busybox:test"); err != nil || got != d1 {
			t.Fatalf("%s answers acme/busybox:test = %s %v after globex's attempts, want %s", n.name, got, err, d1)
		}
	}

	// acme re-pushes its tag: every node answers the new digest at once.
	v2 := imagetest.BusyboxImage(t, map[string]string{"/etc/motd": "berth test image v2\n"})
	v2Tar := filepath.Join(t.TempDir(), "v2.tar")
	imagetest.WriteTarball(t, v2, v2Tar, "busybox:test")
	e.mustCtl("acme", "image", "push", v2Tar, "busybox:test")
	dv2, _ := v2.Digest()
	d2 := dv2.String()
	if d2 == d1 || d2 == evilDigest.String() {
		t.Fatal("test images are not distinct")
	}
	for _, n := range nodes {
		if got, err := id["acme"].digest(t, n, "acme/busybox:test"); err != nil || got != d2 {
			t.Fatalf("%s answers acme/busybox:test = %s %v right after the re-push, want %s", n.name, got, err, d2)
		}
	}
	// Running replicas keep the pinned digest, also across stop + start.
	time.Sleep(2 * time.Second) // reconcile rounds that could wrongly act on the new tag
	if err := allOn(e.runningDigests("acme", "pin"), 3, d1); err != nil {
		t.Fatalf("after the re-push: %v", err)
	}
	e.mustCtl("acme", "stop", "pin")
	eventually(t, 30*time.Second, "pin stopped", func() error {
		if n := len(e.runningDigests("acme", "pin")); n != 0 {
			return fmt.Errorf("%d still running", n)
		}
		return nil
	})
	e.mustCtl("acme", "start", "pin")
	eventually(t, 60*time.Second, "pin restarted on "+d1, func() error { return allOn(e.runningDigests("acme", "pin"), 3, d1) })
	// Submitting again re-resolves the tag: every replica moves to v2.
	if out := e.mustCtl("acme", "run", "-f", pinFile); !strings.Contains(out, "pinned to "+d2) {
		t.Fatalf("resubmission said %q, want %s", out, d2)
	}
	eventually(t, 60*time.Second, "pin moved to "+d2, func() error { return allOn(e.runningDigests("acme", "pin"), 3, d2) })
	eventually(t, 20*time.Second, "ps shows "+d2, func() error {
		list, err := e.replicas("acme", "acme", "pin")
		if err != nil {
			return err
		}
		for _, r := range list {
			if r.ImageDigest != d2 || r.State != jobs.StateRunning {
				return fmt.Errorf("replica %d: %s %s", r.Replica, r.State, r.ImageDigest)
			}
		}
		return nil
	})
	e.mustCtl("acme", "rm", "pin")
	done()

	done = step("library/ image run by every tenant")
	e.libraryScenario(t, id, nodes, v2Tar, d2, evilTar, evil)
	done()

	done = step("invalid stored job listed")
	admin := nodeClient(t, n1, []string{n1.client})
	ctx, cancel := ctxT(5 * time.Second)
	_, err = admin.Put(ctx, jobs.JobKey("acme", "broken"), `{"schema":"berth.job.v1","name":"broken","tenant":"acme","image":"","replicas":2}`)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if out := e.mustCtl("acme", "jobs"); !strings.Contains(out, "broken") || !strings.Contains(out, "invalid:") || !strings.Contains(out, "image") {
		t.Fatalf("jobs does not show the invalid job with its error:\n%s", out)
	}
	e.mustCtl("acme", "rm", "broken")
	done()

	done = step("outside registry with credentials")
	e.privateRegistryScenario(t, n1)
	done()
}

// privateRegistryScenario runs a registry with basic auth on loopback in
// the cluster's namespace (TLS with a certificate of the cluster CA): acme
// pulls from it with its stored credentials, globex cannot.
func (e *containerEnv) privateRegistryScenario(t *testing.T, n1 *testNode) {
	const user, password = "acme-robot", "s3cret-Pa55word-4-test"
	ca, err := pki.LoadCA(filepath.Join(n1.dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("private-registry", pki.ServerClient, []net.IP{net.ParseIP("127.0.0.60")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", e.ns, "addr", "add", "127.0.0.60/8", "dev", "lo").CombinedOutput(); err != nil && !strings.Contains(string(out), "exists") {
		t.Fatalf("address for the private registry: %v %s", err, out)
	}
	ln, err := netnsListen(e.ns, "127.0.0.60:0")
	if err != nil {
		t.Fatal(err)
	}
	inner := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="private"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.ServeTLS(ln, "", "") //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	host := ln.Addr().String()

	img := imagetest.BusyboxImage(t, map[string]string{"/etc/motd": "private image\n"})
	d, _ := img.Digest()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: netnsDialer(e.ns)}
	privRef, err := name.ParseReference(host + "/private/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(privRef, img, remote.WithTransport(tr), remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
		t.Fatalf("push to the private registry: %v", err)
	}

	jobFile := func(tenant, image string) string {
		p := filepath.Join(t.TempDir(), tenant+".yaml")
		writeFile(t, p, "name: priv\nimage: "+image+"\ncommand: [sleep, '100000']\nstop_timeout_seconds: 1\nresources: {cpu: 20m, memory: 16Mi}\n")
		return p
	}
	// Without credentials the tag cannot even be resolved.
	if out, err := e.ctl("acme", "run", "-f", jobFile("acme", privRef.String())); err == nil || !strings.Contains(out, "refused access") {
		t.Fatalf("run before login: err=%v out=%q", err, out)
	}
	if out, err := e.ctlStdin(password+"\n", "acme", "registry", "login", host, "--username", user); err != nil || strings.Contains(out, password) {
		t.Fatalf("registry login: %v %q", err, out)
	}
	if out := e.mustCtl("acme", "run", "-f", jobFile("acme", privRef.String())); !strings.Contains(out, "pinned to "+d.String()) {
		t.Fatalf("run after login said %q", out)
	}
	eventually(t, 60*time.Second, "acme's private image running", func() error { return allOn(e.runningDigests("acme", "priv"), 1, d.String()) })

	// globex names the same bytes by digest (nothing to resolve at submission):
	// its nodes pull with globex's credentials, which it has none of.
	e.mustCtl("globex", "run", "-f", jobFile("globex", host+"/private/busybox@"+d.String()))
	eventually(t, 30*time.Second, "globex's pull refused", func() error {
		list, err := e.replicas("globex", "globex", "priv")
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].State != jobs.StateFailed || !strings.Contains(list[0].Reason, "refused access") {
			return fmt.Errorf("globex's replicas: %+v", list)
		}
		return nil
	})
	if got := e.runningDigests("globex", "priv"); len(got) != 0 {
		t.Fatalf("globex runs the private image: %v", got)
	}
	// ops cannot read the credentials; globex cannot either.
	for _, who := range []string{"ops", "globex"} {
		crt := filepath.Join(e.certDir, map[string]string{"ops": "ops", "globex": "tenant-globex"}[who])
		cli := client(t, []string{n1.client}, crt+".crt", crt+".key", filepath.Join(e.certDir, "ca.crt"), grpcNetns(e.ns))
		ctx, cancel := ctxT(5 * time.Second)
		_, err := cli.Get(ctx, jobs.RegistryAuthKey("acme", host))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("%s reading acme's registry credentials: %v", who, err)
		}
	}
	// The secret appears in no listing and no agent log.
	for _, args := range [][]string{{"ps"}, {"ps", "-o", "json"}, {"jobs", "-o", "json"}} {
		if out := e.mustCtl("acme", args...); strings.Contains(out, password) {
			t.Fatalf("berthctl %v shows the password", args)
		}
	}
	if out := e.mustCtl("ops", "nodes", "-o", "json"); strings.Contains(out, password) {
		t.Fatal("node documents contain the password")
	}
	for _, n := range e.c.nodes {
		data, _ := os.ReadFile(n.logPath)
		if strings.Contains(string(data), password) {
			t.Fatalf("%s's log contains the password", n.name)
		}
	}
	e.mustCtl("acme", "rm", "priv")
	e.mustCtl("globex", "rm", "priv")
}

// netnsListen listens on addr inside network namespace ns.
func netnsListen(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in ns
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		res <- result{ln, err}
	}()
	r := <-res
	return r.ln, r.err
}

// grpcNetns makes an etcd client dial from network namespace ns.
func grpcNetns(ns string) grpc.DialOption {
	dial := netnsDialer(ns)
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return dial(ctx, "tcp", addr)
	})
}

// libraryScenario: admin publishes busybox (the v2 image, whose layers every
// node already holds) as library/busybox:lib; acme and globex each run a job
// naming berth.local/library/busybox:lib, pinned to its digest, one replica
// per node; neither tenant can push to or delete from library/.
func (e *containerEnv) libraryScenario(t *testing.T, id map[string]regClient, nodes []*testNode, tar, digest, evilTar string, evil v1.Image) {
	if out := e.mustCtl("admin", "image", "push", tar, "library/busybox:lib"); !strings.Contains(out, "as library/busybox:lib") {
		t.Fatalf("admin's push of library/busybox:lib went to %q", out)
	}
	libFile := libraryJobFile(t)
	tenants := []string{"acme", "globex"}
	for _, tenant := range tenants {
		if out := e.mustCtl(tenant, "run", "-f", libFile); !strings.Contains(out, "pinned to "+digest) {
			t.Fatalf("%s's run of a library/ image said %q, want it pinned to %s", tenant, out, digest)
		}
	}
	for _, tenant := range tenants {
		eventually(t, 60*time.Second, tenant+"/lib: 3 replicas on "+digest, func() error { return allOn(e.runningDigests(tenant, "lib"), 3, digest) })
	}

	// Read-only for tenants, through berthctl and straight to the registry.
	for _, tenant := range tenants {
		if out, err := e.ctl(tenant, "image", "push", evilTar, "library/busybox:lib"); err == nil || !strings.Contains(out, "DENIED") {
			t.Fatalf("%s's berthctl push into library/: %v\n%s", tenant, err, out)
		}
		for _, n := range nodes {
			if err := id[tenant].push(t, n, "library/busybox:lib", evil); !isDenied(err) {
				t.Fatalf("%s pushing library/busybox:lib on %s: want 403 DENIED, got %v", tenant, n.name, err)
			}
		}
		for _, path := range []string{"/v2/library/busybox/manifests/lib", "/v2/library/busybox/manifests/" + digest} {
			if code, _, body := id[tenant].raw(t, "DELETE", nodes[1].api+path); code != 403 || !strings.Contains(body, "DENIED") {
				t.Fatalf("%s DELETE %s: %d %s", tenant, path, code, body)
			}
		}
	}
	for _, n := range nodes {
		if got, err := id["globex"].digest(t, n, "library/busybox:lib"); err != nil || got != digest {
			t.Fatalf("%s answers library/busybox:lib = %s %v after the tenants' attempts, want %s", n.name, got, err, digest)
		}
	}
	for _, tenant := range tenants {
		e.mustCtl(tenant, "rm", "lib")
	}
}

// libraryJobFile is a job of 3 replicas of library/busybox:lib.
func libraryJobFile(t *testing.T) string {
	f := filepath.Join(t.TempDir(), "lib.yaml")
	writeFile(t, f, "name: lib\nimage: berth.local/library/busybox:lib\ncommand: [sleep, '100000']\nreplicas: 3\nstop_timeout_seconds: 1\nresources: {cpu: 20m, memory: 16Mi}\n")
	return f
}

// makeOldTenant turns tenant's etcd role into what berthctl tenant add
// made before the registry work (no tag or credential ranges), as in a
// cluster upgraded since: etcd then refuses its berthctl run of a
// library/ image at the resolve.
func (e *containerEnv) makeOldTenant(t *testing.T, n *testNode, tenant string) {
	cli := nodeClient(t, n, []string{n.client})
	ctx, cancel := ctxT(10 * time.Second)
	defer cancel()
	for _, p := range []string{registry.TagNamespacePrefix(tenant), registry.TagNamespacePrefix(jobs.SharedNamespace), jobs.RegistryAuthPrefix(tenant)} {
		if _, err := cli.RoleRevokePermission(ctx, jobs.TenantUser(tenant), p, clientv3.GetPrefixRangeEnd(p)); err != nil {
			t.Fatalf("revoke %s from %s: %v", p, tenant, err)
		}
	}
	if out, err := e.ctl(tenant, "run", "-f", libraryJobFile(t)); err == nil || !strings.Contains(out, "resolve image") || !strings.Contains(out, "lacks permission") {
		t.Fatalf("%s with an old role running a library/ image: %v %q, want etcd to refuse the resolve", tenant, err, out)
	}
}

// waitTenantRole waits until tenant's role holds every current grant
// again: what an agent does at start (ensureTenantRoles).
func (e *containerEnv) waitTenantRole(t *testing.T, n *testNode, tenant string) {
	cli := nodeClient(t, n, []string{n.client})
	eventually(t, 15*time.Second, "role of "+tenant+" complete", func() error {
		ctx, cancel := ctxT(5 * time.Second)
		defer cancel()
		got, err := cli.RoleGet(ctx, jobs.TenantUser(tenant))
		if err != nil {
			return err
		}
		if m := ctl.MissingTenantGrants(tenant, got.Perm); len(m) > 0 {
			return fmt.Errorf("missing %+v", m)
		}
		return nil
	})
}
