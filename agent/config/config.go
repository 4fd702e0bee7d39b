// Package config reads berth-agent's configuration: a strict YAML file
// (unknown keys are errors) overridden by command-line flags. Every error is
// one line that names the offending setting.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/agent/state"
)

// DefaultPath is where the agent looks for its configuration file when
// --config is not given; a missing default file is not an error.
const DefaultPath = "/etc/berth/agent.yaml"

// Config is the agent's complete, validated configuration.
type Config struct {
	Name       string
	DataDir    string
	PeerURL    string // https://IP:2380, etcd peer traffic
	ClientURL  string // https://IP:2379, etcd client API
	APIURL     string // https://IP:7480, the agent's join API
	MetricsURL string // http://127.0.0.1:7481, /healthz /readyz /metrics
	Join       []string
	Token      string // raw token text (from token or token_file); empty when bootstrapping
	Voters     int
	DeadAfter  time.Duration
	NodeTTL    time.Duration // lease TTL of the node document
	// etcd raft timing; short values make tests fast, defaults suit real networks.
	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	LogLevel          string // debug, info, warn, error
	EtcdLogLevel      string // etcd's own (zap) log level
	// etcd's space: the backend quota, how much history auto-compaction
	// keeps (periodic mode), and how often each member may be defragmented.
	EtcdQuotaBytes      int64
	CompactionRetention time.Duration
	DefragInterval      time.Duration
	// NodeRefresh is how often the node document's slowly changing
	// figures (load, free memory, uptime) are rewritten when nothing else
	// changed.
	NodeRefresh time.Duration

	// Workloads (containers). Labels are matched by jobs' node selectors.
	Labels          map[string]string
	Containers      bool   // run containers on this node (and the scheduler)
	StateDir        string // containers, images, volumes, registry, network state
	RescheduleGrace time.Duration
	Bridge          string
	BridgeSubnet4   netip.Prefix
	BridgeSubnet6   netip.Prefix // invalid: IPv6 off for containers
	PortBindIP      string
	CgroupParent    string // tenants' cgroup subtrees live under CgroupParent/tenants/
	NetNSDir        string // containers' named network namespaces
}

// file mirrors the YAML file. Durations are strings ("30s") so that a bare
// number is refused instead of silently meaning nanoseconds.
type file struct {
	Name                string   `yaml:"name"`
	DataDir             string   `yaml:"data_dir"`
	PeerURL             string   `yaml:"peer_url"`
	ClientURL           string   `yaml:"client_url"`
	APIURL              string   `yaml:"api_url"`
	MetricsURL          string   `yaml:"metrics_url"`
	AdvertiseIP         string   `yaml:"advertise_ip"`
	Join                []string `yaml:"join"`
	Token               string   `yaml:"token"`
	TokenFile           string   `yaml:"token_file"`
	Voters              int      `yaml:"voters"`
	DeadAfter           string   `yaml:"dead_after"`
	NodeTTL             string   `yaml:"node_ttl"`
	HeartbeatInterval   string   `yaml:"heartbeat_interval"`
	ElectionTimeout     string   `yaml:"election_timeout"`
	LogLevel            string   `yaml:"log_level"`
	EtcdLogLevel        string   `yaml:"etcd_log_level"`
	EtcdQuota           string   `yaml:"etcd_quota"`
	CompactionRetention string   `yaml:"compaction_retention"`
	DefragInterval      string   `yaml:"defrag_interval"`
	NodeRefresh         string   `yaml:"node_refresh"`

	Labels          map[string]string `yaml:"labels"`
	Containers      *bool             `yaml:"containers"`
	StateDir        string            `yaml:"state_dir"`
	RescheduleGrace string            `yaml:"reschedule_grace"`
	Bridge          string            `yaml:"bridge"`
	BridgeSubnet    string            `yaml:"bridge_subnet"`
	BridgeSubnet6   string            `yaml:"bridge_subnet6"`
	PortBindIP      string            `yaml:"port_bind_ip"`
	CgroupParent    string            `yaml:"cgroup_parent"`
	NetNSDir        string            `yaml:"netns_dir"`
}

