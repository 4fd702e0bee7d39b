package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/nodedoc"
)

// Options configure an Agent. The settings come from a validated
// config.Config through OptionsFrom, where their defaults live too; New
// refuses a zero setting rather than default it a second time. The hooks
// below them are wired by berth-agent.
type Options struct {
	Name      string
	DataDir   string
	PeerURL   string
	ClientURL string
	APIURL    string
	Join      []string // join API URLs; used only with an empty data dir
	Token     string   // join token text; needed with Join
	Voters    int      // voting members wanted; bootstrap only
	DeadAfter time.Duration
	NodeTTL   time.Duration
	// etcd raft timing.
	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	EtcdLogLevel      string
	// etcd's space (space.go): the backend quota, the history periodic
	// auto-compaction keeps, how often one member may be defragmented.
	QuotaBytes          int64
	CompactionRetention time.Duration
	DefragInterval      time.Duration
	// NodeRefresh is the node document's slow refresh (nodedoc.Publisher's
	// Interval).
	NodeRefresh time.Duration
	// Labels are the node's labels, published in its node document.
	Labels map[string]string

	// EtcdLogOutput is "stderr" (default) or "systemd/journal".
	EtcdLogOutput string
	// ClusterName goes into the CA's name at bootstrap; default "berth".
	ClusterName  string
	AgentVersion string
	Log          *slog.Logger // default slog.Default()
	// TokenOutput receives the join token once, at bootstrap (default stdout).
	TokenOutput func(token string)
	// Collector fills the node document; nil means a default nodedoc.Collector.
	Collector *nodedoc.Collector
	// Containers counts the node's running and all containers for the
	// node document; nil reports zero.
	Containers func() (running, total int)
	// VolumePool reports the node's replicated-volume pool for the node
	// document; nil: none.
	VolumePool func() *nodedoc.VolumePool
	// Draining tells whether the node is being emptied for a reboot, for
	// the node document (the scheduler then moves its replicas away); nil
	// means never. Call Agent.Republish after it changes.
	Draining func() bool
	// Services run beside the agent once it has a cluster client, until
	// the agent stops; an error ends the agent.
	Services []func(ctx context.Context, cli *clientv3.Client) error
	// API adds handlers to the agent's HTTPS API listener, which every
	// node serves; /v1/join is there only on nodes holding the CA key.
	API func(mux *http.ServeMux)
	// RebootSlotHolders names the nodes holding a rollout reboot slot:
	// their members are never defragmented nor removed by self-healing
	// (they are rebooting). nil: none.
	RebootSlotHolders func(ctx context.Context, cli *clientv3.Client) (map[string]bool, error)
	// LeasesSubnets: this node will lease container subnets, which it
	// says when it joins. SubnetRoom, on nodes that admit others, refuses
	// such a join when no subnet is left (agent/subnet.CheckRoom).
	// RestartHold is how long a cleanly stopped agent's node document
	// stays (not ready) so that its replicas are not moved while the
	// agent restarts; 0 removes it at once. SystemStopping, when it says
	// the machine is shutting down, also removes it at once.
	RestartHold    time.Duration
	SystemStopping func() bool
	LeasesSubnets  bool
	SubnetRoom     func(ctx context.Context, cli *clientv3.Client, node string) error
}

// OptionsFrom carries the cluster settings of cfg, which Validate has
// filled and checked, into Options: the one conversion from the user's
// configuration.
func OptionsFrom(cfg config.Config) Options {
	return Options{
		Name: cfg.Name, DataDir: cfg.DataDir,
		PeerURL: cfg.PeerURL, ClientURL: cfg.ClientURL, APIURL: cfg.APIURL,
		Join: cfg.Join, Token: cfg.Token, Voters: cfg.Voters,
		DeadAfter: cfg.DeadAfter.Duration, NodeTTL: cfg.NodeTTL.Duration,
		HeartbeatInterval: cfg.HeartbeatInterval.Duration, ElectionTimeout: cfg.ElectionTimeout.Duration,
		EtcdLogLevel:        cfg.EtcdLogLevel,
		QuotaBytes:          cfg.EtcdQuota.Bytes,
		CompactionRetention: cfg.CompactionRetention.Duration,
		DefragInterval:      cfg.DefragInterval.Duration,
		NodeRefresh:         cfg.NodeRefresh.Duration,
		RestartHold:         cfg.RestartHold.Duration,
		Labels:              cfg.Labels,
	}
}

// check refuses settings left zero, naming each by its configuration
// key; it fills the defaults of the hooks only.
func (o *Options) check() error {
	if err := nodedoc.CheckName(o.Name); err != nil {
		return fmt.Errorf("cluster options: name: %w", err)
	}
	var missing []string
	need := func(unset bool, setting string) {
		if unset {
			missing = append(missing, setting)
		}
	}
	need(o.DataDir == "", "data-dir")
	need(o.PeerURL == "", "peer-url")
	need(o.ClientURL == "", "client-url")
	need(o.APIURL == "", "api-url")
	need(o.Voters <= 0, "voters")
	need(o.DeadAfter <= 0, "dead-after")
	need(o.NodeTTL <= 0, "node-ttl")
	need(o.HeartbeatInterval <= 0, "heartbeat-interval")
	need(o.ElectionTimeout <= 0, "election-timeout")
	need(o.EtcdLogLevel == "", "etcd-log-level")
	need(o.QuotaBytes <= 0, "etcd-quota")
	need(o.CompactionRetention <= 0, "compaction-retention")
	need(o.DefragInterval <= 0, "defrag-interval")
	need(o.NodeRefresh <= 0, "node-refresh")
	if len(missing) > 0 {
		return fmt.Errorf("cluster options: not set: %s (build Options with OptionsFrom a validated config)", strings.Join(missing, ", "))
	}
	if o.ClusterName == "" {
		o.ClusterName = "berth"
	}
	if o.EtcdLogOutput == "" {
		o.EtcdLogOutput = embed.StdErrLogOutput
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.TokenOutput == nil {
		o.TokenOutput = func(token string) { fmt.Printf("berth join token (shown once): %s\n", token) }
	}
	return nil
}
