package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/berth-os/berth/agent/rollout"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/berth-os/berth/agent/state"
)

const callTimeout = 5 * time.Second

func isAlreadyExists(err error) bool {
	return errors.Is(err, rpctypes.ErrRoleAlreadyExist) || errors.Is(err, rpctypes.ErrUserAlreadyExist) ||
		errors.Is(err, rpctypes.ErrGRPCRoleAlreadyExist) || errors.Is(err, rpctypes.ErrGRPCUserAlreadyExist)
}

// refreshRole reads this member's learner flag from the local membership
// and, once promoted, lets the client use the local endpoint too.
func (a *Agent) refreshRole(ctx context.Context) {
	e := a.embedded()
	if e == nil {
		return
	}
	m := e.Server.Cluster().Member(e.Server.MemberID())
	if m == nil {
		return
	}
	if m.IsLearner {
		a.setRole(state.RoleLearner)
		return
	}
	if a.Role() == state.RoleVoter {
		return
	}
	a.setRole(state.RoleVoter)
	a.log.Info("this node is a voting member")
	// The promoter records the role too, but its put may have failed or
	// raced with this node's own "learner" entry: the member itself knows best.
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	a.updateRoleEntry(cctx, a.opts.Name, state.RoleVoter)
	cancel()
	if eps := a.cli.Endpoints(); !slices.Contains(eps, a.opts.ClientURL) {
		a.cli.SetEndpoints(append(slices.Clone(eps), a.opts.ClientURL)...)
	}
	a.mu.Lock()
	if !slices.Contains(a.st.Endpoints, a.opts.ClientURL) {
		a.st.Endpoints = append(a.st.Endpoints, a.opts.ClientURL)
	}
	err := a.saveNodeState(a.st)
	a.mu.Unlock()
	if err != nil {
		a.log.Warn("cannot save node state", "err", err)
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
	missingSince := map[string]time.Time{}
	unstartedSince := map[uint64]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.refreshRole(ctx)
		e := a.embedded()
		if e == nil || e.Server.Leader() != e.Server.MemberID() {
			clear(missingSince) // a new leader watches from scratch: no stale clocks
			clear(unstartedSince)
			a.shortSince, a.healNow = time.Time{}, false
			continue
		}
		if err := a.reconcile(ctx, missingSince, unstartedSince); err != nil {
			a.log.Debug("reconcile", "err", err)
		}
	}
}

func (a *Agent) reconcile(ctx context.Context, missingSince map[string]time.Time, unstartedSince map[uint64]time.Time) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	list, err := a.cli.MemberList(cctx)
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	now := time.Now()
	self := uint64(a.embedded().Server.MemberID())

	for _, m := range list.Members {
		if !m.IsLearner {
			continue
		}
		if m.Name == "" { // added but never started
			first, ok := unstartedSince[m.ID]
			if !ok {
				unstartedSince[m.ID] = now
			} else if now.Sub(first) > a.opts.DeadAfter {
				a.removeMember(cctx, m, "learner never started")
				delete(unstartedSince, m.ID)
			}
			continue
		}
		// Fails until the learner has caught up with the log: retried on
		// the next tick.
		local, err := a.localClient()
		if err != nil {
			return err
		}
		if _, err := local.MemberPromote(cctx, m.ID); err != nil {
			a.log.Debug("promotion not possible yet", "name", m.Name, "err", err)
			continue
		}
		promotionsTotal.Inc()
		a.log.Info("promoted learner to voter", "name", m.Name)
		a.updateRoleEntry(cctx, m.Name, state.RoleVoter)
	}

	docs, err := a.cli.Get(cctx, state.NodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("list node documents: %w", err)
	}
	alive := map[string]bool{}
	for _, kv := range docs.Kvs {
		if name, ok := state.NameFromKey(state.NodesPrefix, string(kv.Key)); ok {
			alive[name] = true
		}
	}
	// A node rebooting for an OS rollout holds a reboot slot (bound to a
	// lease as long as the rollout's deadline): a planned absence, not a
	// death. Removing it would cost a member and a rejoin per reboot.
	locks, err := a.cli.Get(cctx, rollout.LockPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("list reboot slots: %w", err)
	}
	for _, kv := range locks.Kvs {
		if _, holder, err := rollout.ParseLockKey(string(kv.Key)); err == nil {
			alive[holder] = true
		}
	}
	for name := range missingSince {
		if alive[name] {
			delete(missingSince, name)
		}
	}
	for _, m := range list.Members {
		if m.IsLearner || m.ID == self || m.Name == "" || alive[m.Name] {
			continue
		}
		first, ok := missingSince[m.Name]
		if !ok {
			missingSince[m.Name] = now
			continue
		}
		if now.Sub(first) <= a.opts.DeadAfter {
			continue
		}
		if a.memberAnswers(ctx, m) {
			// Seen under emulation: a node serving a rollout payload to its
			// peers starved its own lease keep-alive; its member was fine.
			a.log.Warn("node document missing but its etcd member answers: not removing it", "name", m.Name,
				"missing", now.Sub(first).Round(time.Second))
			missingSince[m.Name] = now
			continue
		}
		if a.removeMember(cctx, m, fmt.Sprintf("node document missing for %s", now.Sub(first).Round(time.Second))) {
			delete(missingSince, m.Name)
			a.updateRoleEntry(cctx, m.Name, RoleRemoved)
			a.healNow = true
		}
	}
	return a.replaceMissingVoters(cctx, alive)
}

