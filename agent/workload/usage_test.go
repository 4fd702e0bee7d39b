package workload

import (
	"math"
	"os"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestUsageBookAccumulatesAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b, err := openUsageBook(dir)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	b.sample("acme", 2e9, 1<<30, t0)                     // first sample: 2 CPU-seconds, no memory time yet
	b.sample("acme", 5e9, 1<<30, t0.Add(5*time.Minute))  // +3 s CPU, 1 GiB for 5 minutes
	b.sample("acme", 1e9, 2<<30, t0.Add(10*time.Minute)) // group recreated: counts from 0 again (+1 s); 2 GiB for 5 minutes
	u := b.T["acme"]
	if !near(u.CPUSeconds, 6) {
		t.Fatalf("cpu seconds = %v, want 6", u.CPUSeconds)
	}
	if want := 1.0/12 + 2.0/12; !near(u.MemoryGiBHours, want) {
		t.Fatalf("memory GiB-hours = %v, want %v", u.MemoryGiBHours, want)
	}
	if err := b.save(); err != nil {
		t.Fatal(err)
	}

	// A restarted agent goes on from the saved counters; a long gap while
	// it was down counts at most maxGap of memory.
	b2, err := openUsageBook(dir)
	if err != nil {
		t.Fatal(err)
	}
	b2.sample("acme", 3e9, 1<<30, t0.Add(10*time.Minute+24*time.Hour))
	u2 := b2.T["acme"]
	if !near(u2.CPUSeconds, 8) {
		t.Fatalf("after restart cpu seconds = %v, want 8", u2.CPUSeconds)
	}
	if want := 3.0/12 + maxGap.Hours(); !near(u2.MemoryGiBHours, want) {
		t.Fatalf("after restart memory GiB-hours = %v, want %v", u2.MemoryGiBHours, want)
	}
}

func TestUsageBookRefusesCorruptFile(t *testing.T) {
	dir := t.TempDir()
	b, _ := openUsageBook(dir)
	b.sample("acme", 1, 1, time.Now())
	if err := b.save(); err != nil {
		t.Fatal(err)
	}
	if err := writeTestFile(b.file, "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := openUsageBook(dir); err == nil {
		t.Fatal("corrupt usage book accepted")
	}
}

func TestRestartDelayBacksOffToThirtySeconds(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := restartDelay(i); got != w {
			t.Fatalf("restartDelay(%d) = %s, want %s", i, got, w)
		}
	}
}

func writeTestFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o644) }

func TestUsageWriteDue(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)
	u := func(cpu, mem float64) jobs.Usage { return jobs.Usage{CPUSeconds: cpu, MemoryGiBHours: mem} }
	cases := []struct {
		name     string
		pub, cur jobs.Usage
		at       time.Time
		age      time.Duration
		want     bool
	}{
		{"never written", u(0, 0), u(1, 0), time.Time{}, 0, true},
		{"unchanged", u(1, 1), u(1, 1), t0, time.Hour, false},
		{"changed within the cadence", u(1, 1), u(2, 1.1), t0, 4 * time.Minute, false},
		{"changed after the cadence", u(1, 1), u(2, 1.1), t0, 5 * time.Minute, true},
		{"first memory figure at once", u(1, 0), u(1.2, 0.001), t0, 10 * time.Second, true},
		{"first cpu figure at once", u(0, 0.1), u(0.5, 0.1), t0, 10 * time.Second, true},
	}
	for _, tc := range cases {
		if got := usageWriteDue(tc.pub, tc.cur, tc.at, t0.Add(tc.age)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A tenant whose usage moves at every 10 s sample: 12 writes an hour.
	var pub jobs.Usage
	var at time.Time
	writes := 0
	for s := 0; s < 360; s++ {
		now := t0.Add(time.Duration(s) * 10 * time.Second)
		cur := u(float64(s+1), float64(s+1))
		if usageWriteDue(pub, cur, at, now) {
			pub, at = cur, now
			writes++
		}
	}
	if writes > 12 {
		t.Fatalf("%d usage writes in an hour of samples, want at most 12", writes)
	}
}
