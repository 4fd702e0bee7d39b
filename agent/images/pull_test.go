package images_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/images/imagetest"
)

func TestPullByTagAndByDigest(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	img := imagetest.BusyboxImage(t, map[string]string{"etc/motd": "hello berth\n"})
	byDigest := imagetest.Push(t, host, "bb:v1", img)
	want := imageDigest(t, img)

	rec, err := s.Pull(ctx, host+"/bb:v1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Digest != want {
		t.Fatalf("digest %s, want %s", rec.Digest, want)
	}
	if !reflect.DeepEqual(rec.Cmd, []string{"sh"}) || !reflect.DeepEqual(rec.Env, imagetest.Env) {
		t.Fatalf("config not kept: cmd %q env %q", rec.Cmd, rec.Env)
	}
	layers, _ := img.Layers()
	if len(rec.Layers) != 2 || rec.Layers[0] != layerDiffID(t, layers[0]).String() || rec.Layers[1] != layerDiffID(t, layers[1]).String() {
		t.Fatalf("layers %v do not match the image's diffIDs", rec.Layers)
	}
	if rec.Size <= 0 {
		t.Fatalf("size %d", rec.Size)
	}

	hostBB, _ := os.Stat(imagetest.BusyboxPath)
	bb, err := os.Stat(layerPath(s, layerDiffID(t, layers[0]), "bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	if bb.Size() != hostBB.Size() || bb.Mode().Perm() != 0o755 {
		t.Fatalf("busybox unpacked as %d bytes mode %v, want %d bytes 0755", bb.Size(), bb.Mode(), hostBB.Size())
	}
	if link, err := os.Readlink(layerPath(s, layerDiffID(t, layers[0]), "bin/sh")); err != nil || link != "busybox" {
		t.Fatalf("bin/sh -> %q (%v), want busybox", link, err)
	}
	if tmp, _ := os.Stat(layerPath(s, layerDiffID(t, layers[0]), "tmp")); tmp.Mode()&os.ModeSticky == 0 || tmp.Mode().Perm() != 0o777 {
		t.Fatalf("tmp mode %v, want sticky 0777", tmp.Mode())
	}
	motd, err := os.ReadFile(layerPath(s, layerDiffID(t, layers[1]), "etc/motd"))
	if err != nil || string(motd) != "hello berth\n" {
		t.Fatalf("etc/motd = %q, %v", motd, err)
	}

	again, err := s.Pull(ctx, byDigest)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != want {
		t.Fatalf("pull by digest gave %s, want %s", again.Digest, want)
	}
	for _, q := range []string{host + "/bb:v1", want, strings.TrimPrefix(want, "sha256:"), byDigest} {
		got, err := s.Get(q)
		if err != nil || got.Digest != want {
			t.Fatalf("Get(%q) = %s, %v", q, got.Digest, err)
		}
	}
	if _, err := s.Get(host + "/bb:v2"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("Get of an unknown tag: %v, want ErrNotFound", err)
	}
	if names := dirNames(t, filepath.Join(s.Dir(), "tmp")); len(names) != 0 {
		t.Fatalf("tmp not empty after pulls: %v", names)
	}
}

func TestPullByDigestRefusesAnotherManifest(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	asked := imagetest.Push(t, host, "bb:a", imagetest.BusyboxImage(t, map[string]string{"a": "a"}))
	other := imagetest.Push(t, host, "bb:b", imagetest.BusyboxImage(t, map[string]string{"b": "b"}))
	askedDigest := asked[strings.Index(asked, "@")+1:]
	otherDigest := other[strings.Index(other, "@")+1:]

	// A lying registry answers the request for one digest with another manifest.
	p := newProxy(t, host)
	p.rewrite = func(r *http.Request) {
		r.URL.Path = strings.Replace(r.URL.Path, "/manifests/"+askedDigest, "/manifests/"+otherDigest, 1)
	}
	_, err := s.Pull(ctx, p.host+"/bb@"+askedDigest)
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("pull from a lying registry: %v, want a digest mismatch", err)
	}
	t.Logf("lying registry: %v", err)
	if names := dirNames(t, filepath.Join(s.Dir(), "images")); len(names) != 0 {
		t.Fatalf("records stored despite the mismatch: %v", names)
	}
}

