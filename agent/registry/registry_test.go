package registry

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// serve runs a registry on loopback over dir and returns its base URL and host.
func serve(t *testing.T, dir string, peers func() []string) (*httptest.Server, string) {
	t.Helper()
	h, err := New(Options{Dir: dir, Peers: peers})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, strings.TrimPrefix(srv.URL, "http://")
}

func ref(t *testing.T, host, repoTag string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func push(t *testing.T, host, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(2048, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, host, repoTag), img); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	return img
}

// pullAndCheck pulls repoTag, compares its digest with want and reads every
// layer through ggcr's verifying reader.
func pullAndCheck(t *testing.T, host, repoTag string, want v1.Image) {
	t.Helper()
	got, err := remote.Image(ref(t, host, repoTag))
	if err != nil {
		t.Fatalf("pull %s from %s: %v", repoTag, host, err)
	}
	gd, _ := got.Digest()
	wd, _ := want.Digest()
	if gd != wd {
		t.Fatalf("pulled digest %s, pushed %s", gd, wd)
	}
	layers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 3 {
		t.Fatalf("got %d layers, want 3", len(layers))
	}
	for _, l := range layers {
		if err := readLayer(l); err != nil {
			t.Fatalf("layer of %s: %v", repoTag, err)
		}
	}
	if _, err := got.ConfigFile(); err != nil {
		t.Fatalf("config of %s: %v", repoTag, err)
	}
}

func readLayer(l v1.Layer) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc) // ggcr checks the digest at EOF
	return err
}

