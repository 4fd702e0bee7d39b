package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/internal/retry"
)

const callTimeout = 5 * time.Second

// refreshRole reads this member's learner flag from the local membership
// and, once promoted, lets the client use the local endpoint too.
func (a *Agent) refreshRole(ctx context.Context) {
	learner, known := a.member.learner()
	if !known {
		return
	}
	if learner {
		a.setRole(nodedoc.RoleLearner)
		return
	}
	if a.Role() == nodedoc.RoleVoter {
		return
	}
	a.setRole(nodedoc.RoleVoter)
	a.log.Info("this node is a voting member")
	// The promoter records the role too, but its put may have failed or
	// raced with this node's own "learner" entry: the member itself knows best.
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	a.updateRoleEntry(cctx, a.opts.Name, nodedoc.RoleVoter)
	cancel()
	if eps := a.cli.Endpoints(); !slices.Contains(eps, a.opts.ClientURL) {
		a.cli.SetEndpoints(append(slices.Clone(eps), a.opts.ClientURL)...)
	}
	err := a.records.update(func(r *dataDirRecord) bool {
		if !slices.Contains(r.Endpoints, a.opts.ClientURL) {
			r.Endpoints = append(r.Endpoints, a.opts.ClientURL)
		}
		return true
	})
	if err != nil {
		a.log.Warn("cannot save the data dir record", "err", err)
	}
	if p := a.publisher(); p != nil {
		p.Trigger()
	}
}

// memberLoop runs on every member; only the etcd leader's agent acts, so
// decisions are made once, by the node with the freshest view.
func (a *Agent) memberLoop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var clocks MemberClocks
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.refreshRole(ctx)
		if !a.member.leads() {
			clocks = MemberClocks{} // a new leader watches from scratch: no stale clocks
			continue
		}
		if err := a.reconcile(ctx, &clocks); err != nil {
			a.log.Debug("reconcile", "err", err)
		}
	}
}

// reconcile is one look of the leader's agent: it reads the members and
// the live nodes, does what DecideMembers says, then reads the members
// again and does what DecideVoterGap says.
func (a *Agent) reconcile(ctx context.Context, clocks *MemberClocks) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	list, err := a.cli.MemberList(cctx)
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	alive, err := a.liveNodes(cctx)
	if err != nil {
		return err
	}
	var holders map[string]bool
	if a.opts.RebootSlotHolders != nil {
		if holders, err = a.opts.RebootSlotHolders(cctx, a.cli); err != nil {
			return fmt.Errorf("list reboot slots: %w", err)
		}
	}
	byID := map[uint64]*etcdserverpb.Member{}
	for _, m := range list.Members {
		byID[m.ID] = m
	}
	in := MembershipInput{Now: time.Now(), DeadAfter: a.opts.DeadAfter, Self: a.member.id(),
		Members: memberInfos(list.Members), Alive: alive, RebootHolders: holders, Clocks: *clocks}
	plan := DecideMembers(in)
	if len(plan.Probe) > 0 {
		// Probed only once due for removal: a dead member's probe costs
		// seconds of timeouts.
		in.Probed, in.Answering = true, map[uint64]bool{}
		for _, id := range plan.Probe {
			in.Answering[id] = a.memberAnswers(ctx, byID[id])
		}
		plan = DecideMembers(in)
		// The probe of a dead machine takes its whole timeout: the
		// actions get a full call timeout of their own.
		cancel()
		cctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	*clocks = plan.Clocks
	for _, act := range plan.Actions {
		m := byID[act.ID]
		switch act.Kind {
		case MemberPromote:
			local, err := a.member.localClient()
			if err != nil {
				return err
			}
			if _, err := local.MemberPromote(cctx, act.ID); err != nil {
				a.log.Debug("promotion not possible yet", "name", act.Name, "err", err)
				continue
			}
			promotionsTotal.Inc()
			a.log.Info("promoted learner to voter", "name", act.Name)
			a.updateRoleEntry(cctx, act.Name, nodedoc.RoleVoter)
		case MemberRemoveUnstarted:
			a.removeMember(cctx, m, act.Reason)
		case MemberSpare:
			a.log.Warn("node document missing but its etcd member answers: not removing it", "name", act.Name,
				"missing", act.For)
		case MemberRemoveDead:
			if a.removeMember(cctx, m, act.Reason) {
				clocks.VoterRemoved(act.Name)
				a.updateRoleEntry(cctx, act.Name, RoleRemoved)
			}
		}
	}
	return a.fillVoterGap(cctx, clocks, alive, holders)
}

