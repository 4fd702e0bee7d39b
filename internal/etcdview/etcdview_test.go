package etcdview

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
)

// recorder is a View that keeps the keys and counts resets.
type recorder struct {
	mu     sync.Mutex
	kv     map[string]string
	resets int
	synced chan struct{}
}

func (r *recorder) Reset() {
	r.mu.Lock()
	r.kv = map[string]string{}
	r.resets++
	r.mu.Unlock()
}
func (r *recorder) Put(k string, v []byte) { r.mu.Lock(); r.kv[k] = string(v); r.mu.Unlock() }
func (r *recorder) Delete(k string)        { r.mu.Lock(); delete(r.kv, k); r.mu.Unlock() }
func (r *recorder) Synced() {
	select {
	case r.synced <- struct{}{}:
	default:
	}
}

func (r *recorder) waitFor(t *testing.T, want map[string]string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		got := maps.Clone(r.kv)
		r.mu.Unlock()
		if maps.Equal(got, want) {
			return
		}
		select {
		case <-r.synced:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("view %v, want %v", got, want)
		}
	}
}

// TestFollow: the view holds exactly the keys of the followed prefixes
// through puts and deletes, and after a watch is lost to compaction
// (an event missed while away) it loads again and is right.
func TestFollow(t *testing.T) {
	cli := etcdtest.Start(t, etcdtest.Options{}).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	put := func(k, v string) {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("/a/1", "one")
	put("/b/1", "uno")
	put("/c/1", "not followed")
	r := &recorder{kv: map[string]string{}, synced: make(chan struct{}, 1)}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { Follow(fctx, cli, []string{"/a/", "/b/"}, r, slog.New(slog.DiscardHandler)); close(done) }()
	r.waitFor(t, map[string]string{"/a/1": "one", "/b/1": "uno"})
	put("/a/2", "two")
	put("/c/2", "not followed")
	if _, err := cli.Delete(ctx, "/b/1"); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, map[string]string{"/a/1": "one", "/a/2": "two"})
	stop()
	<-done

	// Away: writes and a compaction past them; a new Follow starts from
	// a full load, so nothing missed shows.
	for i := range 5 {
		put(fmt.Sprintf("/a/x%d", i), "x")
	}
	resp, err := cli.Delete(ctx, "/a/1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	fctx, stop = context.WithCancel(ctx)
	defer stop()
	go Follow(fctx, cli, []string{"/a/", "/b/"}, r, slog.New(slog.DiscardHandler))
	r.waitFor(t, map[string]string{"/a/2": "two", "/a/x0": "x", "/a/x1": "x", "/a/x2": "x", "/a/x3": "x", "/a/x4": "x"})
	r.mu.Lock()
	resets := r.resets
	r.mu.Unlock()
	if resets < 2 {
		t.Errorf("%d loads, want one per Follow", resets)
	}
}
