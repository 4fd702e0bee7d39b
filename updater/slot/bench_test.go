package slot

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-os/berth/updater/payload"
)

// BenchmarkApplyVsDD writes 256 MiB through Apply's slot writer (read,
// sha256, write, fsync) and through `dd bs=4M conv=fsync` to the same
// target, and reports Apply's speed relative to dd (goal: >= 0.9).
func BenchmarkApplyVsDD(b *testing.B) {
	dd, err := exec.LookPath("dd")
	if err != nil {
		b.Skip("dd not installed")
	}
	const size = 256 << 20
	dir := b.TempDir()
	srcPath, target := filepath.Join(dir, "slot.img"), filepath.Join(dir, "target")
	f, err := os.Create(srcPath)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	f.Close()
	want := blobOfFile(b, srcPath)
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(target, size); err != nil {
		b.Fatal(err)
	}

	var applyTime, ddTime time.Duration
	runApply := func() {
		src, err := os.Open(srcPath)
		if err != nil {
			b.Fatal(err)
		}
		defer src.Close()
		start := time.Now()
		if err := writeSlot(context.Background(), target, src, want, nil); err != nil {
			b.Fatal(err)
		}
		applyTime += time.Since(start)
	}
	runDD := func() {
		start := time.Now()
		out, err := exec.Command(dd, "if="+srcPath, "of="+target, "bs=4M", "conv=fsync,notrunc", "status=none").CombinedOutput()
		if err != nil {
			b.Fatalf("dd: %v: %s", err, out)
		}
		ddTime += time.Since(start)
	}
	b.SetBytes(size)
	b.ResetTimer()
	// Allocate the target's blocks once, untimed: a first write into a
	// sparse file costs more than rewriting a partition does.
	runDD()
	ddTime = 0
	for i := 0; i < b.N; i++ {
		// Alternate who goes first, so neither always meets a dirty cache.
		if i%2 == 0 {
			runApply()
			runDD()
		} else {
			runDD()
			runApply()
		}
	}
	b.StopTimer()
	ratio := ddTime.Seconds() / applyTime.Seconds()
	b.ReportMetric(ratio, "speed-vs-dd")
	b.ReportMetric(float64(size)*float64(b.N)/applyTime.Seconds()/(1<<20), "apply-MiB/s")
	b.ReportMetric(float64(size)*float64(b.N)/ddTime.Seconds()/(1<<20), "dd-MiB/s")
	b.Logf("apply %v, dd %v for %d runs: Apply runs at %.2f of dd's speed", applyTime, ddTime, b.N, ratio)
}

func blobOfFile(b *testing.B, path string) payload.Blob {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		b.Fatal(err)
	}
	return payload.Blob{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
}