func TestPullUnknownImageAndUnreachableRegistry(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	imagetest.Push(t, host, "bb:v1", imagetest.BusyboxImage(t, nil))

	for _, ref := range []string{
		host + "/nope:latest",
		host + "/bb:v2",
		host + "/bb@sha256:" + strings.Repeat("ab", 32),
	} {
		_, err := s.Pull(ctx, ref)
		want := "image " + ref + " not found in " + host
		if err == nil || err.Error() != want || !errors.Is(err, images.ErrNotFound) {
			t.Errorf("pull %s: %v, want %q wrapping ErrNotFound", ref, err, want)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	_, err = s.Pull(ctx, dead+"/bb:v1")
	if err == nil || !strings.HasPrefix(err.Error(), "registry "+dead+" unreachable: ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("pull from a closed port: %v", err)
	}
	t.Logf("closed port: %v", err)
	if _, err := s.Pull(ctx, "UPPER/Case::bad"); err == nil || !strings.Contains(err.Error(), "bad image reference") {
		t.Fatalf("bad reference: %v", err)
	}
}

func TestCorruptLayerIsRefusedAndLeavesNothing(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	img := imagetest.BusyboxImage(t, nil)
	imagetest.Push(t, host, "bb:v1", img)
	layers, _ := img.Layers()
	bad := layerDigest(t, layers[0])

	p := newProxy(t, host)
	p.tamper = func(path string, body []byte) {
		if strings.HasSuffix(path, "/blobs/"+bad.String()) && len(body) > 0 {
			body[len(body)/2] ^= 0x01
		}
	}
	_, err := s.Pull(ctx, p.host+"/bb:v1")
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("pull of a corrupted blob: %v, want a digest mismatch naming %s", err, bad)
	}
	t.Logf("corrupted blob: %v", err)
	if p.gets(bad) == 0 {
		t.Fatal("the tampered blob was never fetched: the test proves nothing")
	}
	for _, sub := range []string{"layers", "images", "tmp"} {
		if names := dirNames(t, filepath.Join(s.Dir(), sub)); len(names) != 0 {
			t.Errorf("%s/ not empty after a refused pull: %v", sub, names)
		}
	}

	// Once the registry behaves, the same store pulls fine.
	p.mu.Lock()
	p.tamper = nil
	p.mu.Unlock()
	if _, err := s.Pull(ctx, p.host+"/bb:v1"); err != nil {
		t.Fatalf("pull after the corruption stopped: %v", err)
	}
}

// lyingLayer reports a diffID its content does not have.
type lyingLayer struct {
	v1.Layer
	diffID v1.Hash
}

func (l lyingLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }

func TestWrongDiffIDIsRefused(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	real := imagetest.FilesLayer(t, map[string]string{"x": "x"})
	lie := lyingLayer{real, v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}}
	img := imagetest.Image(t, imagetest.BusyboxLayer(t), lie)
	imagetest.Push(t, host, "liar:v1", img)

	_, err := s.Pull(ctx, host+"/liar:v1")
	if err == nil || !strings.Contains(err.Error(), "uncompressed content digest mismatch") {
		t.Fatalf("pull of a layer with a false diffID: %v", err)
	}
	t.Logf("false diffID: %v", err)
	if _, err := os.Stat(layerPath(s, lie.diffID)); !os.IsNotExist(err) {
		t.Fatalf("layer with the false diffID exists: %v", err)
	}
	if names := dirNames(t, filepath.Join(s.Dir(), "tmp")); len(names) != 0 {
		t.Fatalf("tmp not empty: %v", names)
	}
}

