package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileAndFlagOverride(t *testing.T) {
	p := writeFile(t, `
name: node-1
data_dir: /tmp/x
advertise_ip: 10.0.0.5
voters: 5
dead_after: 45s
join: ["https://10.0.0.1:7480"]
token: "0123456789abcdef0123456789abcdef.sha256:`+strings.Repeat("ab", 32)+`"
`)
	c, err := Parse([]string{"--config", p, "--voters", "1", "--client-url", "https://10.0.0.9:3379"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "node-1" || c.Voters != 1 || c.DeadAfter.Duration != 45*time.Second {
		t.Fatalf("merge: %+v", c)
	}
	if c.PeerURL != "https://10.0.0.5:2380" || c.ClientURL != "https://10.0.0.9:3379" || c.APIURL != "https://10.0.0.5:7480" {
		t.Fatalf("urls: %s %s %s", c.PeerURL, c.ClientURL, c.APIURL)
	}
	if len(c.Join) != 1 || c.Token == "" {
		t.Fatalf("join: %v %q", c.Join, c.Token)
	}
}

func TestErrorsAreOneLine(t *testing.T) {
	base := []string{"--name", "n1", "--advertise-ip", "10.0.0.5", "--config", writeFile(t, "")}
	cases := map[string]struct {
		args []string
		file string
		want string
	}{
		"unknown key":      {file: "name: n1\nvoter: 3\n", want: "field voter not found"},
		"voters":           {args: []string{"--voters", "2"}, want: "voters: must be 1, 3 or 5"},
		"bare duration":    {file: "dead_after: 30\n", want: "dead-after"},
		"http peer":        {args: []string{"--peer-url", "http://10.0.0.5:2380"}, want: "peer-url"},
		"url with path":    {args: []string{"--client-url", "https://10.0.0.5:2379/x"}, want: "client-url"},
		"join no token":    {args: []string{"--join", "https://10.0.0.1:7480"}, want: "join: needs --token"},
		"bad token":        {args: []string{"--token", "nope"}, want: "token:"},
		"bad name":         {args: []string{"--name", "Node_1"}, want: "name:"},
		"election too low": {args: []string{"--heartbeat-interval", "100ms", "--election-timeout", "200ms"}, want: "election-timeout"},
		"unknown flag":     {args: []string{"--frobnicate"}, want: "flags:"},
		"missing file":     {args: []string{"--config", "/nonexistent/agent.yaml"}, want: "config file"},
		"quota not a size": {args: []string{"--etcd-quota", "lots"}, want: "etcd-quota: \"lots\" is not a size"},
		"quota too small":  {file: "etcd_quota: 64KiB\n", want: "etcd-quota: 64 KiB must be between"},
		"quota too big":    {args: []string{"--etcd-quota", "16GiB"}, want: "etcd-quota: 16 GiB must be between"},
		"retention zero":   {args: []string{"--compaction-retention", "0s"}, want: "compaction-retention: 0s must be between"},
		"retention bare":   {file: "compaction_retention: 300\n", want: "compaction-retention: \"300\" is not a duration"},
		"defrag too fast":  {args: []string{"--defrag-interval", "10ms"}, want: "defrag-interval"},
		"refresh too long": {args: []string{"--node-refresh", "48h"}, want: "node-refresh: 48h0m0s must be between"},
	}
	for name, tc := range cases {
		args := append([]string{}, base...)
		if tc.file != "" {
			args[len(args)-1] = writeFile(t, tc.file)
		}
		_, err := Parse(append(args, tc.args...))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want one line containing %q", name, err, tc.want)
		}
	}
}

func TestSpaceSettings(t *testing.T) {
	base := []string{"--name", "n1", "--advertise-ip", "10.0.0.5", "--config", writeFile(t, "")}
	c, err := Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdQuota.Bytes != 2<<30 || c.CompactionRetention.Duration != 5*time.Minute || c.DefragInterval.Duration != time.Hour || c.NodeRefresh.Duration != 5*time.Minute {
		t.Fatalf("defaults: quota %d retention %s defrag %s refresh %s", c.EtcdQuota.Bytes, c.CompactionRetention.Duration, c.DefragInterval.Duration, c.NodeRefresh.Duration)
	}
	p := writeFile(t, "etcd_quota: 512MiB\ncompaction_retention: 10m\ndefrag_interval: 30m\nnode_refresh: 1m\n")
	c, err = Parse([]string{"--name", "n1", "--advertise-ip", "10.0.0.5", "--config", p, "--etcd-quota", "16MB"})
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdQuota.Bytes != 16e6 || c.CompactionRetention.Duration != 10*time.Minute || c.DefragInterval.Duration != 30*time.Minute || c.NodeRefresh.Duration != time.Minute {
		t.Fatalf("file+flags: quota %d retention %s defrag %s refresh %s", c.EtcdQuota.Bytes, c.CompactionRetention.Duration, c.DefragInterval.Duration, c.NodeRefresh.Duration)
	}
}

func TestFlagsOverFileAndDefaults(t *testing.T) {
	p := writeFile(t, `
name: node-1
advertise_ip: 10.0.0.5
dead_after: 45s
labels: {zone: a, rack: r1}
containers: false
token_file: /nonexistent/token
bridge: br-file
`)
	c, err := Parse([]string{"--config", p, "--dead-after", "1m", "--labels", "zone=b", "--token", "0123456789abcdef0123456789abcdef", "--bridge-subnet6", "none"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DeadAfter.Duration != time.Minute || len(c.Labels) != 1 || c.Labels["zone"] != "b" || c.Bridge != "br-file" {
		t.Fatalf("flags over file: dead-after %s labels %v bridge %q", c.DeadAfter.Duration, c.Labels, c.Bridge)
	}
	if c.Token != "0123456789abcdef0123456789abcdef" || c.TokenFile != "" || c.RunContainers() || c.BridgePrefix6.IsValid() {
		t.Fatalf("token %q file %q containers %v v6 %s", c.Token, c.TokenFile, c.RunContainers(), c.BridgePrefix6)
	}
	// A flag not given never erases the file's setting, even at its default.
	c, err = Parse([]string{"--config", p, "--token", "0123456789abcdef0123456789abcdef", "--containers"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DeadAfter.Duration != 45*time.Second || c.Labels["rack"] != "r1" || !c.RunContainers() {
		t.Fatalf("file kept: dead-after %s labels %v containers %v", c.DeadAfter.Duration, c.Labels, c.RunContainers())
	}

	// Validate fills the defaults of a zero Config.
	d := Config{Name: "n1", AdvertiseIP: "10.0.0.5"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if d.DataDir != "/var/lib/berth/agent" || d.Voters != 3 || d.DeadAfter.Duration != 30*time.Second || d.ElectionTimeout.Duration != time.Second ||
		d.EtcdQuota.Bytes != 2<<30 || d.RescheduleGrace.Duration != 10*time.Second || d.NodeTTL.Duration != 10*time.Second || !d.RunContainers() || d.Bridge != "berth0" ||
		d.BridgePrefix4.IsValid() || d.BridgePrefix6.IsValid() || d.IPv6Off() || d.PeerURL != "https://10.0.0.5:2380" ||
		d.ClusterRanges.IPv4.String() != "10.88.0.0/16" || d.ClusterRanges.NodeBits4 != 24 || d.ClusterRanges.IPv6.IsValid() ||
		d.ClusterRanges.ReclaimAfter() != 24*time.Hour ||
		d.MetricsURL != "http://127.0.0.1:7481" || d.StateDir != "/var/lib/berth" || d.NetNSDir != "/run/berth/netns" {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestNoDefaultFile(t *testing.T) {
	if _, err := os.Stat(DefaultPath); err == nil {
		t.Skip(DefaultPath + " exists here")
	}
	c, err := Parse([]string{"--name", "n1", "--advertise-ip", "10.0.0.5", "--voters", "1"})
	if err != nil || c.Voters != 1 {
		t.Fatalf("no %s: %v %+v", DefaultPath, err, c)
	}
}

func TestSubnetSettings(t *testing.T) {
	base := []string{"--name", "n1", "--advertise-ip", "10.0.0.5"}
	join := []string{"--join", "https://10.0.0.1:7480", "--token", "0123456789abcdef0123456789abcdef.sha256:" + strings.Repeat("ab", 32)}
	tests := []struct {
		name string
		args []string
		want string // "" = valid
	}{
		{"defaults", nil, ""},
		{"bootstrap ranges", []string{"--cluster-subnet", "10.50.0.0/16", "--node-subnet-bits", "26", "--cluster-subnet6", "fd12:3456:789a::/48", "--subnet-reclaim-after", "2h"}, ""},
		{"explicit bridge outside", []string{"--bridge-subnet", "10.231.51.0/24", "--bridge-subnet6", "fd00:231:51::/64"}, ""},
		{"ipv6 off", []string{"--bridge-subnet6", "none"}, ""},
		{"malformed range", []string{"--cluster-subnet", "10.88.0/16"}, `cluster-subnet: "10.88.0/16" is not an IPv4 prefix`},
		{"host bits", []string{"--cluster-subnet", "10.88.1.0/16"}, "write it as 10.88.0.0/16"},
		{"node larger than range", []string{"--cluster-subnet", "10.88.0.0/24", "--node-subnet-bits", "16"}, "node subnet size /16 is larger than the cluster subnet 10.88.0.0/24"},
		{"ipv6 range as ipv4", []string{"--cluster-subnet", "fd00::/48"}, "is not an IPv4 prefix"},
		{"ipv4-mapped ipv6 range", []string{"--cluster-subnet6", "::ffff:10.88.0.0/112"}, "cluster-subnet6"},
		{"ipv6 not ULA", []string{"--cluster-subnet6", "2001:db8::/48"}, "not a unique local"},
		{"bridge inside range", []string{"--bridge-subnet", "10.88.3.0/24"}, "bridge-subnet 10.88.3.0/24 overlaps the cluster range 10.88.0.0/16"},
		{"bridge6 inside range", []string{"--cluster-subnet6", "fd12:3456:789a::/48", "--bridge-subnet6", "fd12:3456:789a:1::/64"}, "bridge-subnet6"},
		{"node address inside", []string{"--cluster-subnet", "10.0.0.0/16"}, "contains this node's address 10.0.0.5"},
		{"joiner's own ranges are not checked", append([]string{"--bridge-subnet", "10.88.3.0/24"}, join...), ""},
		{"reclaim too short", []string{"--subnet-reclaim-after", "500ms"}, "subnet-reclaim-after"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(append(append([]string{}, base...), tc.args...))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("not one line: %q", err)
			}
		})
	}
}