// RoleRemoved marks the role entry of a voter that self-healing removed
// from the cluster: its data dir can no longer start a member.
const RoleRemoved = "removed"

// replaceMissingVoters asks a live client node to become a member while the
// cluster has fewer voters than its configuration wants. It runs on every
// reconcile, not only right after a removal, so a client that joins later
// still fills a gap left when no client was alive.
func (a *Agent) replaceMissingVoters(ctx context.Context, alive map[string]bool) error {
	list, err := a.cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	voters := 0
	for _, m := range list.Members {
		if m.IsLearner {
			return nil // one member change at a time: wait for its promotion
		}
		voters++
	}
	got, err := a.cli.Get(ctx, state.ClusterConfigKey)
	if err != nil {
		return fmt.Errorf("read cluster config: %w", err)
	}
	var cfg state.ClusterConfig
	if len(got.Kvs) == 0 || json.Unmarshal(got.Kvs[0].Value, &cfg) != nil || voters >= cfg.Voters {
		a.shortSince, a.healNow = time.Time{}, false
		return nil
	}
	// A gap left by a dead member we just removed is filled at once; any
	// other gap (a wiped node rejoining removes its stale member and is
	// added back seconds later) must last dead-after before a client is
	// asked, or the rejoining node would find its seat taken.
	if a.shortSince.IsZero() {
		a.shortSince = time.Now()
		if a.healNow {
			a.shortSince = a.shortSince.Add(-a.opts.DeadAfter)
		}
	}
	a.healNow = false
	if time.Since(a.shortSince) < a.opts.DeadAfter {
		return nil
	}
	pending, err := a.cli.Get(ctx, state.PromotePrefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list promotion requests: %w", err)
	}
	waiting := false
	for _, kv := range pending.Kvs {
		name, _ := state.NameFromKey(state.PromotePrefix, string(kv.Key))
		asked, perr := time.Parse(time.RFC3339, string(kv.Value))
		// A request to a node that died, or that was not acted on within
		// dead-after, is withdrawn so another client can be asked.
		if alive[name] && perr == nil && time.Since(asked) <= a.opts.DeadAfter {
			waiting = true
			continue
		}
		if _, err := a.cli.Delete(ctx, string(kv.Key)); err == nil {
			a.log.Warn("withdrew unanswered request to become a member", "name", name)
		}
	}
	if waiting {
		return nil
	}
	a.askClientToJoin(ctx, alive)
	return nil
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

// askClientToJoin picks a live client node and asks it, through its
// promote key, to become a member in place of a removed voter.
func (a *Agent) askClientToJoin(ctx context.Context, alive map[string]bool) {
	roles, err := a.cli.Get(ctx, state.RolesPrefix, clientv3.WithPrefix())
	if err != nil {
		a.log.Warn("cannot list roles to replace a voter", "err", err)
		return
	}
	for _, kv := range roles.Kvs {
		name, ok := state.NameFromKey(state.RolesPrefix, string(kv.Key))
		var entry state.RoleEntry
		if !ok || json.Unmarshal(kv.Value, &entry) != nil || entry.Role != state.RoleClient || !alive[name] {
			continue
		}
		if _, err := a.cli.Put(ctx, state.PromoteKey(name), time.Now().UTC().Format(time.RFC3339)); err != nil {
			a.log.Warn("cannot ask client to become a member", "name", name, "err", err)
			return
		}
		a.log.Info("asked client node to become a member", "name", name)
		return
	}
	a.log.Debug("no live client node can replace a missing voter")
}

func (a *Agent) updateRoleEntry(ctx context.Context, name, role string) {
	entry := state.RoleEntry{}
	if got, err := a.cli.Get(ctx, state.RoleKey(name)); err == nil && len(got.Kvs) > 0 {
		_ = json.Unmarshal(got.Kvs[0].Value, &entry)
	}
	entry.Role = role
	data, _ := json.Marshal(entry)
	if _, err := a.cli.Put(ctx, state.RoleKey(name), string(data)); err != nil {
		a.log.Warn("cannot record role", "name", name, "role", role, "err", err)
	}
}

// watchPromotion runs on client nodes: when the leader's agent asks (the
// node's promote key appears), the node adds itself as a learner and starts
// an etcd member.
func (a *Agent) watchPromotion(ctx context.Context) error {
	key := state.PromoteKey(a.opts.Name)
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := a.cli.Watch(wctx, key)
		gctx, gcancel := context.WithTimeout(ctx, callTimeout)
		got, err := a.cli.Get(gctx, key)
		gcancel()
		asked := err == nil && len(got.Kvs) > 0
		for !asked {
			select {
			case <-ctx.Done():
				cancel()
				return nil
			case resp, ok := <-wch:
				if !ok || resp.Err() != nil {
					asked = false
					goto retry
				}
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						asked = true
					}
				}
			}
		}
		cancel()
		return a.becomeMember(ctx)
	retry:
		cancel()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) becomeMember(ctx context.Context) error {
	a.log.Info("asked to become a member: joining as learner")
	var initial string
	backoff := 500 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		added, err := a.cli.MemberAddAsLearner(cctx, []string{a.opts.PeerURL})
		cancel()
		if err == nil {
			var parts []string
			for _, m := range added.Members {
				name := m.Name
				switch {
				case m.ID == added.Member.ID:
					name = a.opts.Name
				case name == "":
					name = fmt.Sprintf("unstarted-%x", m.ID)
				}
				for _, u := range m.PeerURLs {
					parts = append(parts, name+"="+u)
				}
			}
			initial = strings.Join(parts, ",")
			break
		}
		a.log.Debug("add self as learner failed, retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
			backoff = min(backoff*2, 5*time.Second)
		}
	}
	a.mu.Lock()
	a.st.Member, a.st.InitialCluster, a.st.ClusterState = true, initial, embed.ClusterStateFlagExisting
	err := a.saveNodeState(a.st)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.setRole(state.RoleLearner)
	// Before etcd starts: once it is ready the leader may promote it at
	// once, and a later "learner" entry would overwrite "voter".
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	a.updateRoleEntry(cctx, a.opts.Name, state.RoleLearner)
	_, _ = a.cli.Delete(cctx, state.PromoteKey(a.opts.Name))
	cancel()
	if err := a.startEtcd(ctx); err != nil {
		return err
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		a.memberLoop(lctx)
	}()
	select {
	case err := <-a.embedded().Err():
		a.etcdDown.Store(true)
		stop()
		<-loopDone
		return fmt.Errorf("embedded etcd failed: %w", err)
	case <-loopDone:
		return nil
	}
}
