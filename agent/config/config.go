// Package config reads berth-agent's configuration: a strict YAML file
// (unknown keys are errors) overridden by command-line flags. Every error is
// one line that names the offending setting.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/agent/subnet"
)

// DefaultPath is where the agent looks for its configuration file when
// --config is not given; a missing default file is not an error.
const DefaultPath = "/etc/berth/agent.yaml"

// DefaultRescheduleGrace is how long the scheduler waits after a node's
// document expired before moving its replicas. 2 s was tried: on
// software-emulated nodes a live node's lease lapsed and its document was
// back within seconds, and the full CI run moved its replicas; 10 s
// absorbs that.
const DefaultRescheduleGrace = 10 * time.Second

// Config is the agent's whole configuration: the YAML file's keys (yaml
// tags) and the flags (BindFlags) are the same fields. Validate fills the
// defaults of unset fields, checks every setting and derives the rest.
type Config struct {
	Name        string   `yaml:"name"`
	DataDir     string   `yaml:"data_dir"`
	PeerURL     string   `yaml:"peer_url"`    // https://IP:2380, etcd peer traffic
	ClientURL   string   `yaml:"client_url"`  // https://IP:2379, etcd client API
	APIURL      string   `yaml:"api_url"`     // https://IP:7480, the agent's join API
	MetricsURL  string   `yaml:"metrics_url"` // http://127.0.0.1:7481, /healthz /readyz /metrics
	AdvertiseIP string   `yaml:"advertise_ip"`
	Join        []string `yaml:"join"`
	// Token is the raw token text; after Validate it holds token_file's
	// content too (and TokenFile is cleared). Empty when bootstrapping.
	Token     string   `yaml:"token"`
	TokenFile string   `yaml:"token_file"`
	Voters    int      `yaml:"voters"`
	DeadAfter Duration `yaml:"dead_after"`
	NodeTTL   Duration `yaml:"node_ttl"` // lease TTL of the node document
	// etcd raft timing; short values make tests fast, defaults suit real networks.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	ElectionTimeout   Duration `yaml:"election_timeout"`
	LogLevel          string   `yaml:"log_level"`      // debug, info, warn, error
	EtcdLogLevel      string   `yaml:"etcd_log_level"` // etcd's own (zap) log level
	// etcd's space: the backend quota, how much history auto-compaction
	// keeps (periodic mode), and how often each member may be defragmented.
	EtcdQuota           Size     `yaml:"etcd_quota"`
	CompactionRetention Duration `yaml:"compaction_retention"`
	DefragInterval      Duration `yaml:"defrag_interval"`
	// NodeRefresh is how often the node document's slowly changing
	// figures (load, free memory, uptime) are rewritten when nothing else
	// changed.
	NodeRefresh Duration `yaml:"node_refresh"`
	// RestartHold is how long a cleanly stopped agent's node document
	// stays, not ready, so that an agent restart does not move the node's
	// running replicas (not when the machine shuts down); 0s: off.
	RestartHold Duration `yaml:"restart_hold"`

	// Workloads (containers). Labels are matched by jobs' node selectors.
	Labels          map[string]string `yaml:"labels"`
	Containers      *bool             `yaml:"containers"` // run containers on this node (and the scheduler); nil: true
	StateDir        string            `yaml:"state_dir"`  // containers, images, volumes, registry, network state
	RescheduleGrace Duration          `yaml:"reschedule_grace"`
	Bridge          string            `yaml:"bridge"`
	// BridgeSubnet and BridgeSubnet6 are empty by default: the node
	// leases its subnets from the cluster ranges. Set, they are a
	// node-local network outside those ranges (no lease of that family).
	BridgeSubnet  string `yaml:"bridge_subnet"`
	BridgeSubnet6 string `yaml:"bridge_subnet6"` // "none": IPv6 off for containers
	// The cluster's container ranges, used by the bootstrapping node only
	// (stored in etcd; joining nodes take them from there).
	ClusterSubnet      string   `yaml:"cluster_subnet"`
	NodeSubnetBits     int      `yaml:"node_subnet_bits"`
	ClusterSubnet6     string   `yaml:"cluster_subnet6"` // empty: a random ULA /48 at bootstrap
	SubnetReclaimAfter Duration `yaml:"subnet_reclaim_after"`
	PortBindIP         string   `yaml:"port_bind_ip"`
	// ClusterNetwork is how this node reaches other nodes' containers:
	// "auto" (direct routes to nodes on a shared link, VXLAN to others)
	// or "vxlan" (VXLAN to every node).
	ClusterNetwork string `yaml:"cluster_network"`
	CgroupParent   string `yaml:"cgroup_parent"` // tenants' cgroup subtrees live under CgroupParent/tenants/
	NetNSDir       string `yaml:"netns_dir"`     // containers' named network namespaces

	// Derived by Validate.
	BridgePrefix4 netip.Prefix `yaml:"-"` // invalid: leased
	BridgePrefix6 netip.Prefix `yaml:"-"` // invalid: leased, or IPv6 off (bridge_subnet6: none)
	// ClusterRanges are the ranges a bootstrapping node stores; IPv6
	// invalid: a random ULA /48 chosen then.
	ClusterRanges subnet.Ranges `yaml:"-"`
}

