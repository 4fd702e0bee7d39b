package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-os/berth/builder/rootfs"
	"github.com/berth-os/berth/builder/slotfs"
	"github.com/berth-os/berth/builder/spec"
)

// BenchmarkSlotFilesystem compares berth's slot step with plain mksquashfs
// on the same tree in the same run, and reports the ratio (1.0 = no cost
// for reproducibility, xattrs and clamped times).
func BenchmarkSlotFilesystem(b *testing.B) {
	requireE2E(b)
	s, err := spec.Load(minimalSpec)
	if err != nil {
		b.Fatal(err)
	}
	baseTar, _, err := rootfs.BaseTar(context.Background(), s, cacheDir(), discardLog())
	if err != nil {
		b.Fatal(err)
	}
	tree := b.TempDir()
	if err := rootfs.ApplyLayerFile(tree, baseTar); err != nil {
		b.Fatal(err)
	}
	if _, err := rootfs.Trim(tree, nil, s.Trim.KeepLocales); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var ours, plain time.Duration
	var oursSize, plainSize int64
	for i := 0; i < b.N; i++ {
		out := filepath.Join(dir, "ours.sqfs")
		t := time.Now()
		if err := slotfs.Build(context.Background(), tree, out, slotfs.Options{Compression: s.Slot.Compression, Level: s.Slot.Level, Epoch: s.Epoch}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t)
		oursSize = fileSize(b, out)

		peer := filepath.Join(dir, "plain.sqfs")
		t = time.Now()
		cmd := exec.Command("mksquashfs", tree, peer, "-noappend", "-quiet", "-no-progress", "-comp", s.Slot.Compression, "-Xcompression-level", fmt.Sprint(s.Slot.Level))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("mksquashfs: %v: %s", err, out)
		}
		plain += time.Since(t)
		plainSize = fileSize(b, peer)
	}
	ratio := ours.Seconds() / plain.Seconds()
	b.ReportMetric(ratio, "time-vs-mksquashfs")
	b.ReportMetric(float64(oursSize)/(1<<20), "slot-MiB")
	fmt.Printf("slot filesystem: berth %.1fs vs plain mksquashfs %.1fs per build: ratio %.2f; size %.1f MiB vs %.1f MiB\n",
		ours.Seconds()/float64(b.N), plain.Seconds()/float64(b.N), ratio, float64(oursSize)/(1<<20), float64(plainSize)/(1<<20))
}

func fileSize(b *testing.B, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}