// liveNodes names the nodes whose node document exists.
func (a *Agent) liveNodes(ctx context.Context) (map[string]bool, error) {
	docs, err := a.cli.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list node documents: %w", err)
	}
	alive := map[string]bool{}
	for _, kv := range docs.Kvs {
		if name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, string(kv.Key)); ok {
			alive[name] = true
		}
	}
	return alive, nil
}

func memberInfos(ms []*etcdserverpb.Member) []MemberInfo {
	out := make([]MemberInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, MemberInfo{ID: m.ID, Name: m.Name, Learner: m.IsLearner})
	}
	return out
}

// RoleRemoved marks the role entry of a voter that self-healing removed
// from the cluster: its data dir can no longer start a member.
const RoleRemoved = "removed"

// fillVoterGap reads what DecideVoterGap needs and does what it says.
func (a *Agent) fillVoterGap(ctx context.Context, clocks *MemberClocks, alive, holders map[string]bool) error {
	list, err := a.cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	got, err := a.cli.Get(ctx, nodedoc.ClusterConfigKey)
	if err != nil {
		return fmt.Errorf("read cluster config: %w", err)
	}
	in := VoterGapInput{Now: time.Now(), DeadAfter: a.opts.DeadAfter, Members: memberInfos(list.Members),
		Alive: alive, RebootHolders: holders, Clocks: *clocks}
	var cfg nodedoc.ClusterConfig
	if len(got.Kvs) > 0 && json.Unmarshal(got.Kvs[0].Value, &cfg) == nil {
		in.Target = cfg.Voters
	}
	voters := 0
	for _, m := range list.Members {
		if !m.IsLearner {
			voters++
		}
	}
	// The requests and the roles matter only to a cluster short of voters.
	if voters < in.Target {
		if in.Requests, err = a.promoteRequests(ctx); err != nil {
			return err
		}
		in.Clients = a.clientNodes(ctx)
	}
	plan := DecideVoterGap(in)
	*clocks = plan.Clocks
	for _, act := range plan.Actions {
		switch act.Kind {
		case MemberWithdraw:
			if _, err := a.cli.Delete(ctx, act.Key); err == nil {
				a.log.Warn("withdrew unanswered request to become a member", "name", act.Name)
			}
		case MemberAsk:
			if _, err := a.cli.Put(ctx, nodedoc.PromoteKey(act.Name), time.Now().UTC().Format(time.RFC3339)); err != nil {
				a.log.Warn("cannot ask client to become a member", "name", act.Name, "err", err)
				continue
			}
			a.log.Info("asked client node to become a member", "name", act.Name)
		}
	}
	if plan.NoClient {
		a.log.Debug("no live client node can replace a missing voter")
	}
	return nil
}

func (a *Agent) promoteRequests(ctx context.Context) ([]PromoteRequest, error) {
	pending, err := a.cli.Get(ctx, nodedoc.PromotePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list promotion requests: %w", err)
	}
	var out []PromoteRequest
	for _, kv := range pending.Kvs {
		r := PromoteRequest{Key: string(kv.Key)}
		r.Name, _ = nodedoc.NameFromKey(nodedoc.PromotePrefix, r.Key)
		if asked, err := time.Parse(time.RFC3339, string(kv.Value)); err == nil {
			r.AskedAt = asked
		}
		out = append(out, r)
	}
	return out, nil
}

// clientNodes names the nodes whose role entry says client, in key order.
func (a *Agent) clientNodes(ctx context.Context) []string {
	roles, err := a.cli.Get(ctx, nodedoc.RolesPrefix, clientv3.WithPrefix())
	if err != nil {
		a.log.Warn("cannot list roles to replace a voter", "err", err)
		return nil
	}
	var out []string
	for _, kv := range roles.Kvs {
		name, ok := nodedoc.NameFromKey(nodedoc.RolesPrefix, string(kv.Key))
		var entry nodedoc.RoleEntry
		if ok && json.Unmarshal(kv.Value, &entry) == nil && entry.Role == nodedoc.RoleClient {
			out = append(out, name)
		}
	}
	return out
}

