package images_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/internal/mountinfo"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: unpacking keeps owners and devices, mounting needs CAP_SYS_ADMIN")
	}
}

func openStore(t *testing.T) *images.Store {
	t.Helper()
	requireRoot(t)
	s, err := images.Open(t.TempDir(), images.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// proxy sits in front of a registry, counts blob GETs by digest and lets a
// test rewrite requests and responses.
type proxy struct {
	host string

	mu        sync.Mutex
	blobGets  map[string]int
	rewrite   func(r *http.Request)          // before forwarding
	tamper    func(path string, body []byte) // may change body in place
	delayBlob time.Duration
}

func newProxy(t *testing.T, registryHost string) *proxy {
	t.Helper()
	target, err := url.Parse("http://" + registryHost)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{blobGets: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		tamper := p.tamper
		p.mu.Unlock()
		if tamper == nil || resp.Request.Method != http.MethodGet {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		tamper(resp.Request.URL.Path, body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		if i := strings.Index(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
			p.blobGets[r.URL.Path[i+len("/blobs/"):]]++
		}
		rewrite, delay := p.rewrite, p.delayBlob
		p.mu.Unlock()
		if rewrite != nil {
			rewrite(r)
		}
		if delay > 0 && strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(delay)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *proxy) gets(digest v1.Hash) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobGets[digest.String()]
}

func layerDigest(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func layerDiffID(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func imageDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// dirNames lists a directory's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func layerPath(s *images.Store, diffID v1.Hash, elem ...string) string {
	return filepath.Join(append([]string{s.Dir(), "layers", diffID.Hex}, elem...)...)
}

// mountCount counts how often path appears as a mount point.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mounts {
		if m.MountPoint == path {
			n++
		}
	}
	return n
}
