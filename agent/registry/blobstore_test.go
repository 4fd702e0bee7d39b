package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func newTestBlobs(t testing.TB) *diskBlobs {
	dir := t.TempDir()
	d := &diskBlobs{dir: filepath.Join(dir, "blobs"), tmpDir: filepath.Join(dir, "tmp")}
	for _, p := range []string{d.dir, d.tmpDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func randomBlob(t testing.TB, n int) ([]byte, v1.Hash) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return b, h
}

func TestDiskBlobsPutVerifies(t *testing.T) {
	ctx := context.Background()
	d := newTestBlobs(t)
	content, h := randomBlob(t, 100_000)
	_, other := randomBlob(t, 10)

	if err := d.putVerified(other, bytes.NewReader(content)); err == nil {
		t.Fatal("putVerified stored content under a digest it does not have")
	}
	if _, err := d.Stat(ctx, "r", other); !errors.Is(err, ggcr.ErrNotFound) {
		t.Fatalf("after a refused Put, Stat = %v, want not found", err)
	}
	if left, _ := os.ReadDir(d.tmpDir); len(left) != 0 {
		t.Fatalf("a refused Put left %d temp files", len(left))
	}

	if err := d.putVerified(h, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	size, err := d.Stat(ctx, "r", h)
	if err != nil || size != int64(len(content)) {
		t.Fatalf("Stat = %d, %v; want %d", size, err, len(content))
	}
	rc, err := d.Get(ctx, "r", h)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, content) {
		t.Fatal("Get returned other content than was put")
	}
	if err := d.Delete(ctx, "r", h); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get(ctx, "r", h); !errors.Is(err, ggcr.ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want not found", err)
	}
	if err := d.Delete(ctx, "r", h); !errors.Is(err, ggcr.ErrNotFound) {
		t.Fatalf("second Delete = %v, want not found", err)
	}
}

// TestUploadDigestChecked pushes through the registry handler: ggcr's
// upload path checks the digest for diskBlobs.Put (which does not hash), so
// a blob whose content does not match is refused and not stored.
func TestUploadDigestChecked(t *testing.T) {
	h, err := New(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	content, good := randomBlob(t, 4096)
	_, wrong := randomBlob(t, 16)
	upload := func(d v1.Hash) int {
		resp, err := http.Post(srv.URL+"/v2/acme/app/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	head := func(d v1.Hash) int {
		resp, err := http.Head(srv.URL + "/v2/acme/app/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := upload(wrong); code != http.StatusBadRequest {
		t.Fatalf("upload under a wrong digest: status %d, want 400", code)
	}
	if code := head(wrong); code != http.StatusNotFound {
		t.Fatalf("HEAD of the refused blob: %d, want 404", code)
	}
	if code := upload(good); code != http.StatusCreated {
		t.Fatalf("upload: status %d, want 201", code)
	}
	if code := head(good); code != http.StatusOK {
		t.Fatalf("HEAD of the stored blob: %d, want 200", code)
	}
}

// BenchmarkBlobStat compares a HEAD/GET's Stat of a 64 MiB blob with
// go-containerregistry's disk handler (which hashes the file each time) and
// with diskBlobs (which checked the digest once, in Put).
func BenchmarkBlobStat(b *testing.B) {
	ctx := context.Background()
	d := newTestBlobs(b)
	content, h := randomBlob(b, 64<<20)
	if err := d.putVerified(h, bytes.NewReader(content)); err != nil {
		b.Fatal(err)
	}
	theirs := ggcr.NewDiskBlobHandler(d.dir).(ggcr.BlobStatHandler)
	timeStat := func(s ggcr.BlobStatHandler, n int) time.Duration {
		start := time.Now()
		for range n {
			if _, err := s.Stat(ctx, "r", h); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	var ggcrPer, oursPer time.Duration
	for b.Loop() {
		ggcrPer = timeStat(theirs, 3)
		oursPer = timeStat(d, 3)
	}
	b.ReportMetric(float64(ggcrPer.Microseconds()), "ggcr-µs/stat")
	b.ReportMetric(float64(oursPer.Microseconds()), "ours-µs/stat")
	b.ReportMetric(float64(ggcrPer)/float64(max(oursPer, 1)), "ggcr/ours")
}