func TestSharedLayerIsFetchedAndUnpackedOnce(t *testing.T) {
	ctx := testContext(t)
	host := imagetest.Registry(t)
	imgA := imagetest.BusyboxImage(t, map[string]string{"a": "a"})
	imgB := imagetest.BusyboxImage(t, map[string]string{"b": "b"})
	imagetest.Push(t, host, "a:v1", imgA)
	imagetest.Push(t, host, "b:v1", imgB)
	base := imagetest.BusyboxLayer(t)

	t.Run("one after the other", func(t *testing.T) {
		s := openStore(t)
		p := newProxy(t, host)
		if _, err := s.Pull(ctx, p.host+"/a:v1"); err != nil {
			t.Fatal(err)
		}
		before, err := os.Stat(layerPath(s, layerDiffID(t, base), "bin/busybox"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Pull(ctx, p.host+"/b:v1"); err != nil {
			t.Fatal(err)
		}
		after, err := os.Stat(layerPath(s, layerDiffID(t, base), "bin/busybox"))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(before, after) {
			t.Fatal("the shared busybox layer was unpacked again (new inode)")
		}
		if n := p.gets(layerDigest(t, base)); n != 1 {
			t.Fatalf("shared layer fetched %d times, want 1", n)
		}
		if names := dirNames(t, filepath.Join(s.Dir(), "layers")); len(names) != 3 {
			t.Fatalf("layers/ holds %v, want 3 layers (busybox, a, b)", names)
		}
	})

	t.Run("at the same time", func(t *testing.T) {
		s := openStore(t)
		p := newProxy(t, host)
		p.delayBlob = 50 * time.Millisecond // make the pulls overlap
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i, ref := range []string{"a:v1", "b:v1", "a:v1", "b:v1"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.Pull(ctx, p.host+"/"+ref)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := p.gets(layerDigest(t, base)); n != 1 {
			t.Fatalf("4 concurrent pulls fetched the shared layer %d times, want 1", n)
		}
		if names := dirNames(t, filepath.Join(s.Dir(), "layers")); len(names) != 3 {
			t.Fatalf("layers/ holds %v, want 3", names)
		}
	})
}

func TestIndexPullPicksLinuxAmd64(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	host := imagetest.Registry(t)
	amd := imagetest.BusyboxImage(t, map[string]string{"arch": "amd64"})
	arm := imagetest.Image(t, imagetest.FilesLayer(t, map[string]string{"arch": "arm64"}))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	pushIndex(t, host+"/multi:v1", idx)
	armOnly := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	pushIndex(t, host+"/armonly:v1", armOnly)

	rec, err := s.Pull(ctx, host+"/multi:v1")
	if err != nil {
		t.Fatal(err)
	}
	if want := imageDigest(t, amd); rec.Digest != want {
		t.Fatalf("pulled %s, want the amd64 image %s", rec.Digest, want)
	}
	idxDigest, _ := idx.Digest()
	if _, err := s.Pull(ctx, host+"/multi@"+idxDigest.String()); err != nil {
		t.Fatalf("pull of the index by digest: %v", err)
	}
	_, err = s.Pull(ctx, host+"/armonly:v1")
	if err == nil || !strings.Contains(err.Error(), "has no linux/amd64 variant") {
		t.Fatalf("pull of an arm-only index: %v", err)
	}
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
}

// Without Insecure the store speaks only TLS, even to a loopback address
// that go-containerregistry would otherwise reach over plain http.
func TestSecureStoreUsesTLSOnly(t *testing.T) {
	requireRoot(t)
	ctx := testContext(t)
	tlsSrv := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(tlsSrv.Close)
	tlsHost := strings.TrimPrefix(tlsSrv.URL, "https://")
	img := imagetest.BusyboxImage(t, nil)
	r, _ := name.ParseReference(tlsHost + "/bb:v1")
	if err := remote.Write(r, img, remote.WithTransport(tlsSrv.Client().Transport)); err != nil {
		t.Fatal(err)
	}

	s, err := images.Open(t.TempDir(), images.Options{Transport: tlsSrv.Client().Transport})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.Pull(ctx, tlsHost+"/bb:v1")
	if err != nil {
		t.Fatalf("pull over TLS: %v", err)
	}
	if rec.Digest != imageDigest(t, img) {
		t.Fatalf("digest %s", rec.Digest)
	}

	plainHost := imagetest.Registry(t)
	imagetest.Push(t, plainHost, "bb:v1", img)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	s2, err := images.Open(t.TempDir(), images.Options{Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s2.Pull(ctx, plainHost+"/bb:v1")
	if err == nil {
		t.Fatal("a store without Insecure pulled from a plain-http registry")
	}
	t.Logf("plain http without Insecure: %v", err)
}