func defaults() file {
	return file{
		DataDir:             "/var/lib/berth/agent",
		MetricsURL:          "http://127.0.0.1:7481",
		Voters:              3,
		DeadAfter:           "30s",
		NodeTTL:             state.DefaultTTL.String(),
		HeartbeatInterval:   "100ms",
		ElectionTimeout:     "1s",
		LogLevel:            "info",
		EtcdLogLevel:        "warn",
		EtcdQuota:           "2GiB",
		CompactionRetention: "5m",
		DefragInterval:      "1h",
		NodeRefresh:         "5m",
		StateDir:            "/var/lib/berth",
		RescheduleGrace:     "10s",
		Bridge:              "berth0",
		BridgeSubnet:        "10.88.0.0/24",
		BridgeSubnet6:       "fd42:6265:7274::/64",
		PortBindIP:          "0.0.0.0",
		CgroupParent:        "berth",
		NetNSDir:            "/run/berth/netns",
	}
}

// HelpError is returned by Parse for -h/--help; Print writes the usage.
type HelpError struct{ flags *flag.FlagSet }

func (*HelpError) Error() string { return "help requested" }

// Print writes the usage text with every flag.
func (h *HelpError) Print(w io.Writer) {
	fmt.Fprintf(w, `Usage: berth-agent [flags]
       berth-agent issue-cert --admin|--ops|--tenant NAME [--data-dir DIR] --out DIR
       berth-agent issue-ops-cert --data-dir DIR --out DIR
       berth-agent node-config [--root DIR] [--esp DIR]   (at boot: apply node.yaml)

Runs this node's member of the cluster's embedded etcd (or a client node
beyond the voter target), publishes the node document under /berth/v1/nodes/
and serves /healthz, /readyz and /metrics on the metrics URL.
With an empty data dir and no --join it bootstraps a new cluster and prints
the join token; with --join and --token it joins an existing one.
Settings come from the YAML file (%s when present) and flags override it.

Flags:
`, DefaultPath)
	h.flags.SetOutput(w)
	h.flags.PrintDefaults()
	fmt.Fprintln(w, "\nExit status: 0 stopped cleanly, 1 failed, 2 bad configuration.")
}

