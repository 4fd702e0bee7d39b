package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/agent/sched"
	"github.com/berth-os/berth/agent/state"
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
func rolloutServices(cfg config.Config, opts *cluster.Options, agent func() *cluster.Agent, log *slog.Logger) error {
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
	apiHost := ""
	if u, err := url.Parse(cfg.APIURL); err == nil {
		apiHost = u.Host
	}
	transport := lazyNodeTransport(cfg.DataDir)
	resolve := func(ref string) string {
		if rest, ok := strings.CutPrefix(ref, rollout.LocalRegistryHost+"/"); ok {
			return apiHost + "/" + rest
		}
		return ref
	}
	var draining atomic.Bool
	prevDraining := opts.Draining
	opts.Draining = func() bool { return draining.Load() || (prevDraining != nil && prevDraining()) }

	var cli *clientv3.Client
	d, err := rollout.NewDriver(rollout.DriverOptions{
		Node: cfg.Name, Group: group, Updater: sys, Log: log,
		Download: func(ctx context.Context, ref string) (int64, error) {
			if tag, ok := strings.CutPrefix(ref, rollout.DefaultPayload("")); ok {
				if err := prunePayloads(ctx, apiHost, tag, transport, log); err != nil {
					log.Warn("prune old OS payloads", "err", err)
				}
			}
			return downloadPayload(ctx, resolve(ref), transport)
		},
		Open: func(ctx context.Context, ref string) (slot.Source, error) {
			keys, err := payload.LoadPublicKeys("/" + layout.KeysDir)
			if err != nil {
				return nil, err
			}
			p, err := payload.Open(ctx, payload.PrefixRegistry+resolve(ref), keys,
				payload.WithRemoteOptions(remote.WithTransport(transport)))
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
		Members: func(ctx context.Context) ([]rollout.Member, error) { return clusterMembers(ctx, cli) },
		CaughtUp: func(ctx context.Context) error {
			a := agent()
			if a == nil || !a.Ready() {
				return fmt.Errorf("agent not ready")
			}
			return caughtUp(ctx, cli, cfg.Name)
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

// downloadPayload reads every blob of the payload at ref through the
// registry (for berth.local, this node's own, which fetches what it lacks
// from the other agents and keeps it), so that installing reads from
// local disk and the other nodes can fetch from this one.
func downloadPayload(ctx context.Context, ref string, rt http.RoundTripper) (int64, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return 0, fmt.Errorf("payload reference: %w", err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(rt))
	if err != nil {
		return 0, err
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}
	total := int64(len(raw))
	for _, l := range layers {
		rc, err := l.Compressed() // verified against its digest while read
		if err != nil {
			return total, err
		}
		n, err := io.Copy(io.Discard, rc)
		total += n
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
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

// clusterMembers is the quorum guard's view: etcd's members, healthy when
// their node document is there (its lease alive) and says ready.
func clusterMembers(ctx context.Context, cli *clientv3.Client) ([]rollout.Member, error) {
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	docs, err := cli.Get(ctx, state.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read node documents: %w", err)
	}
	ready := map[string]bool{}
	for _, kv := range docs.Kvs {
		if n, err := state.ParseNode(kv.Value); err == nil {
			ready[n.Name] = n.Ready
		}
	}
	out := make([]rollout.Member, 0, len(ml.Members))
	for _, m := range ml.Members {
		out = append(out, rollout.Member{Name: m.Name, Voter: !m.IsLearner, Healthy: m.Name != "" && ready[m.Name]})
	}
	return out, nil
}

// caughtUp returns nil when this node's etcd member (if it has one) has
// applied everything the leader had committed a moment ago.
func caughtUp(ctx context.Context, cli *clientv3.Client, node string) error {
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("list etcd members: %w", err)
	}
	var own, leader string
	var leaderID uint64
	for _, ep := range cli.Endpoints() {
		if st, err := cli.Status(ctx, ep); err == nil {
			leaderID = st.Leader
			break
		}
	}
	for _, m := range ml.Members {
		if m.Name == node && len(m.ClientURLs) > 0 {
			own = m.ClientURLs[0]
		}
		if m.ID == leaderID && len(m.ClientURLs) > 0 {
			leader = m.ClientURLs[0]
		}
	}
	if own == "" {
		return nil // no member of its own (a client node): nothing to catch up
	}
	if leader == "" {
		return fmt.Errorf("no etcd leader known")
	}
	ls, err := cli.Status(ctx, leader)
	if err != nil {
		return fmt.Errorf("status of the etcd leader: %w", err)
	}
	mine, err := cli.Status(ctx, own)
	if err != nil {
		return fmt.Errorf("status of this node's etcd member: %w", err)
	}
	if mine.RaftAppliedIndex < ls.RaftIndex {
		return fmt.Errorf("etcd member applied index %d, leader's commit index %d", mine.RaftAppliedIndex, ls.RaftIndex)
	}
	return nil
}

// prunePayloads deletes the OS payloads other than keep (a tag of
// rollout.PayloadRepo) from this node's registry, with the blobs only
// they use: the state partition holds a few payloads at most, and a node
// needs only the one it moves to.
func prunePayloads(ctx context.Context, apiHost, keep string, rt http.RoundTripper, log *slog.Logger) error {
	repo, err := name.NewRepository(apiHost + "/" + rollout.PayloadRepo)
	if err != nil {
		return err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt)}
	tags, err := remote.List(repo, opts...)
	if err != nil {
		return fmt.Errorf("list payloads: %w", err)
	}
	blobsOf := func(tag string) (map[string]bool, string, error) {
		img, err := remote.Image(repo.Tag(tag), opts...)
		if err != nil {
			return nil, "", err
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, "", err
		}
		digest, err := img.Digest()
		if err != nil {
			return nil, "", err
		}
		out := map[string]bool{m.Config.Digest.String(): true}
		for _, l := range m.Layers {
			out[l.Digest.String()] = true
		}
		return out, digest.String(), nil
	}
	kept := map[string]bool{}
	if slices.Contains(tags, keep) {
		if kept, _, err = blobsOf(keep); err != nil {
			return fmt.Errorf("read payload %s: %w", keep, err)
		}
	}
	client := &http.Client{Transport: rt, Timeout: time.Minute}
	for _, tag := range tags {
		if tag == keep {
			continue
		}
		blobs, digest, err := blobsOf(tag)
		if err != nil {
			return fmt.Errorf("read payload %s: %w", tag, err)
		}
		for _, ref := range []string{tag, digest} {
			if err := httpDelete(ctx, client, fmt.Sprintf("https://%s/v2/%s/manifests/%s", apiHost, rollout.PayloadRepo, ref)); err != nil {
				return err
			}
		}
		freed := 0
		for b := range blobs {
			if kept[b] {
				continue
			}
			if err := httpDelete(ctx, client, fmt.Sprintf("https://%s/v2/%s/blobs/%s", apiHost, rollout.PayloadRepo, b)); err != nil {
				return err
			}
			freed++
		}
		log.Info("old OS payload removed from the node's registry", "version", tag, "blobs", freed)
	}
	return nil
}

func httpDelete(ctx context.Context, client *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("delete %s: %w", u, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("delete %s: %s", u, resp.Status)
	}
	return nil
}
