package cluster

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/config"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testOptions are the Options berth-agent would build from a validated
// default configuration of node name on 127.0.0.1, with a temporary data
// dir.
func testOptions(t *testing.T, name string) Options {
	t.Helper()
	cfg := config.Config{Name: name, DataDir: t.TempDir(), AdvertiseIP: "127.0.0.1"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	opts := OptionsFrom(cfg)
	opts.Log = quietLog()
	return opts
}

// Every cluster setting of the configuration reaches Options, and what
// OptionsFrom makes of a validated configuration New accepts.
func TestOptionsFromConfig(t *testing.T) {
	cfg, err := config.Parse([]string{
		"--config", writeEmpty(t),
		"--name", "node-7", "--data-dir", "/srv/berth",
		"--peer-url", "https://10.1.0.7:2390", "--client-url", "https://10.1.0.7:2389", "--api-url", "https://10.1.0.7:7490",
		"--join", "https://10.1.0.1:7480,https://10.1.0.2:7480",
		"--token", "0123456789abcdef0123456789abcdef.sha256:" + strings.Repeat("ab", 32),
		"--voters", "5", "--dead-after", "45s", "--node-ttl", "4s",
		"--heartbeat-interval", "50ms", "--election-timeout", "600ms", "--etcd-log-level", "info",
		"--etcd-quota", "512MiB", "--compaction-retention", "7m", "--defrag-interval", "2h", "--node-refresh", "90s",
		"--restart-hold", "45s", "--labels", "zone=a,disk=ssd",
	})
	if err != nil {
		t.Fatal(err)
	}
	got := OptionsFrom(cfg)
	want := Options{
		Name: "node-7", DataDir: "/srv/berth",
		PeerURL: "https://10.1.0.7:2390", ClientURL: "https://10.1.0.7:2389", APIURL: "https://10.1.0.7:7490",
		Join:  []string{"https://10.1.0.1:7480", "https://10.1.0.2:7480"},
		Token: "0123456789abcdef0123456789abcdef.sha256:" + strings.Repeat("ab", 32), Voters: 5,
		DeadAfter: 45 * time.Second, NodeTTL: 4 * time.Second,
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 600 * time.Millisecond, EtcdLogLevel: "info",
		QuotaBytes: 512 << 20, CompactionRetention: 7 * time.Minute, DefragInterval: 2 * time.Hour,
		NodeRefresh: 90 * time.Second, RestartHold: 45 * time.Second, Labels: map[string]string{"zone": "a", "disk": "ssd"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("OptionsFrom:\n got %+v\nwant %+v", got, want)
	}
	if _, err := New(got); err != nil {
		t.Fatalf("New refuses OptionsFrom a validated config: %v", err)
	}
	if _, err := New(testOptions(t, "node-1")); err != nil {
		t.Fatalf("New refuses OptionsFrom the validated defaults: %v", err)
	}
}

func writeEmpty(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// New refuses a setting left zero and names it by its configuration key,
// instead of filling a default of its own.
func TestNewRefusesUnsetSettings(t *testing.T) {
	cases := map[string]func(o *Options){
		"data-dir":             func(o *Options) { o.DataDir = "" },
		"peer-url":             func(o *Options) { o.PeerURL = "" },
		"client-url":           func(o *Options) { o.ClientURL = "" },
		"api-url":              func(o *Options) { o.APIURL = "" },
		"voters":               func(o *Options) { o.Voters = 0 },
		"dead-after":           func(o *Options) { o.DeadAfter = 0 },
		"node-ttl":             func(o *Options) { o.NodeTTL = 0 },
		"heartbeat-interval":   func(o *Options) { o.HeartbeatInterval = 0 },
		"election-timeout":     func(o *Options) { o.ElectionTimeout = 0 },
		"etcd-log-level":       func(o *Options) { o.EtcdLogLevel = "" },
		"etcd-quota":           func(o *Options) { o.QuotaBytes = 0 },
		"compaction-retention": func(o *Options) { o.CompactionRetention = 0 },
		"defrag-interval":      func(o *Options) { o.DefragInterval = 0 },
		"node-refresh":         func(o *Options) { o.NodeRefresh = 0 },
	}
	for setting, unset := range cases {
		opts := testOptions(t, "node-1")
		unset(&opts)
		_, err := New(opts)
		if err == nil || !strings.Contains(err.Error(), "not set: "+setting+" ") {
			t.Errorf("%s unset: got %v, want an error naming it", setting, err)
		}
	}
	if _, err := New(Options{Name: "Bad_Name"}); err == nil || !strings.Contains(err.Error(), "name:") {
		t.Errorf("bad name: got %v", err)
	}
	// All at once: one line naming each.
	_, err := New(Options{Name: "node-1"})
	if err == nil {
		t.Fatal("empty Options accepted")
	}
	for setting := range cases {
		if !strings.Contains(err.Error(), setting) {
			t.Errorf("error %q does not name %s", err, setting)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

// The hooks that are not settings keep their defaults.
func TestNewDefaultsHooks(t *testing.T) {
	opts := testOptions(t, "node-1")
	opts.Log = nil
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if a.opts.ClusterName != "berth" || a.opts.EtcdLogOutput != "stderr" || a.opts.Log == nil || a.opts.TokenOutput == nil {
		t.Fatalf("hook defaults: %+v", a.opts)
	}
}
