package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkStartLatency compares our Run (spec written -> process running)
// with `runc run -d` of a bundle made from the same OCI spec, measured in the
// same run. runc 1.1.5 is the distribution's binary; it is only a yardstick.
func BenchmarkStartLatency(b *testing.B) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		b.Skip("runc not installed")
	}
	ctx := context.Background()
	r := newTestShim(b, "")
	runcRoot := b.TempDir()
	var ours, theirs time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := testSpec(b, "sleep", "10")

		start := time.Now()
		if _, err := r.Run(ctx, s); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		b.StopTimer()
		r.Stop(ctx, s.ID, time.Millisecond)
		if err := r.Remove(ctx, s.ID); err != nil {
			b.Fatal(err)
		}

		// Same container for runc: identical spec, cgroup and rootfs.
		s.ID += "-runc"
		bundle := filepath.Join(b.TempDir(), "bundle")
		os.MkdirAll(bundle, 0o755)
		cfg, _ := json.MarshalIndent(OCISpec(s), "", " ")
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), cfg, 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		// Output to a file, not a pipe: the detached container inherits it,
		// and a pipe would keep CombinedOutput waiting for the container.
		out, _ := os.Create(filepath.Join(bundle, "runc.log"))
		start = time.Now()
		cmd := exec.Command(runc, "--root", runcRoot, "run", "-d", "--bundle", bundle, s.ID)
		cmd.Stdout, cmd.Stderr = out, out
		err := cmd.Run()
		theirs += time.Since(start)
		out.Close()
		if err != nil {
			msg, _ := os.ReadFile(out.Name())
			b.Fatalf("runc run: %v: %s", err, msg)
		}

		b.StopTimer()
		if out, err := exec.Command(runc, "--root", runcRoot, "delete", "-f", s.ID).CombinedOutput(); err != nil {
			b.Fatalf("runc delete: %v: %s", err, out)
		}
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(ours.Microseconds())/1000/n, "berth-ms/start")
	b.ReportMetric(float64(theirs.Microseconds())/1000/n, "runc-ms/start")
	b.ReportMetric(float64(ours)/float64(theirs), "berth/runc")
	fmt.Printf("start latency over %d starts: berth Run %.1f ms, runc run -d %.1f ms, ratio %.2f\n",
		b.N, float64(ours.Microseconds())/1000/n, float64(theirs.Microseconds())/1000/n, float64(ours)/float64(theirs))
}
