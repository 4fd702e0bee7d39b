package rollout

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// ClusterMembers is the quorum guard's view of the cluster (the driver's
// Members): etcd's members, a member healthy when its node document is
// there (its lease alive) and says ready.
func ClusterMembers(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	docs, err := cli.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read node documents: %w", err)
	}
	ready := map[string]bool{}
	for _, kv := range docs.Kvs {
		if n, err := nodedoc.ParseNode(kv.Value); err == nil {
			ready[n.Name] = n.Ready
		}
	}
	out := make([]Member, 0, len(ml.Members))
	for _, m := range ml.Members {
		out = append(out, Member{Name: m.Name, Voter: !m.IsLearner, Healthy: m.Name != "" && ready[m.Name]})
	}
	return out, nil
}

// CaughtUp returns nil when node's etcd member, if it has one, has applied
// everything the leader had committed a moment ago (the driver's CaughtUp:
// a node that just rebooted counts as done only then).
func CaughtUp(ctx context.Context, cli *clientv3.Client, node string) error {
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