func TestPushPullAndRestart(t *testing.T) {
	dir := t.TempDir()
	srv, host := serve(t, dir, nil)
	img := push(t, host, "team/app:v1")
	pullAndCheck(t, host, "team/app:v1", img)
	d, _ := img.Digest()
	pullAndCheck(t, host, "team/app@"+d.String(), img)

	idx, err := random.Index(512, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref(t, host, "team/multi:latest"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	srv.Close()

	// Restart: a new handler over the same directory still has both.
	_, host2 := serve(t, dir, nil)
	pullAndCheck(t, host2, "team/app:v1", img)
	gotIdx, err := remote.Index(ref(t, host2, "team/multi:latest"))
	if err != nil {
		t.Fatalf("pull index after restart: %v", err)
	}
	id, _ := idx.Digest()
	gd, _ := gotIdx.Digest()
	if id != gd {
		t.Fatalf("index digest %s after restart, pushed %s", gd, id)
	}
	im, _ := gotIdx.IndexManifest()
	for _, desc := range im.Manifests {
		if _, err := gotIdx.Image(desc.Digest); err != nil {
			t.Fatalf("index child %s after restart: %v", desc.Digest, err)
		}
	}
}

// countingProxy forwards to a registry handler and counts requests, and
// whether they carried PeerHeader.
type counting struct {
	next          http.Handler
	total, peered atomic.Int64
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.total.Add(1)
	if r.Header.Get(PeerHeader) != "" {
		c.peered.Add(1)
	}
	c.next.ServeHTTP(w, r)
}

func TestPeerFallback(t *testing.T) {
	aDir, bDir := t.TempDir(), t.TempDir()
	aHandler, err := New(Options{Dir: aDir})
	if err != nil {
		t.Fatal(err)
	}
	a := &counting{next: aHandler}
	aSrv := httptest.NewServer(a)
	defer aSrv.Close()
	aHost := strings.TrimPrefix(aSrv.URL, "http://")
	_, bHost := serve(t, bDir, func() []string { return []string{aSrv.URL} })

	img := push(t, aHost, "lib/tool:1.0")
	pushed := a.total.Load()
	pullAndCheck(t, bHost, "lib/tool:1.0", img)
	if a.peered.Load() == 0 || a.total.Load()-pushed != a.peered.Load() {
		t.Fatalf("A saw %d requests after the push, %d marked as peer requests", a.total.Load()-pushed, a.peered.Load())
	}

	// A goes away: B serves from its own copy, also after a restart of B.
	aSrv.Close()
	pullAndCheck(t, bHost, "lib/tool:1.0", img)
	_, bHost2 := serve(t, bDir, func() []string { return []string{aSrv.URL} })
	pullAndCheck(t, bHost2, "lib/tool:1.0", img)
}

func TestPeersDoNotLoop(t *testing.T) {
	var aURL, bURL string
	aH, err := New(Options{Dir: t.TempDir(), Peers: func() []string { return []string{bURL} }})
	if err != nil {
		t.Fatal(err)
	}
	bH, err := New(Options{Dir: t.TempDir(), Peers: func() []string { return []string{aURL} }})
	if err != nil {
		t.Fatal(err)
	}
	a, b := &counting{next: aH}, &counting{next: bH}
	aSrv, bSrv := httptest.NewServer(a), httptest.NewServer(b)
	defer aSrv.Close()
	defer bSrv.Close()
	aURL, bURL = aSrv.URL, bSrv.URL

	resp, err := http.Get(bURL + "/v2/ghost/image/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
	// B asked A once; A, seeing the peer mark, did not ask B back.
	if a.total.Load() != 1 || a.peered.Load() != 1 || b.total.Load() != 1 {
		t.Fatalf("requests: A %d (peer %d), B %d; want A 1 (peer 1), B 1", a.total.Load(), a.peered.Load(), b.total.Load())
	}
}

// corrupting sits in front of a good registry and damages blob bodies or
// manifest bodies (keeping the original digest header).
type corrupting struct {
	next  http.Handler
	blobs bool
}

func (c *corrupting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	c.next.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	isBlob := strings.Contains(r.URL.Path, "/blobs/")
	if rec.Code == http.StatusOK && len(body) > 0 && isBlob == c.blobs {
		body = bytes.Clone(body)
		body[len(body)/2] ^= 0xff
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(body)
}

func TestCorruptPeerAnswerRefused(t *testing.T) {
	good, err := New(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	goodSrv := httptest.NewServer(good)
	defer goodSrv.Close()
	img := push(t, strings.TrimPrefix(goodSrv.URL, "http://"), "x/y:z")
	layers, _ := img.Layers()
	layerDigest, _ := layers[0].Digest()

	for _, blobs := range []bool{true, false} {
		bad := httptest.NewServer(&corrupting{next: good, blobs: blobs})
		defer bad.Close()
		bDir := t.TempDir()
		_, bHost := serve(t, bDir, func() []string { return []string{bad.URL} })

		if blobs {
			resp, err := http.Get("http://" + bHost + "/v2/x/y/blobs/" + layerDigest.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("corrupt blob: status %d, want 404", resp.StatusCode)
			}
			if _, err := os.Stat(filepath.Join(bDir, "blobs", "sha256", layerDigest.Hex)); !os.IsNotExist(err) {
				t.Fatalf("corrupt blob was stored: %v", err)
			}
			if err := readLayerFrom(bHost, "x/y", layerDigest); err == nil {
				t.Fatal("pulling a corrupt layer through B worked")
			}
		} else {
			if _, err := remote.Image(ref(t, bHost, "x/y:z")); err == nil {
				t.Fatal("B served a manifest whose bytes do not match the peer's digest")
			}
			if recs, _, _ := (&manifestStore{dir: filepath.Join(bDir, "manifests")}).load(); len(recs) != 0 {
				t.Fatalf("corrupt manifest persisted: %+v", recs)
			}
		}
	}
}

func readLayerFrom(host, repo string, d v1.Hash) error {
	dg, err := name.NewDigest(host + "/" + repo + "@" + d.String())
	if err != nil {
		return err
	}
	l, err := remote.Layer(dg)
	if err != nil {
		return err
	}
	return readLayer(l)
}

type regErrors struct {
	Errors []struct{ Code, Message string } `json:"errors"`
}

func request(t *testing.T, method, url string, body []byte, header map[string]string) (int, regErrors) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e regErrors
	data, _ := io.ReadAll(resp.Body)
	json.Unmarshal(data, &e)
	return resp.StatusCode, e
}

func TestErrors(t *testing.T) {
	srv, host := serve(t, t.TempDir(), func() []string { return nil })
	push(t, host, "known/repo:v1")
	zero := "sha256:" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		method, path string
		body         []byte
		wantStatus   int
		wantCode     string
	}{
		{"GET", "/v2/unknown/image/manifests/latest", nil, 404, "NAME_UNKNOWN"},
		{"GET", "/v2/known/repo/manifests/nope", nil, 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/known/repo/blobs/" + zero, nil, 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/Bad_Name/manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/known/repo/blobs/latest", nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/known/repo/manifests/bad:tag", nil, 400, "MANIFEST_INVALID"},
		{"PUT", "/v2/known/repo/manifests/" + zero, []byte(`{"schemaVersion":2}`), 400, "DIGEST_INVALID"},
	} {
		status, e := request(t, tc.method, srv.URL+tc.path, tc.body, map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
		if status != tc.wantStatus || len(e.Errors) != 1 || e.Errors[0].Code != tc.wantCode {
			t.Errorf("%s %s: status %d errors %+v, want %d %s", tc.method, tc.path, status, e.Errors, tc.wantStatus, tc.wantCode)
		}
	}
	// Pulling an unknown image through ggcr's client reports the 404.
	_, err := remote.Image(ref(t, host, "unknown/image:latest"))
	if err == nil || !strings.Contains(err.Error(), "NAME_UNKNOWN") {
		t.Fatalf("pull of unknown image: %v", err)
	}
}

func TestConcurrentPeerPullsFetchOnce(t *testing.T) {
	aH, err := New(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a := &counting{next: aH}
	aSrv := httptest.NewServer(a)
	defer aSrv.Close()
	img := push(t, strings.TrimPrefix(aSrv.URL, "http://"), "c/img:1")
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	_, bHost := serve(t, t.TempDir(), func() []string { return []string{aSrv.URL} })

	before := a.peered.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- readLayerFrom(bHost, "c/img", d)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent pull: %v", err)
		}
	}
	if n := a.peered.Load() - before; n != 1 {
		t.Fatalf("A served the blob %d times to 8 concurrent pulls through B, want 1", n)
	}
}