// memberAnswers reports whether member m's etcd serves a status request.
// A member whose node document is missing but which answers is alive (its
// agent is slow or restarting): removing it would cost the cluster a
// working voter and the node a rejoin.
func (a *Agent) memberAnswers(ctx context.Context, m *etcdserverpb.Member) bool {
	for _, u := range m.ClientURLs {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := a.cli.Status(sctx, u)
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}

func (a *Agent) removeMember(ctx context.Context, m *etcdserverpb.Member, why string) bool {
	if _, err := a.cli.MemberRemove(ctx, m.ID); err != nil {
		a.log.Warn("cannot remove member", "name", m.Name, "id", types.ID(m.ID).String(), "reason", why, "err", err)
		return false
	}
	membersRemovedTotal.Inc()
	a.log.Warn("removed member", "name", m.Name, "id", types.ID(m.ID).String(), "reason", why)
	return true
}

func (a *Agent) updateRoleEntry(ctx context.Context, name, role string) {
	entry := nodedoc.RoleEntry{}
	if got, err := a.cli.Get(ctx, nodedoc.RoleKey(name)); err == nil && len(got.Kvs) > 0 {
		_ = json.Unmarshal(got.Kvs[0].Value, &entry)
	}
	entry.Role = role
	data, _ := json.Marshal(entry)
	if _, err := a.cli.Put(ctx, nodedoc.RoleKey(name), string(data)); err != nil {
		a.log.Warn("cannot record role", "name", name, "role", role, "err", err)
	}
}

// watchPromotion runs on client nodes: when the leader's agent asks (the
// node's promote key appears), the node adds itself as a learner and starts
// an etcd member.
func (a *Agent) watchPromotion(ctx context.Context) error {
	// A broken watch is watched again after about a second, until ctx ends.
	err := retry.Do(ctx, retry.Policy{Initial: time.Second, Max: time.Second}, func() error { return a.waitAsked(ctx) })
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("watch promotion: %w", err)
	}
	return a.becomeMember(ctx)
}

// waitAsked returns nil once this node's promote key exists, an error when
// the watch broke first.
func (a *Agent) waitAsked(ctx context.Context) error {
	key := nodedoc.PromoteKey(a.opts.Name)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := a.cli.Watch(wctx, key)
	gctx, gcancel := context.WithTimeout(ctx, callTimeout)
	got, err := a.cli.Get(gctx, key)
	gcancel()
	if err == nil && len(got.Kvs) > 0 {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-wch:
			if !ok {
				return errors.New("promotion watch closed")
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("promotion watch: %w", err)
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					return nil
				}
			}
		}
	}
}

// learnerInitialCluster is etcd's initial-cluster for the learner that
// resp added as self: members that never started have no name yet.
func learnerInitialCluster(resp *clientv3.MemberAddResponse, self string) string {
	var parts []string
	for _, m := range resp.Members {
		name := m.Name
		switch {
		case m.ID == resp.Member.ID:
			name = self
		case name == "":
			name = fmt.Sprintf("unstarted-%x", m.ID)
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	return strings.Join(parts, ",")
}

func (a *Agent) becomeMember(ctx context.Context) error {
	a.log.Info("asked to become a member: joining as learner")
	added, err := retry.Get(ctx, retry.Policy{
		Initial: 500 * time.Millisecond, Max: 5 * time.Second,
		OnRetry: func(err error, wait time.Duration) {
			a.log.Debug("add self as learner failed, retrying", "err", err, "in", wait)
		},
	}, func() (*clientv3.MemberAddResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		return a.cli.MemberAddAsLearner(cctx, []string{a.opts.PeerURL})
	})
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add self as learner: %w", err)
	}
	initial := learnerInitialCluster(added, a.opts.Name)
	err = a.records.update(func(r *dataDirRecord) bool {
		r.Member, r.InitialCluster, r.ClusterState = true, initial, embed.ClusterStateFlagExisting
		return true
	})
	if err != nil {
		return err
	}
	a.setRole(nodedoc.RoleLearner)
	// Before etcd starts: once it is ready the leader may promote it at
	// once, and a later "learner" entry would overwrite "voter".
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	a.updateRoleEntry(cctx, a.opts.Name, nodedoc.RoleLearner)
	_, _ = a.cli.Delete(cctx, nodedoc.PromoteKey(a.opts.Name))
	cancel()
	if err := a.member.start(ctx, a.records.get()); err != nil {
		return err
	}
	etcdErr, _ := a.member.failed()
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		a.memberLoop(lctx)
	}()
	select {
	case err := <-etcdErr:
		a.etcdDown.Store(true)
		stop()
		<-loopDone
		return fmt.Errorf("embedded etcd failed: %w", err)
	case <-loopDone:
		return nil
	}
}
