package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/internal/atomicfile"
)

// rejoinFile holds what a removed member needs to join again after its
// cluster data was cleared: the join token and the agents it last knew.
const rejoinFile = "rejoin.json"

type rejoinInfo struct {
	Join  []string `json:"join"`
	Token string   `json:"token"`
}

var errMemberRemoved = errors.New("etcd: the member has been permanently removed from the cluster")

// isRemovedMember recognises etcd's answer to a member that was removed
// while it was away (it refuses to start again from its old data).
func isRemovedMember(err error) bool {
	return errors.Is(err, errMemberRemoved) || strings.Contains(err.Error(), "permanently removed from the cluster")
}

// clearForRejoin writes rejoin.json, then removes the node's cluster data
// (etcd data, certificates, record, token) in an order that leaves a data
// dir the next start understands at every step. rec is the record the
// agent ran with (nil if it had none yet).
func (p *provisioner) clearForRejoin(rec *dataDirRecord) error {
	token, err := os.ReadFile(p.dir.path(tokenFile))
	if err != nil {
		return fmt.Errorf("read token: %w", err)
	}
	join := slices.Clone(p.join)
	if rec != nil {
		for _, u := range rec.JoinURLs {
			if !slices.Contains(join, u) {
				join = append(join, u)
			}
		}
	}
	if len(join) == 0 {
		return errors.New("no other agent is known to join through (set join in the configuration)")
	}
	data, _ := json.Marshal(rejoinInfo{Join: join, Token: strings.TrimSpace(string(token))})
	if err := atomicfile.WriteFile(p.dir.path(rejoinFile), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", rejoinFile, err)
	}
	for _, name := range []string{recordFile, etcdDir, pkiDir, tokenFile} {
		if err := os.RemoveAll(p.dir.path(name)); err != nil {
			return fmt.Errorf("clear data dir: %w", err)
		}
	}
	p.log.Warn("removed from the cluster: cluster data cleared, the next start joins again", "via", join)
	return nil
}

// rejoin joins with rejoin.json's token and agents, then forgets the file.
func (p *provisioner) rejoin(ctx context.Context) (*dataDirRecord, error) {
	data, err := os.ReadFile(p.dir.path(rejoinFile))
	if err != nil {
		return nil, fmt.Errorf("rejoin: %w", err)
	}
	var info rejoinInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", p.dir.path(rejoinFile), err)
	}
	p.join, p.token = info.Join, info.Token
	rec, err := p.joinCluster(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(p.dir.path(rejoinFile)); err != nil {
		return nil, fmt.Errorf("rejoin: %w", err)
	}
	return rec, nil
}

// recordJoinURLs keeps the other agents' API URLs in the data-dir record, so a
// node removed while it was down knows where to join again.
func (a *Agent) recordJoinURLs(ctx context.Context) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := a.cli.Get(cctx, nodedoc.RolesPrefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			var urls []string
			for _, kv := range resp.Kvs {
				var r nodedoc.RoleEntry
				name, ok := nodedoc.NameFromKey(nodedoc.RolesPrefix, string(kv.Key))
				if ok && name != a.opts.Name && json.Unmarshal(kv.Value, &r) == nil && r.APIURL != "" {
					urls = append(urls, r.APIURL)
				}
			}
			slices.Sort(urls)
			err := a.records.update(func(r *dataDirRecord) bool {
				if slices.Equal(urls, r.JoinURLs) {
					return false
				}
				r.JoinURLs = urls
				return true
			})
			if err != nil {
				a.log.Warn("save known agents", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