// IPv6Off reports whether containers on this node get no IPv6 address.
func (c *Config) IPv6Off() bool { return c.BridgeSubnet6 == "none" }

// RunContainers reports whether this node runs containers (default true).
func (c *Config) RunContainers() bool { return c.Containers == nil || *c.Containers }

// setDefaults fills every unset setting that has a fixed default. These
// are the only defaults: cluster.New refuses a zero setting.
func (c *Config) setDefaults() {
	str := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	dur := func(p *Duration, v time.Duration) {
		if !p.isSet() {
			*p = Duration{Duration: v}
		}
	}
	str(&c.DataDir, "/var/lib/berth/agent")
	str(&c.MetricsURL, "http://127.0.0.1:7481")
	if c.Voters == 0 {
		c.Voters = 3
	}
	dur(&c.DeadAfter, 30*time.Second)
	dur(&c.NodeTTL, nodedoc.DefaultTTL)
	dur(&c.HeartbeatInterval, 100*time.Millisecond)
	dur(&c.ElectionTimeout, time.Second)
	str(&c.LogLevel, "info")
	str(&c.EtcdLogLevel, "warn")
	if !c.EtcdQuota.isSet() {
		c.EtcdQuota = Size{Bytes: 2 << 30}
	}
	dur(&c.CompactionRetention, 5*time.Minute)
	dur(&c.DefragInterval, time.Hour)
	dur(&c.NodeRefresh, nodedoc.DefaultRefresh)
	dur(&c.RestartHold, time.Minute)
	dur(&c.RescheduleGrace, DefaultRescheduleGrace)
	str(&c.StateDir, "/var/lib/berth")
	str(&c.Bridge, "berth0")
	str(&c.ClusterSubnet, subnet.DefaultIPv4)
	if c.NodeSubnetBits == 0 {
		c.NodeSubnetBits = subnet.DefaultNodeBits4
	}
	dur(&c.SubnetReclaimAfter, subnet.DefaultReclaimAfter)
	str(&c.PortBindIP, "0.0.0.0")
	str(&c.ClusterNetwork, "auto")
	str(&c.CgroupParent, "berth")
	str(&c.NetNSDir, "/run/berth/netns")
	if c.Containers == nil {
		yes := true
		c.Containers = &yes
	}
}

// Defaults is a Config with every fixed default filled in (flags show
// them in --help).
func Defaults() Config {
	var c Config
	c.setDefaults()
	return c
}

