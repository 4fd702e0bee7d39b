package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/google/go-containerregistry/pkg/name"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/registry"
	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/agent/sched"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
	"github.com/berth-os/berth/updater/slot"
)

// GroupLabel is the node label that names a node's rollout group.
const GroupLabel = "group"

// drainTimeout bounds the wait for a node's containers to run elsewhere
// before a rollout reboot; past it the node reboots anyway (the scheduler
// found no other node for what is left).
const drainTimeout = 2 * time.Minute

// rolloutServices adds the rollout leader (every node campaigns) and, on a
// berth node (booted from an A/B slot), the node's rollout driver.
func rolloutServices(cfg config.Config, opts *cluster.Options, reg *registry.Registry, agent func() *cluster.Agent, log *slog.Logger) error {
	log = log.With("component", "rollout")
	leader := &rollout.Leader{Node: cfg.Name, Log: log}
	opts.Services = append(opts.Services, leader.Run)

	sys := slot.System{Log: log}
	if _, err := sys.Status(); err != nil {
		log.Info("not booted from a berth slot: OS rollouts are not driven on this node", "reason", err)
		return nil
	}
	group := cfg.Labels[GroupLabel]
	if group != "" {
		if err := rollout.CheckNodeGroup(group); err != nil {
			return fmt.Errorf("label %s=%q: %w", GroupLabel, group, err)
		}
	}
	// The driver reads its own registry in process, as this node: no TLS
	// hop to itself; what the registry lacks it fetches from the peers.
	// A payload outside the cluster (--payload REF) is read from there.
	local := reg.LocalTransport(registry.Identity{Role: registry.RoleNode, Name: cfg.Name})
	outside := lazyNodeTransport(cfg.DataDir)
	transportFor := func(ref string) http.RoundTripper {
		if strings.HasPrefix(ref, rollout.LocalRegistryHost+"/") {
			return local
		}
		return outside
	}
	var draining atomic.Bool
	prevDraining := opts.Draining
	opts.Draining = func() bool { return draining.Load() || (prevDraining != nil && prevDraining()) }

	var cli *clientv3.Client
	d, err := rollout.NewDriver(rollout.DriverOptions{
		Node: cfg.Name, Group: group, Updater: sys, Log: log,
		Download: func(ctx context.Context, ref string) (int64, error) {
			if tag, ok := strings.CutPrefix(ref, rollout.DefaultPayload("")); ok {
				prunePayloads(ctx, reg, tag, log)
			}
			r, err := name.ParseReference(ref)
			if err != nil {
				return 0, fmt.Errorf("payload reference: %w", err)
			}
			return (&registry.Client{Transport: transportFor(ref)}).Download(ctx, r)
		},
		Open: func(ctx context.Context, ref string) (slot.Source, error) {
			keys, err := payload.LoadPublicKeys("/" + layout.KeysDir)
			if err != nil {
				return nil, err
			}
			p, err := payload.Open(ctx, payload.PrefixRegistry+ref, keys, payload.WithTransport(transportFor(ref)))
			if err != nil {
				return nil, err
			}
			return slot.PayloadSource(p), nil
		},
		Reboot: rebootNode,
		Drain: func(ctx context.Context) error {
			draining.Store(true)
			if a := agent(); a != nil {
				a.Republish()
			}
			left, err := sched.WaitDrained(ctx, cli, cfg.Name, drainTimeout)
			if err != nil {
				return err
			}
			if left > 0 {
				log.Warn("rebooting with replicas left on this node: no other node took them", "replicas", left)
			}
			return nil
		},
		BootID: func() (string, error) {
			b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
			if err != nil {
				return "", fmt.Errorf("boot id: %w", err)
			}
			return strings.TrimSpace(string(b)), nil
		},
		Members: func(ctx context.Context) ([]rollout.Member, error) { return rollout.ClusterMembers(ctx, cli) },
		CaughtUp: func(ctx context.Context) error {
			a := agent()
			if a == nil || !a.Ready() {
				return fmt.Errorf("agent not ready")
			}
			return rollout.CaughtUp(ctx, cli, cfg.Name)
		},
	})
	if err != nil {
		return err
	}
	opts.Services = append(opts.Services, func(ctx context.Context, c *clientv3.Client) error {
		cli = c
		return d.Run(ctx, c)
	})
	return nil
}

// rebootNode asks systemd for a clean reboot.
func rebootNode(ctx context.Context) error {
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	if _, err := conn.StartUnitContext(ctx, "reboot.target", "replace-irreversibly", nil); err != nil {
		return fmt.Errorf("start reboot.target: %w", err)
	}
	return nil
}

// prunePayloads removes the OS payloads other than keep (a tag of
// rollout.PayloadRepo) from this node's registry storage, with the blobs
// only they use: the state partition holds a few payloads at most, and a
// node needs only the one it moves to. It goes in process, not over the
// registry API, where a node may not delete and a tag delete would remove
// the version for the whole cluster; tags stay, and a node that needs an
// old payload again fetches it from a peer. A failure is logged, not
// returned: the download goes on.
func prunePayloads(ctx context.Context, reg *registry.Registry, keep string, log *slog.Logger) {
	freed, err := reg.PruneLocal(ctx, rollout.PayloadRepo, keep)
	if freed > 0 {
		log.Info("old OS payloads removed from the node's registry storage", "kept", keep, "freed_bytes", freed)
	}
	if err != nil {
		log.Warn("prune old OS payloads", "err", err)
	}
}
