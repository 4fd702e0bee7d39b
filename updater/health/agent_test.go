package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestAgentHealthy(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")

	// No agent configured: nothing to wait for.
	if err := AgentHealthy(cfg, time.Second)(context.Background()); err != nil {
		t.Fatalf("without an agent config: %v", err)
	}

	// An agent that becomes healthy on its third probe passes.
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || probes.Add(1) < 3 {
			http.Error(w, "embedded etcd stopped", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}))
	defer srv.Close()
	if err := os.WriteFile(cfg, []byte("name: n1\nmetrics_url: "+srv.URL+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := AgentHealthy(cfg, 10*time.Second)(context.Background()); err != nil {
		t.Fatalf("agent healthy on the third probe: %v", err)
	}
	if probes.Load() != 3 {
		t.Fatalf("probes = %d, want 3", probes.Load())
	}

	// An agent that never answers fails with the address in the reason.
	srv.Close()
	err := AgentHealthy(cfg, 1500*time.Millisecond)(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not healthy within") || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("dead agent: %v", err)
	}
}
