package payload

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// testKey makes a key pair on disk and returns the loaded keys.
func testKey(t *testing.T, dir, name string) (ed25519.PrivateKey, ed25519.PublicKey) {
	t.Helper()
	priv, pub := filepath.Join(dir, name+".key"), filepath.Join(dir, name+PublicKeySuffix)
	if err := GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	k, err := LoadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k, p
}

// memKey is a key pair that never touches the disk.
func memKey(t testing.TB) (ed25519.PrivateKey, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func sampleManifest() Manifest {
	return Manifest{
		Schema:        Schema,
		OS:            "berth-minimal",
		Version:       "0.2.0",
		Arch:          "amd64",
		KernelVersion: "6.1.0-31-cloud-amd64",
		Epoch:         1700000000,
		Slot:          Blob{Size: 4096, SHA256: strings.Repeat("a", 64)},
		SlotFSType:    SlotFSType,
		Kernel:        Blob{Size: 1000, SHA256: strings.Repeat("b", 64)},
		Initrd:        Blob{Size: 2000, SHA256: strings.Repeat("c", 64)},
		Cmdline:       []string{"console=ttyS0,115200", "quiet"},
	}
}

// testParts are random part files; the slot is a few MiB so it is read in
// many chunks.
type testParts struct {
	Parts
	slot, kernel, initrd []byte
}

func makeParts(t *testing.T, slotSize int) testParts {
	t.Helper()
	dir := t.TempDir()
	tp := testParts{
		slot:   randBytes(t, slotSize),
		kernel: randBytes(t, 70_001),
		initrd: randBytes(t, 33_333),
	}
	tp.Parts = Parts{
		Slot:   filepath.Join(dir, "slot.squashfs"),
		Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img"),
	}
	for p, data := range map[string][]byte{tp.Slot: tp.slot, tp.Kernel: tp.kernel, tp.Initrd: tp.initrd} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return tp
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// createPayload builds a payload of version from fresh parts.
func createPayload(t *testing.T, key ed25519.PrivateKey, version string) (v1.Image, Manifest, testParts) {
	t.Helper()
	tp := makeParts(t, 3<<20+17)
	m := sampleManifest()
	m.Version = version
	img, signed, err := Create(m, tp.Parts, key)
	if err != nil {
		t.Fatal(err)
	}
	return img, signed, tp
}

// readPart reads a part to EOF, returning what was read and the error.
func readPart(t *testing.T, open func() (io.ReadCloser, error)) ([]byte, error) {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// checkAllParts reads the three parts of p and compares them to tp.
func checkAllParts(t *testing.T, p *Payload, tp testParts) {
	t.Helper()
	for _, c := range []struct {
		name string
		open func() (io.ReadCloser, error)
		want []byte
	}{{"slot", p.Slot, tp.slot}, {"kernel", p.Kernel, tp.kernel}, {"initrd", p.Initrd, tp.initrd}} {
		got, err := readPart(t, c.open)
		if err != nil {
			t.Fatalf("read %s: %v", c.name, err)
		}
		if !bytes.Equal(got, c.want) {
			t.Fatalf("%s: read %d bytes that differ from the %d bytes written", c.name, len(got), len(c.want))
		}
	}
}

// blobPath is where an OCI layout keeps a blob.
func blobPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
}

func partHash(b Blob) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: b.SHA256} }

// rewriteManifest lets a test edit the (only) OCI manifest of a layout, as
// an attacker with write access to the layout could, keeping the layout
// itself consistent (new manifest blob, index.json pointing at it).
func rewriteManifest(t *testing.T, dir string, edit func(*v1.Manifest)) {
	t.Helper()
	indexPath := filepath.Join(dir, "index.json")
	data, err := os.ReadFile(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	var index v1.IndexManifest
	if err := json.Unmarshal(data, &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("layout has %d manifests, want 1", len(index.Manifests))
	}
	raw, err := os.ReadFile(blobPath(dir, index.Manifests[0].Digest))
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	raw, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	writeBlob(t, dir, raw)
	index.Manifests[0].Digest, index.Manifests[0].Size = sha256Hash(raw), int64(len(raw))
	if data, err = json.Marshal(index); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(indexPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeBlob(t *testing.T, dir string, data []byte) v1.Descriptor {
	t.Helper()
	h := sha256Hash(data)
	if err := os.WriteFile(blobPath(dir, h), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return v1.Descriptor{Digest: h, Size: int64(len(data))}
}

// countingRegistry is an in-memory registry on loopback that counts blob
// downloads per digest.
type countingRegistry struct {
	host string
	mu   sync.Mutex
	gets map[string]int
}

func startRegistry(t *testing.T) *countingRegistry {
	t.Helper()
	r := &countingRegistry{gets: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			r.mu.Lock()
			r.gets[req.URL.Path[strings.LastIndex(req.URL.Path, "sha256:")+len("sha256:"):]]++
			r.mu.Unlock()
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *countingRegistry) blobGets(hex string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[hex]
}

func (r *countingRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.gets)
}

func bg() context.Context { return context.Background() }

func mustRef(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