// Parse reads flags (args without the program name), the YAML file named by
// --config (or DefaultPath when present), and returns the validated result.
// Flags given on the command line override the file.
func Parse(args []string) (Config, error) {
	fs := flag.NewFlagSet("berth-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var flags file
	configPath := fs.String("config", "", "YAML configuration file (default "+DefaultPath+" when it exists)")
	fs.StringVar(&flags.Name, "name", "", "node name (default: host name)")
	fs.StringVar(&flags.DataDir, "data-dir", "", "data directory")
	fs.StringVar(&flags.PeerURL, "peer-url", "", "etcd peer URL, https://IP:2380")
	fs.StringVar(&flags.ClientURL, "client-url", "", "etcd client URL, https://IP:2379")
	fs.StringVar(&flags.APIURL, "api-url", "", "join API URL, https://IP:7480")
	fs.StringVar(&flags.MetricsURL, "metrics-url", "", "health and metrics URL, http://IP:PORT")
	fs.StringVar(&flags.AdvertiseIP, "advertise-ip", "", "IP used for default URLs (default: first global unicast address)")
	join := fs.String("join", "", "comma-separated join API URLs of existing agents")
	fs.StringVar(&flags.Token, "token", "", "join token SECRET.sha256:HEX, or a bare 32-hex SECRET chosen in advance (bootstrap: adopt it; join: authenticate the CA with it)")
	fs.StringVar(&flags.TokenFile, "token-file", "", "file holding the join token")
	fs.IntVar(&flags.Voters, "voters", 0, "voting members wanted (1, 3 or 5; bootstrap only)")
	fs.StringVar(&flags.DeadAfter, "dead-after", "", "remove a voter whose node document is gone this long")
	fs.StringVar(&flags.NodeTTL, "node-ttl", "", "lease TTL of the node document")
	fs.StringVar(&flags.HeartbeatInterval, "heartbeat-interval", "", "etcd heartbeat interval")
	fs.StringVar(&flags.ElectionTimeout, "election-timeout", "", "etcd election timeout")
	fs.StringVar(&flags.LogLevel, "log-level", "", "debug, info, warn or error")
	fs.StringVar(&flags.EtcdLogLevel, "etcd-log-level", "", "etcd's log level: debug, info, warn or error")
	fs.StringVar(&flags.EtcdQuota, "etcd-quota", "", "etcd backend quota, e.g. 2GiB (writes stop with a NOSPACE alarm beyond it)")
	fs.StringVar(&flags.CompactionRetention, "compaction-retention", "", "etcd history kept by auto-compaction (periodic), e.g. 5m")
	fs.StringVar(&flags.DefragInterval, "defrag-interval", "", "defragment each etcd member at most this often (sooner when space runs low)")
	fs.StringVar(&flags.NodeRefresh, "node-refresh", "", "rewrite the node document's load, free memory and uptime this often when nothing else changed")
	labels := fs.String("labels", "", "node labels KEY=VALUE,... (matched by jobs' node_selector)")
	containers := fs.Bool("containers", true, "run containers and the scheduler on this node")
	fs.StringVar(&flags.StateDir, "state-dir", "", "containers, images, volumes and registry (default /var/lib/berth)")
	fs.StringVar(&flags.RescheduleGrace, "reschedule-grace", "", "how long a node may be gone before its containers run elsewhere")
	fs.StringVar(&flags.Bridge, "bridge", "", "container bridge interface (default berth0)")
	fs.StringVar(&flags.BridgeSubnet, "bridge-subnet", "", "container IPv4 subnet (default 10.88.0.0/24)")
	fs.StringVar(&flags.BridgeSubnet6, "bridge-subnet6", "", "container IPv6 subnet, or none (default fd42:6265:7274::/64)")
	fs.StringVar(&flags.PortBindIP, "port-bind-ip", "", "host address of container port mappings (default 0.0.0.0)")
	fs.StringVar(&flags.NetNSDir, "netns-dir", "", "where containers' network namespaces are pinned (default /run/berth/netns)")
	fs.StringVar(&flags.CgroupParent, "cgroup-parent", "", "cgroup of all containers; tenants get CGROUP/tenants/NAME (default berth)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, &HelpError{flags: fs}
		}
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	merged := defaults()
	path, explicit := *configPath, *configPath != ""
	if !explicit {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decodeStrict(data, &merged); err != nil {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
	case explicit || !errors.Is(err, os.ErrNotExist):
		return Config{}, fmt.Errorf("config file: %w", err)
	}

	// Overlay only the flags actually given, so a flag's zero value never
	// erases a setting from the file.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			merged.Name = flags.Name
		case "data-dir":
			merged.DataDir = flags.DataDir
		case "peer-url":
			merged.PeerURL = flags.PeerURL
		case "client-url":
			merged.ClientURL = flags.ClientURL
		case "api-url":
			merged.APIURL = flags.APIURL
		case "metrics-url":
			merged.MetricsURL = flags.MetricsURL
		case "advertise-ip":
			merged.AdvertiseIP = flags.AdvertiseIP
		case "join":
			merged.Join = splitList(*join)
		case "token":
			merged.Token, merged.TokenFile = flags.Token, ""
		case "token-file":
			merged.TokenFile, merged.Token = flags.TokenFile, ""
		case "voters":
			merged.Voters = flags.Voters
		case "dead-after":
			merged.DeadAfter = flags.DeadAfter
		case "node-ttl":
			merged.NodeTTL = flags.NodeTTL
		case "heartbeat-interval":
			merged.HeartbeatInterval = flags.HeartbeatInterval
		case "election-timeout":
			merged.ElectionTimeout = flags.ElectionTimeout
		case "log-level":
			merged.LogLevel = flags.LogLevel
		case "etcd-log-level":
			merged.EtcdLogLevel = flags.EtcdLogLevel
		case "etcd-quota":
			merged.EtcdQuota = flags.EtcdQuota
		case "compaction-retention":
			merged.CompactionRetention = flags.CompactionRetention
		case "defrag-interval":
			merged.DefragInterval = flags.DefragInterval
		case "node-refresh":
			merged.NodeRefresh = flags.NodeRefresh
		case "labels":
			merged.Labels = map[string]string{}
			for _, kv := range splitList(*labels) {
				k, v, _ := strings.Cut(kv, "=")
				merged.Labels[k] = v
			}
		case "containers":
			merged.Containers = containers
		case "state-dir":
			merged.StateDir = flags.StateDir
		case "reschedule-grace":
			merged.RescheduleGrace = flags.RescheduleGrace
		case "bridge":
			merged.Bridge = flags.Bridge
		case "bridge-subnet":
			merged.BridgeSubnet = flags.BridgeSubnet
		case "bridge-subnet6":
			merged.BridgeSubnet6 = flags.BridgeSubnet6
		case "port-bind-ip":
			merged.PortBindIP = flags.PortBindIP
		case "cgroup-parent":
			merged.CgroupParent = flags.CgroupParent
		case "netns-dir":
			merged.NetNSDir = flags.NetNSDir
		}
	})
	return merged.validate()
}