// BindFlags defines one flag per setting on fs, bound to c's fields.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Name, "name", c.Name, "node name (default: host name)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory")
	fs.StringVar(&c.PeerURL, "peer-url", c.PeerURL, "etcd peer URL, https://IP:2380")
	fs.StringVar(&c.ClientURL, "client-url", c.ClientURL, "etcd client URL, https://IP:2379")
	fs.StringVar(&c.APIURL, "api-url", c.APIURL, "join API URL, https://IP:7480")
	fs.StringVar(&c.MetricsURL, "metrics-url", c.MetricsURL, "health and metrics URL, http://IP:PORT")
	fs.StringVar(&c.AdvertiseIP, "advertise-ip", c.AdvertiseIP, "IP used for default URLs (default: first global unicast address)")
	fs.Var((*listValue)(&c.Join), "join", "comma-separated join API URLs of existing agents")
	fs.Var(&tokenValue{c, false}, "token", "join token SECRET.sha256:HEX, or a bare 32-hex SECRET chosen in advance (bootstrap: adopt it; join: authenticate the CA with it)")
	fs.Var(&tokenValue{c, true}, "token-file", "file holding the join token")
	fs.IntVar(&c.Voters, "voters", c.Voters, "voting members wanted (1, 3 or 5; bootstrap only)")
	fs.Var(&c.DeadAfter, "dead-after", "remove a voter whose node document is gone this long")
	fs.Var(&c.NodeTTL, "node-ttl", "lease TTL of the node document")
	fs.Var(&c.HeartbeatInterval, "heartbeat-interval", "etcd heartbeat interval")
	fs.Var(&c.ElectionTimeout, "election-timeout", "etcd election timeout")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.EtcdLogLevel, "etcd-log-level", c.EtcdLogLevel, "etcd's log level: debug, info, warn or error")
	fs.Var(&c.EtcdQuota, "etcd-quota", "etcd backend quota, e.g. 2GiB (writes stop with a NOSPACE alarm beyond it)")
	fs.Var(&c.CompactionRetention, "compaction-retention", "etcd history kept by auto-compaction (periodic), e.g. 5m")
	fs.Var(&c.DefragInterval, "defrag-interval", "defragment each etcd member at most this often (sooner when space runs low)")
	fs.Var(&c.NodeRefresh, "node-refresh", "rewrite the node document's load, free memory and uptime this often when nothing else changed")
	fs.Var(&c.RestartHold, "restart-hold", "keep a cleanly stopped agent's node (not ready) this long so an agent restart does not move its replicas; 0s: off")
	fs.Var((*labelsValue)(&c.Labels), "labels", "node labels KEY=VALUE,... (matched by jobs' node_selector)")
	f := fs.VarPF(boolFlag{&c.Containers}, "containers", "", "run containers and the scheduler on this node")
	f.NoOptDefVal = "true"
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "containers, images, volumes and registry")
	fs.Var(&c.RescheduleGrace, "reschedule-grace", "how long a node may be gone before its containers run elsewhere")
	fs.StringVar(&c.Bridge, "bridge", c.Bridge, "container bridge interface")
	fs.StringVar(&c.BridgeSubnet, "bridge-subnet", c.BridgeSubnet, "this node's container IPv4 subnet, outside cluster-subnet (default: leased from cluster-subnet)")
	fs.StringVar(&c.BridgeSubnet6, "bridge-subnet6", c.BridgeSubnet6, "this node's container IPv6 subnet outside cluster-subnet6, or none (default: a /64 leased from cluster-subnet6)")
	fs.StringVar(&c.ClusterSubnet, "cluster-subnet", c.ClusterSubnet, "the cluster's container IPv4 range, each node leasing a /node-subnet-bits of it (bootstrap only)")
	fs.IntVar(&c.NodeSubnetBits, "node-subnet-bits", c.NodeSubnetBits, "prefix length of each node's IPv4 subnet (bootstrap only)")
	fs.StringVar(&c.ClusterSubnet6, "cluster-subnet6", c.ClusterSubnet6, "the cluster's container IPv6 range, a ULA; nodes lease /64s (bootstrap only; default: a random fdXX:XXXX:XXXX::/48)")
	fs.Var(&c.SubnetReclaimAfter, "subnet-reclaim-after", "how long a node must be gone before its subnets are leased to others (bootstrap only)")
	fs.StringVar(&c.PortBindIP, "port-bind-ip", c.PortBindIP, "host address of container port mappings")
	fs.StringVar(&c.ClusterNetwork, "cluster-network", c.ClusterNetwork, "how other nodes' containers are reached: auto (direct routes on a shared link, else VXLAN) or vxlan")
	fs.StringVar(&c.NetNSDir, "netns-dir", c.NetNSDir, "where containers' network namespaces are pinned")
	fs.StringVar(&c.CgroupParent, "cgroup-parent", c.CgroupParent, "cgroup of all containers; tenants get CGROUP/tenants/NAME")
}

// ConfigFlag is the flag naming the YAML file.
const ConfigFlag = "config"

