package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		want []float64 // the un-jittered steps, in ms
	}{
		{"doubling capped", Policy{Initial: 100 * time.Millisecond, Max: time.Second},
			[]float64{100, 200, 400, 800, 1000, 1000}},
		{"defaults", Policy{},
			[]float64{100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000}},
		{"multiplier 1.5", Policy{Initial: 500 * time.Millisecond, Max: 2 * time.Second, Multiplier: 1.5},
			[]float64{500, 750, 1125, 1687.5, 2000}},
		{"max below initial", Policy{Initial: time.Second, Max: 10 * time.Millisecond},
			[]float64{1000, 1000}},
	} {
		for _, jitter := range []float64{-1, 0, 0.5, 1} {
			p := tc.p
			p.Jitter = jitter
			frac := p.withDefaults().Jitter
			// Many rounds, so that a jitter outside its bounds shows.
			for round := range 50 {
				b := NewBackoff(p)
				for i, ms := range tc.want {
					step := time.Duration(ms * float64(time.Millisecond))
					got := b.Next()
					lo := step - time.Duration(frac*float64(step))
					if got < lo || got > step {
						t.Fatalf("%s jitter %v round %d wait %d: %v, want within [%v, %v]", tc.name, jitter, round, i, got, lo, step)
					}
					if frac == 0 && got != step {
						t.Fatalf("%s without jitter wait %d: %v, want %v", tc.name, i, got, step)
					}
				}
			}
		}
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[NewBackoff(Policy{Initial: time.Second}).Next()] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 first waits with jitter are all %v", seen)
	}
}

func TestBackoffReset(t *testing.T) {
	b := NewBackoff(Policy{Initial: 10 * time.Millisecond, Jitter: -1})
	b.Next()
	b.Next()
	if got := b.Next(); got != 40*time.Millisecond {
		t.Fatalf("third wait %v, want 40ms", got)
	}
	b.Reset()
	if got := b.Next(); got != 10*time.Millisecond {
		t.Fatalf("wait after Reset %v, want 10ms", got)
	}
}

var errFlaky = errors.New("flaky")

func TestDo(t *testing.T) {
	fast := Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}
	for _, tc := range []struct {
		name      string
		p         Policy
		failures  int   // op fails this many times, then succeeds
		opErr     error // what op fails with
		wantCalls int
		wantErr   error
		wantWaits int
	}{
		{"first try", fast, 0, errFlaky, 1, nil, 0},
		{"after failures", fast, 3, errFlaky, 4, nil, 3},
		{"permanent stops at once", fast, 100, Permanent(errFlaky), 1, errFlaky, 0},
		{"permanent wrapped stops at once", fast, 100, Permanent(errors.Join(errFlaky)), 1, errFlaky, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, waits := 0, 0
			p := tc.p
			p.OnRetry = func(err error, wait time.Duration) {
				waits++
				if !errors.Is(err, errFlaky) || wait <= 0 || wait > p.Max {
					t.Errorf("OnRetry(%v, %v)", err, wait)
				}
			}
			err := Do(context.Background(), p, func() error {
				calls++
				if calls <= tc.failures {
					return tc.opErr
				}
				return nil
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Do = %v, want %v", err, tc.wantErr)
			}
			if calls != tc.wantCalls || waits != tc.wantWaits {
				t.Fatalf("calls %d waits %d, want %d and %d", calls, waits, tc.wantCalls, tc.wantWaits)
			}
		})
	}
}

func TestDoPermanentIsUnwrapped(t *testing.T) {
	err := Do(context.Background(), Policy{}, func() error { return Permanent(errFlaky) })
	if err != errFlaky {
		t.Fatalf("Do = %#v, want errFlaky itself", err)
	}
}

func TestGetReturnsValue(t *testing.T) {
	calls := 0
	v, err := Get(context.Background(), Policy{Initial: time.Millisecond}, func() (int, error) {
		calls++
		if calls < 3 {
			return 0, errFlaky
		}
		return 42, nil
	})
	if err != nil || v != 42 || calls != 3 {
		t.Fatalf("Get = %d, %v after %d calls", v, err, calls)
	}
}

func TestDoContextCancelStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	done := make(chan error)
	go func() {
		done <- Do(ctx, Policy{Initial: time.Hour}, func() error {
			calls++
			return errFlaky
		})
	}()
	time.Sleep(20 * time.Millisecond) // Do is in its hour-long wait
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errFlaky) {
			t.Fatalf("Do = %v, want context.Canceled wrapping the last error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Do still waits after ctx was cancelled")
	}
	if calls != 1 {
		t.Fatalf("op called %d times, want 1", calls)
	}
}

func TestDoContextAlreadyDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	err := Do(ctx, Policy{}, func() error {
		calls++
		return ctx.Err()
	})
	// op runs once; its own error already says the context ended.
	if calls != 1 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Do = %v after %d calls", err, calls)
	}
	if err := Do(ctx, Policy{}, func() error { return nil }); err != nil {
		t.Fatalf("a success with ctx done: Do = %v", err)
	}
}

func TestDoMaxElapsed(t *testing.T) {
	start := time.Now()
	calls := 0
	err := Do(context.Background(), Policy{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, MaxElapsed: 100 * time.Millisecond}, func() error {
		calls++
		return errFlaky
	})
	took := time.Since(start)
	if !errors.Is(err, errFlaky) || errors.Is(err, context.Canceled) {
		t.Fatalf("Do = %v, want the last error", err)
	}
	// It gives up before a wait that would end past MaxElapsed (the
	// slack is for a loaded machine, far below "never gives up").
	if took > time.Second {
		t.Fatalf("Do gave up after %v, MaxElapsed is 100ms", took)
	}
	if calls < 3 {
		t.Fatalf("op called %d times in 100ms with waits of at most 20ms", calls)
	}
}

func TestDoNoMaxElapsedByDefault(t *testing.T) {
	// Policy's zero MaxElapsed means "until ctx ends" (the library's own
	// default would stop after 15 minutes).
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	calls := 0
	err := Do(ctx, Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond}, func() error {
		calls++
		return errFlaky
	})
	if !errors.Is(err, context.DeadlineExceeded) || calls < 10 {
		t.Fatalf("Do = %v after %d calls, want the deadline after many calls", err, calls)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep without cancel reported an early end")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Fatal("Sleep did not end with ctx")
	}
}