func decodeStrict(data []byte, into *file) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(into); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: defaults
		}
		// yaml.v3 errors may span lines; the contract is one line.
		return errors.New(strings.Join(strings.Fields(err.Error()), " "))
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (f file) validate() (Config, error) {
	c := Config{
		Name: f.Name, DataDir: f.DataDir, Join: f.Join, Voters: f.Voters,
		LogLevel: f.LogLevel, EtcdLogLevel: f.EtcdLogLevel, MetricsURL: f.MetricsURL,
	}
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return Config{}, fmt.Errorf("name: not set and host name unknown: %w", err)
		}
		c.Name = strings.ToLower(host)
	}
	if err := state.CheckName(c.Name); err != nil {
		return Config{}, fmt.Errorf("name: %w", err)
	}
	if c.DataDir == "" {
		return Config{}, errors.New("data-dir: must not be empty")
	}

	needIP := f.PeerURL == "" || f.ClientURL == "" || f.APIURL == ""
	ip := f.AdvertiseIP
	if ip != "" && net.ParseIP(ip) == nil {
		return Config{}, fmt.Errorf("advertise-ip: %q is not an IP address", ip)
	}
	if needIP && ip == "" {
		detected, err := firstGlobalIP()
		if err != nil {
			return Config{}, fmt.Errorf("peer-url/client-url/api-url: not set and %w; set them or --advertise-ip", err)
		}
		ip = detected
	}
	var err error
	if c.PeerURL, err = checkURL("peer-url", f.PeerURL, "https", ip, 2380); err != nil {
		return Config{}, err
	}
	if c.ClientURL, err = checkURL("client-url", f.ClientURL, "https", ip, 2379); err != nil {
		return Config{}, err
	}
	if c.APIURL, err = checkURL("api-url", f.APIURL, "https", ip, 7480); err != nil {
		return Config{}, err
	}
	if c.MetricsURL, err = checkURL("metrics-url", f.MetricsURL, "http", "", 0); err != nil {
		return Config{}, err
	}
	for i, j := range c.Join {
		if c.Join[i], err = checkURL("join", j, "https", "", 7480); err != nil {
			return Config{}, err
		}
	}

	switch c.Voters {
	case 1, 3, 5:
	default:
		return Config{}, fmt.Errorf("voters: must be 1, 3 or 5 (got %d)", c.Voters)
	}
	durations := []struct {
		name string
		text string
		into *time.Duration
		min  time.Duration
	}{
		{"dead-after", f.DeadAfter, &c.DeadAfter, time.Second},
		{"node-ttl", f.NodeTTL, &c.NodeTTL, time.Second},
		{"heartbeat-interval", f.HeartbeatInterval, &c.HeartbeatInterval, 10 * time.Millisecond},
		{"election-timeout", f.ElectionTimeout, &c.ElectionTimeout, 50 * time.Millisecond},
	}
	for _, d := range durations {
		v, err := time.ParseDuration(d.text)
		if err != nil {
			return Config{}, fmt.Errorf("%s: %q is not a duration like 30s", d.name, d.text)
		}
		if v < d.min {
			return Config{}, fmt.Errorf("%s: %s is shorter than %s", d.name, v, d.min)
		}
		*d.into = v
	}
	if c.NodeTTL%time.Second != 0 {
		return Config{}, fmt.Errorf("node-ttl: %s is not whole seconds (etcd leases count seconds)", c.NodeTTL)
	}
	if c.ElectionTimeout < 5*c.HeartbeatInterval {
		return Config{}, fmt.Errorf("election-timeout: %s must be at least 5 x heartbeat-interval (%s)", c.ElectionTimeout, c.HeartbeatInterval)
	}
	if c.DeadAfter <= c.NodeTTL {
		return Config{}, fmt.Errorf("dead-after: %s must be longer than node-ttl %s", c.DeadAfter, c.NodeTTL)
	}
	for _, lvl := range []struct{ name, v string }{{"log-level", c.LogLevel}, {"etcd-log-level", c.EtcdLogLevel}} {
		switch lvl.v {
		case "debug", "info", "warn", "error":
		default:
			return Config{}, fmt.Errorf("%s: %q must be debug, info, warn or error", lvl.name, lvl.v)
		}
	}

	if err := f.validateSpace(&c); err != nil {
		return Config{}, err
	}
	if err := f.validateWorkloads(&c); err != nil {
		return Config{}, err
	}

	if f.Token != "" && f.TokenFile != "" {
		return Config{}, errors.New("token: set token or token-file, not both")
	}
	c.Token = f.Token
	if f.TokenFile != "" {
		data, err := os.ReadFile(f.TokenFile)
		if err != nil {
			return Config{}, fmt.Errorf("token-file: %w", err)
		}
		c.Token = strings.TrimSpace(string(data))
	}
	if c.Token != "" {
		tok, err := pki.ParseToken(c.Token)
		if err != nil {
			return Config{}, fmt.Errorf("token: %w", err)
		}
		if len(c.Join) == 0 && !tok.Bare() {
			return Config{}, errors.New("token: a bootstrapping node (no join) takes a bare 32-hex secret to adopt, not SECRET.sha256:HEX")
		}
	}
	if len(c.Join) > 0 && c.Token == "" {
		return Config{}, errors.New("join: needs --token or --token-file")
	}
	return c, nil
}

