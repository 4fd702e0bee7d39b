package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
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

	if err := d.Put(ctx, "r", other, io.NopCloser(bytes.NewReader(content))); err == nil {
		t.Fatal("Put stored content under a digest it does not have")
	}
	if _, err := d.Stat(ctx, "r", other); !errors.Is(err, ggcr.ErrNotFound) {
		t.Fatalf("after a refused Put, Stat = %v, want not found", err)
	}
	if left, _ := os.ReadDir(d.tmpDir); len(left) != 0 {
		t.Fatalf("a refused Put left %d temp files", len(left))
	}

	if err := d.Put(ctx, "r", h, io.NopCloser(bytes.NewReader(content))); err != nil {
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

// BenchmarkBlobStat compares a HEAD/GET's Stat of a 64 MiB blob with
// go-containerregistry's disk handler (which hashes the file each time) and
// with diskBlobs (which checked the digest once, in Put).
func BenchmarkBlobStat(b *testing.B) {
	ctx := context.Background()
	d := newTestBlobs(b)
	content, h := randomBlob(b, 64<<20)
	if err := d.Put(ctx, "r", h, io.NopCloser(bytes.NewReader(content))); err != nil {
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
