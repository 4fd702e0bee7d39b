// Command berth-agent runs on every berth node: it keeps the node in the
// cluster's embedded etcd (or uses it as a client), publishes the node's
// state, and serves health and metrics.
//
//	berth-agent [--config FILE] [flags]                 run the agent (--help lists the flags)
//	berth-agent issue-ops-cert --data-dir D --out DIR   write ops.crt, ops.key, ca.crt
//	berth-agent issue-cert --admin|--ops|--tenant NAME --data-dir D --out DIR
//	berth-agent node-config [--root DIR]                apply node.yaml (seed disk or ESP) at boot
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/nodeconfig"
	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/pprofserve"
	"github.com/berth-os/berth/internal/sdstate"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(cli.Run(newRoot(), os.Args[1:], os.Stdout, os.Stderr))
}

// newRoot is berth-agent's command tree: the root command runs the agent.
func newRoot() *cobra.Command {
	root := cli.NewRoot("berth-agent", "Run this node's berth agent",
		`Runs this node's member of the cluster's embedded etcd (or a client node
beyond the voter target), publishes the node document under /berth/v1/nodes/
and serves /healthz, /readyz and /metrics on the metrics URL.
With an empty data dir and no --join it bootstraps a new cluster and prints
the join token; with --join and --token it joins an existing one.
Settings come from the YAML file (`+config.DefaultPath+` when present) and
flags override it.

Exit status: 0 stopped cleanly, 1 failed, 2 bad configuration.`, version)
	root.Use = "berth-agent [--config FILE] [flags]"
	root.Args = cobra.NoArgs
	config.AddFlags(root.Flags())
	root.RunE = func(c *cobra.Command, _ []string) error {
		cfg, err := config.Load(c.Flags())
		if err != nil {
			return &cli.ExitError{Code: cli.ExitUsage, Err: err}
		}
		log, underJournal := newLogger(cfg.LogLevel)
		slog.SetDefault(log)
		if err := run(cfg, log, underJournal); err != nil {
			log.Error("berth-agent failed", "err", err)
			return err
		}
		return nil
	}
	root.AddCommand(issueCertCmd(), issueOpsCertCmd(), nodeConfigCmd(), volumeCmd())
	return root
}

// nodeConfigCmd is `node-config`, early at boot: apply node.yaml (seed
// disk or ESP); see agent/nodeconfig, which parses its own flags.
func nodeConfigCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "node-config [--root DIR] [--esp DIR] [--seed-dev auto|none|DEVICE] [--seed-label LABEL] [--seed-wait 3s]",
		Short:              "Apply node.yaml (seed disk or ESP) at boot",
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			if code := nodeconfig.Main(args, c.OutOrStdout(), c.ErrOrStderr()); code != 0 {
				return &cli.ExitError{Code: code}
			}
			return nil
		},
	}
}

func run(cfg config.Config, log *slog.Logger, underJournal bool) error {
	etcdLog := "stderr"
	if underJournal {
		etcdLog = "systemd/journal"
	}
	if err := pprofserve.Start(os.Getenv(pprofserve.Env), log); err != nil {
		return err
	}
	opts := cluster.OptionsFrom(cfg)
	opts.EtcdLogOutput = etcdLog
	opts.AgentVersion = version
	opts.Log = log
	// A voter rebooting for a rollout is neither defragmented nor removed
	// by self-healing.
	opts.RebootSlotHolders = rollout.SlotHolders
	// An agent restart keeps the node (restart_hold); a shutdown does not.
	opts.SystemStopping = sdstate.Stopping
	reg, err := openRegistry(cfg, log)
	if err != nil {
		return err
	}
	if err := workloads(cfg, &opts, reg, log); err != nil {
		return err
	}
	// Services start only once the agent runs, so they can reach it.
	var agentRef atomic.Pointer[cluster.Agent]
	if err := rolloutServices(cfg, &opts, reg.Registry, agentRef.Load, log); err != nil {
		return err
	}
	agent, err := cluster.New(opts)
	if err != nil {
		return err
	}
	agentRef.Store(agent)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv, err := serveHealth(cfg.MetricsURL, agent)
	if err != nil {
		return err
	}
	defer srv.Close()

	go func() {
		select {
		case <-agent.ReadyNotify():
			if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
				log.Warn("sd_notify READY failed", "err", err)
			}
		case <-ctx.Done():
		}
	}()
	go watchdog(ctx, agent, log)

	err = agent.Run(ctx)
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	return err
}

// watchdog pings systemd at half the watchdog interval while the agent is
// healthy. An unreachable cluster is not unhealthy: restarting the node's
// agent would not help and must never disturb its containers.
func watchdog(ctx context.Context, agent *cluster.Agent, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := agent.Healthy(); err != nil {
				log.Warn("watchdog ping withheld", "err", err)
				continue
			}
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

// serveHealth serves /healthz, /readyz and /metrics (etcd's metrics and the
// agent's own, all in the default Prometheus registry).
func serveHealth(rawURL string, agent *cluster.Agent) (*http.Server, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("metrics url: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := agent.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !agent.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok", agent.Role())
	})
	mux.Handle("/metrics", promhttp.Handler())
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics server stopped", "err", err)
		}
	}()
	return srv, nil
}