// checkURL fills a missing URL from ip and port (when ip is given) and
// requires scheme://host:port with nothing else.
func checkURL(name, raw, scheme, ip string, port int) (string, error) {
	if raw == "" {
		if ip == "" {
			return "", fmt.Errorf("%s: must not be empty", name)
		}
		raw = scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(port))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%s: %q is not a URL", name, raw)
	}
	if u.Scheme != scheme {
		return "", fmt.Errorf("%s: %q must start with %s://", name, raw, scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return "", fmt.Errorf("%s: %q must name a host and a port", name, raw)
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("%s: %q has an invalid port", name, raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("%s: %q must be only scheme://host:port", name, raw)
	}
	return scheme + "://" + u.Host, nil
}

func firstGlobalIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
			return ipn.IP.String(), nil
		}
	}
	return "", errors.New("no global unicast IPv4 address found")
}

// Bounds of the etcd space settings. Above 8 GiB etcd itself warns (its
// suggested maximum); below 1 MiB not even an empty cluster fits.
const (
	minQuota = 1 << 20
	maxQuota = 8 << 30
)

// validateSpace checks the etcd quota, compaction, defragmentation and
// node document refresh settings.
func (f file) validateSpace(c *Config) error {
	q, err := humanize.ParseBytes(f.EtcdQuota)
	if err != nil {
		return fmt.Errorf("etcd-quota: %q is not a size like 2GiB or 512MiB", f.EtcdQuota)
	}
	if q < minQuota || q > maxQuota {
		return fmt.Errorf("etcd-quota: %s must be between 1MiB and 8GiB", humanize.IBytes(q))
	}
	c.EtcdQuotaBytes = int64(q)
	durations := []struct {
		name, text string
		into       *time.Duration
		min, max   time.Duration
	}{
		// Retention is how long a watcher may lag or be disconnected and
		// still resume without listing again; 0 (off) is not offered.
		{"compaction-retention", f.CompactionRetention, &c.CompactionRetention, time.Second, 24 * time.Hour},
		{"defrag-interval", f.DefragInterval, &c.DefragInterval, time.Second, 7 * 24 * time.Hour},
		{"node-refresh", f.NodeRefresh, &c.NodeRefresh, time.Second, 24 * time.Hour},
	}
	for _, d := range durations {
		v, err := time.ParseDuration(d.text)
		if err != nil {
			return fmt.Errorf("%s: %q is not a duration like 5m", d.name, d.text)
		}
		if v < d.min || v > d.max {
			return fmt.Errorf("%s: %s must be between %s and %s", d.name, v, d.min, d.max)
		}
		*d.into = v
	}
	return nil
}