// AddFlags defines --config and every setting's flag on fs; Load reads
// them back.
func AddFlags(fs *pflag.FlagSet) {
	fs.String(ConfigFlag, "", "YAML configuration file (default "+DefaultPath+" when it exists)")
	c := Defaults()
	c.BindFlags(fs)
}

// Load reads the YAML file named by fs's --config flag (or DefaultPath
// when present), overrides it with the flags of fs given on the command
// line, and returns the validated result. fs was set up by AddFlags.
func Load(fs *pflag.FlagSet) (Config, error) {
	var c Config
	path, _ := fs.GetString(ConfigFlag)
	explicit := path != ""
	if !explicit {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decodeStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
	case explicit || !errors.Is(err, os.ErrNotExist):
		return Config{}, fmt.Errorf("config file: %w", err)
	}
	// Apply only the flags actually given, so a flag's default never
	// erases a setting from the file: the same flags bound to c take the
	// given values again (in name order: token-file after token wins).
	onFile := pflag.NewFlagSet("file", pflag.ContinueOnError)
	c.BindFlags(onFile)
	var flagErr error
	fs.Visit(func(f *pflag.Flag) {
		if f.Name != ConfigFlag && flagErr == nil {
			flagErr = onFile.Set(f.Name, f.Value.String())
		}
	})
	if flagErr != nil {
		return Config{}, fmt.Errorf("flags: %w", flagErr)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Parse reads flags (args without the program name) and the YAML file, as
// berth-agent does (see Load).
func Parse(args []string) (Config, error) {
	fs := pflag.NewFlagSet("berth-agent", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return Load(fs)
}

func decodeStrict(data []byte, into *Config) error {
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

// Validate fills the defaults of unset settings, checks every setting and
// derives the rest (URLs from the advertise IP, the name from the host
// name, the token from token_file, the bridge prefixes). Each error is one
// line naming the setting.
func (c *Config) Validate() error {
	c.setDefaults()
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("name: not set and host name unknown: %w", err)
		}
		c.Name = strings.ToLower(host)
	}
	if err := nodedoc.CheckName(c.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}

	needIP := c.PeerURL == "" || c.ClientURL == "" || c.APIURL == ""
	ip := c.AdvertiseIP
	if ip != "" && net.ParseIP(ip) == nil {
		return fmt.Errorf("advertise-ip: %q is not an IP address", ip)
	}
	if needIP && ip == "" {
		detected, err := firstGlobalIP()
		if err != nil {
			return fmt.Errorf("peer-url/client-url/api-url: not set and %w; set them or --advertise-ip", err)
		}
		ip = detected
	}
	var err error
	if c.PeerURL, err = checkURL("peer-url", c.PeerURL, "https", ip, 2380); err != nil {
		return err
	}
	if c.ClientURL, err = checkURL("client-url", c.ClientURL, "https", ip, 2379); err != nil {
		return err
	}
	if c.APIURL, err = checkURL("api-url", c.APIURL, "https", ip, 7480); err != nil {
		return err
	}
	if c.MetricsURL, err = checkURL("metrics-url", c.MetricsURL, "http", "", 0); err != nil {
		return err
	}
	for i, j := range c.Join {
		if c.Join[i], err = checkURL("join", j, "https", "", 7480); err != nil {
			return err
		}
	}

	switch c.Voters {
	case 1, 3, 5:
	default:
		return fmt.Errorf("voters: must be 1, 3 or 5 (got %d)", c.Voters)
	}
	durations := []struct {
		name string
		d    *Duration
		min  time.Duration
	}{
		{"dead-after", &c.DeadAfter, time.Second},
		{"node-ttl", &c.NodeTTL, time.Second},
		{"heartbeat-interval", &c.HeartbeatInterval, 10 * time.Millisecond},
		{"election-timeout", &c.ElectionTimeout, 50 * time.Millisecond},
	}
	for _, d := range durations {
		if err := d.d.parse(d.name, "30s"); err != nil {
			return err
		}
		if d.d.Duration < d.min {
			return fmt.Errorf("%s: %s is shorter than %s", d.name, d.d.Duration, d.min)
		}
	}
	if c.NodeTTL.Duration%time.Second != 0 {
		return fmt.Errorf("node-ttl: %s is not whole seconds (etcd leases count seconds)", c.NodeTTL.Duration)
	}
	if c.ElectionTimeout.Duration < 5*c.HeartbeatInterval.Duration {
		return fmt.Errorf("election-timeout: %s must be at least 5 x heartbeat-interval (%s)", c.ElectionTimeout.Duration, c.HeartbeatInterval.Duration)
	}
	if c.DeadAfter.Duration <= c.NodeTTL.Duration {
		return fmt.Errorf("dead-after: %s must be longer than node-ttl %s", c.DeadAfter.Duration, c.NodeTTL.Duration)
	}
	for _, lvl := range []struct{ name, v string }{{"log-level", c.LogLevel}, {"etcd-log-level", c.EtcdLogLevel}} {
		switch lvl.v {
		case "debug", "info", "warn", "error":
		default:
			return fmt.Errorf("%s: %q must be debug, info, warn or error", lvl.name, lvl.v)
		}
	}

	if err := c.validateSpace(); err != nil {
		return err
	}
	if err := c.validateWorkloads(); err != nil {
		return err
	}

	if c.Token != "" && c.TokenFile != "" {
		return errors.New("token: set token or token-file, not both")
	}
	if c.TokenFile != "" {
		data, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("token-file: %w", err)
		}
		c.Token, c.TokenFile = strings.TrimSpace(string(data)), ""
	}
	if c.Token != "" {
		tok, err := pki.ParseToken(c.Token)
		if err != nil {
			return fmt.Errorf("token: %w", err)
		}
		if len(c.Join) == 0 && !tok.Bare() {
			return errors.New("token: a bootstrapping node (no join) takes a bare 32-hex secret to adopt, not SECRET.sha256:HEX")
		}
	}
	if len(c.Join) > 0 && c.Token == "" {
		return errors.New("join: needs --token or --token-file")
	}
	return nil
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
func (c *Config) validateSpace() error {
	if c.EtcdQuota.text != "" {
		q, err := humanize.ParseBytes(c.EtcdQuota.text)
		if err != nil {
			return fmt.Errorf("etcd-quota: %q is not a size like 2GiB or 512MiB", c.EtcdQuota.text)
		}
		c.EtcdQuota = Size{Bytes: int64(q)}
	}
	if q := c.EtcdQuota.Bytes; q < minQuota || q > maxQuota {
		return fmt.Errorf("etcd-quota: %s must be between 1MiB and 8GiB", humanize.IBytes(uint64(max(q, 0))))
	}
	durations := []struct {
		name     string
		d        *Duration
		min, max time.Duration
	}{
		// Retention is how long a watcher may lag or be disconnected and
		// still resume without listing again; 0 (off) is not offered.
		{"compaction-retention", &c.CompactionRetention, time.Second, 24 * time.Hour},
		{"defrag-interval", &c.DefragInterval, time.Second, 7 * 24 * time.Hour},
		{"node-refresh", &c.NodeRefresh, time.Second, 24 * time.Hour},
		{"restart-hold", &c.RestartHold, 0, time.Hour},
	}
	for _, d := range durations {
		if err := d.d.parse(d.name, "5m"); err != nil {
			return err
		}
		if v := d.d.Duration; v < d.min || v > d.max {
			return fmt.Errorf("%s: %s must be between %s and %s", d.name, v, d.min, d.max)
		}
	}
	return nil
}

// validateWorkloads checks the container settings.
func (c *Config) validateWorkloads() error {
	labels := map[string]string{}
	for k, v := range c.Labels {
		if err := checkLabel(k, v); err != nil {
			return fmt.Errorf("labels: %w", err)
		}
		labels[k] = v
	}
	c.Labels = labels
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state-dir: %q must be an absolute path", c.StateDir)
	}
	if err := c.RescheduleGrace.parse("reschedule-grace", DefaultRescheduleGrace.String()); err != nil {
		return err
	}
	if grace := c.RescheduleGrace.Duration; grace < time.Second {
		return fmt.Errorf("reschedule-grace: %s is shorter than 1s (it must outlast an etcd election)", grace)
	}
	if len(c.Bridge) > 15 {
		return fmt.Errorf("bridge: %q must be an interface name of 1 to 15 characters", c.Bridge)
	}
	if err := c.validateSubnets(); err != nil {
		return err
	}
	if _, err := netip.ParseAddr(c.PortBindIP); err != nil {
		return fmt.Errorf("port-bind-ip: %q is not an IP address", c.PortBindIP)
	}
	if c.ClusterNetwork != "auto" && c.ClusterNetwork != "vxlan" {
		return fmt.Errorf("cluster-network: %q is not auto or vxlan", c.ClusterNetwork)
	}
	if strings.HasPrefix(c.CgroupParent, "/") || strings.Contains(c.CgroupParent, "..") {
		return fmt.Errorf("cgroup-parent: %q must be a relative cgroup path like berth", c.CgroupParent)
	}
	if !filepath.IsAbs(c.NetNSDir) {
		return fmt.Errorf("netns-dir: %q must be an absolute path", c.NetNSDir)
	}
	return nil
}

// validateSubnets checks the cluster ranges and the node's explicit
// bridge subnets. The ranges matter only on the bootstrapping node (no
// join), so only there are the bridge subnets and the node's address
// checked against them; every node checks again against the stored
// ranges when it leases.
func (c *Config) validateSubnets() error {
	var err error
	c.BridgePrefix4, c.BridgePrefix6 = netip.Prefix{}, netip.Prefix{}
	if c.BridgeSubnet != "" {
		if c.BridgePrefix4, err = netip.ParsePrefix(c.BridgeSubnet); err != nil || !c.BridgePrefix4.Addr().Is4() {
			return fmt.Errorf("bridge-subnet: %q is not an IPv4 prefix like 10.231.0.0/24", c.BridgeSubnet)
		}
	}
	if c.BridgeSubnet6 != "" && !c.IPv6Off() {
		if c.BridgePrefix6, err = netip.ParsePrefix(c.BridgeSubnet6); err != nil || !c.BridgePrefix6.Addr().Is6() {
			return fmt.Errorf("bridge-subnet6: %q is not an IPv6 prefix like fd42:6265:7274::/64 (or none)", c.BridgeSubnet6)
		}
	}
	r := subnet.Ranges{NodeBits4: c.NodeSubnetBits}
	if r.IPv4, err = netip.ParsePrefix(c.ClusterSubnet); err != nil {
		return fmt.Errorf("cluster-subnet: %q is not an IPv4 prefix like %s", c.ClusterSubnet, subnet.DefaultIPv4)
	}
	if err := subnet.CheckIPv4(r.IPv4, r.NodeBits4); err != nil {
		return fmt.Errorf("cluster-subnet/node-subnet-bits: %w", err)
	}
	if c.ClusterSubnet6 != "" {
		if r.IPv6, err = netip.ParsePrefix(c.ClusterSubnet6); err != nil {
			return fmt.Errorf("cluster-subnet6: %q is not an IPv6 prefix like fd5a:1f03:9c2e::/48", c.ClusterSubnet6)
		}
		if err := subnet.CheckIPv6(r.IPv6); err != nil {
			return fmt.Errorf("cluster-subnet6: %w", err)
		}
	}
	if err := c.SubnetReclaimAfter.parse("subnet-reclaim-after", "24h"); err != nil {
		return err
	}
	if d := c.SubnetReclaimAfter.Duration; d < time.Second || d%time.Second != 0 {
		return fmt.Errorf("subnet-reclaim-after: %s must be whole seconds, at least 1s", d)
	}
	r.ReclaimAfterSeconds = int64(c.SubnetReclaimAfter.Duration / time.Second)
	c.ClusterRanges = r
	if len(c.Join) > 0 {
		return nil
	}
	if err := subnet.CheckOwn("bridge-subnet", c.BridgePrefix4, r.IPv4); err != nil {
		return err
	}
	if err := subnet.CheckOwn("bridge-subnet6", c.BridgePrefix6, r.IPv6); err != nil {
		return err
	}
	return r.CheckAddrs(c.NodeAddrs())
}

// NodeAddrs are the node's own addresses named by its URLs (after
// Validate), which the container ranges must not hold.
func (c *Config) NodeAddrs() []netip.Addr {
	var out []netip.Addr
	for _, raw := range []string{c.PeerURL, c.ClientURL, c.APIURL} {
		if u, err := url.Parse(raw); err == nil {
			if a, err := netip.ParseAddr(u.Hostname()); err == nil && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
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