// validateWorkloads checks the container settings.
func (f file) validateWorkloads(c *Config) error {
	c.Containers = f.Containers == nil || *f.Containers
	c.Labels = map[string]string{}
	for k, v := range f.Labels {
		if err := checkLabel(k, v); err != nil {
			return fmt.Errorf("labels: %w", err)
		}
		c.Labels[k] = v
	}
	if f.StateDir == "" || !filepath.IsAbs(f.StateDir) {
		return fmt.Errorf("state-dir: %q must be an absolute path", f.StateDir)
	}
	c.StateDir = f.StateDir
	grace, err := time.ParseDuration(f.RescheduleGrace)
	if err != nil {
		return fmt.Errorf("reschedule-grace: %q is not a duration like 10s", f.RescheduleGrace)
	}
	if grace < time.Second {
		return fmt.Errorf("reschedule-grace: %s is shorter than 1s (it must outlast an etcd election)", grace)
	}
	c.RescheduleGrace = grace
	if f.Bridge == "" || len(f.Bridge) > 15 {
		return fmt.Errorf("bridge: %q must be an interface name of 1 to 15 characters", f.Bridge)
	}
	c.Bridge = f.Bridge
	if c.BridgeSubnet4, err = netip.ParsePrefix(f.BridgeSubnet); err != nil || !c.BridgeSubnet4.Addr().Is4() {
		return fmt.Errorf("bridge-subnet: %q is not an IPv4 prefix like 10.88.0.0/24", f.BridgeSubnet)
	}
	if f.BridgeSubnet6 != "none" {
		if c.BridgeSubnet6, err = netip.ParsePrefix(f.BridgeSubnet6); err != nil || !c.BridgeSubnet6.Addr().Is6() {
			return fmt.Errorf("bridge-subnet6: %q is not an IPv6 prefix like fd42:6265:7274::/64 (or none)", f.BridgeSubnet6)
		}
	}
	if net.ParseIP(f.PortBindIP) == nil {
		return fmt.Errorf("port-bind-ip: %q is not an IP address", f.PortBindIP)
	}
	c.PortBindIP = f.PortBindIP
	if f.CgroupParent == "" || strings.HasPrefix(f.CgroupParent, "/") || strings.Contains(f.CgroupParent, "..") {
		return fmt.Errorf("cgroup-parent: %q must be a relative cgroup path like berth", f.CgroupParent)
	}
	c.CgroupParent = f.CgroupParent
	if !filepath.IsAbs(f.NetNSDir) {
		return fmt.Errorf("netns-dir: %q must be an absolute path", f.NetNSDir)
	}
	c.NetNSDir = f.NetNSDir
	return nil
}

// checkLabel accepts label keys and values that are safe in a node
// document and a job's node selector.
func checkLabel(k, v string) error {
	if k == "" || len(k) > 63 || len(v) > 63 {
		return fmt.Errorf("%q=%q: keys are 1-63 characters, values at most 63", k, v)
	}
	for _, s := range []string{k, v} {
		for _, r := range s {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r)) {
				return fmt.Errorf("%q=%q: character %q not allowed (use letters, digits, - _ . /)", k, v, r)
			}
		}
	}
	return nil
}
