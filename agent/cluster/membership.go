package cluster

import (
	"fmt"
	"maps"
	"time"
)

// The pure decisions of self-healing: which learner to promote, which
// member to remove, when to ask a client node to become a member. The
// leader's agent feeds them what it reads and does what they say
// (members.go). There are two per look because the second
// (DecideVoterGap) must see the membership after the first's removals and
// promotions, and those can fail.

// MemberInfo is one etcd member as the leader's agent sees it.
type MemberInfo struct {
	ID      uint64
	Name    string // "" until the member has started
	Learner bool
}

func (m MemberInfo) started() bool { return m.Name != "" }

// MemberClocks is what the leader's agent remembers from one look to the
// next. A new leader starts from the zero value: no stale clocks.
type MemberClocks struct {
	// MissingSince: since when a voter's node document has been missing.
	MissingSince map[string]time.Time
	// UnstartedSince: since when a learner has been added and not started.
	UnstartedSince map[uint64]time.Time
	// ShortSince: since when the cluster has had fewer voters than it
	// wants. HealNow: the gap comes from removing a voter dead for
	// dead-after, so it is filled at once.
	ShortSince time.Time
	HealNow    bool
}

// clone copies the maps so that a decision never writes to its input.
func (c MemberClocks) clone() MemberClocks {
	c.MissingSince = maps.Clone(c.MissingSince)
	if c.MissingSince == nil {
		c.MissingSince = map[string]time.Time{}
	}
	c.UnstartedSince = maps.Clone(c.UnstartedSince)
	if c.UnstartedSince == nil {
		c.UnstartedSince = map[uint64]time.Time{}
	}
	return c
}

// VoterRemoved records that the MemberRemoveDead of name succeeded: its
// clock stops and the gap it leaves is filled at once.
func (c *MemberClocks) VoterRemoved(name string) {
	delete(c.MissingSince, name)
	c.HealNow = true
}

// MemberActionKind says what a MemberAction does.
type MemberActionKind int

const (
	// MemberPromote promotes learner ID; etcd refuses until it has caught
	// up with the log, and the next look asks again.
	MemberPromote MemberActionKind = iota + 1
	// MemberRemoveUnstarted removes learner ID, added but never started.
	MemberRemoveUnstarted
	// MemberRemoveDead removes voter ID; on success the caller records
	// the role "removed" and calls MemberClocks.VoterRemoved.
	MemberRemoveDead
	// MemberSpare only reports that voter Name was not removed: its node
	// document is missing but its etcd answers (its clock restarts).
	MemberSpare
	// MemberWithdraw deletes the promotion request Key sent to Name.
	MemberWithdraw
	// MemberAsk asks client node Name to become a member.
	MemberAsk
)

// MemberAction is one step for the leader's agent to take.
type MemberAction struct {
	Kind   MemberActionKind
	ID     uint64
	Name   string
	Key    string        // MemberWithdraw: the request's key
	Reason string        // removals: why, for the log
	For    time.Duration // MemberSpare: how long the node document has been missing
}

// MembershipInput is one look at the members by the leader's agent.
type MembershipInput struct {
	Now       time.Time
	DeadAfter time.Duration
	Self      uint64 // the leader's own member, never removed
	Members   []MemberInfo
	// Alive names the nodes with a node document. RebootHolders names
	// those holding a rollout reboot slot: a planned absence, not a death
	// (removing them would cost a member and a rejoin per reboot).
	Alive, RebootHolders map[string]bool
	// Probed: the members in a previous plan's Probe were asked for their
	// status; Answering holds those whose etcd answered.
	Probed    bool
	Answering map[uint64]bool
	Clocks    MemberClocks
}

func (in MembershipInput) alive(name string) bool { return in.Alive[name] || in.RebootHolders[name] }

// MembershipPlan is what DecideMembers says.
type MembershipPlan struct {
	// Probe lists voters due for removal whose etcd must be probed first
	// (a network call): when it is not empty the plan is incomplete; probe
	// them and decide again with Probed set.
	Probe   []uint64
	Actions []MemberAction
	Clocks  MemberClocks // to keep for the next look
}

// DecideMembers promotes learners, removes learners that never started
// and voters whose node has been gone for longer than dead-after.
func DecideMembers(in MembershipInput) MembershipPlan {
	p := MembershipPlan{Clocks: in.Clocks.clone()}
	c := &p.Clocks
	for _, m := range in.Members {
		if !m.Learner {
			continue
		}
		if !m.started() {
			first, ok := c.UnstartedSince[m.ID]
			if !ok {
				c.UnstartedSince[m.ID] = in.Now
			} else if in.Now.Sub(first) > in.DeadAfter {
				// The clock stops even if the removal fails: the next
				// look starts it again.
				p.Actions = append(p.Actions, MemberAction{Kind: MemberRemoveUnstarted, ID: m.ID, Reason: "learner never started"})
				delete(c.UnstartedSince, m.ID)
			}
			continue
		}
		p.Actions = append(p.Actions, MemberAction{Kind: MemberPromote, ID: m.ID, Name: m.Name})
	}
	for name := range c.MissingSince {
		if in.alive(name) {
			delete(c.MissingSince, name)
		}
	}
	for _, m := range in.Members {
		if m.Learner || m.ID == in.Self || !m.started() || in.alive(m.Name) {
			continue
		}
		first, ok := c.MissingSince[m.Name]
		if !ok {
			c.MissingSince[m.Name] = in.Now
			continue
		}
		missing := in.Now.Sub(first)
		if missing <= in.DeadAfter {
			continue
		}
		if !in.Probed {
			p.Probe = append(p.Probe, m.ID)
			continue
		}
		if in.Answering[m.ID] {
			// Seen under emulation: a node serving a rollout payload to its
			// peers starved its own lease keep-alive; its member was fine.
			p.Actions = append(p.Actions, MemberAction{Kind: MemberSpare, ID: m.ID, Name: m.Name, For: missing.Round(time.Second)})
			c.MissingSince[m.Name] = in.Now
			continue
		}
		p.Actions = append(p.Actions, MemberAction{Kind: MemberRemoveDead, ID: m.ID, Name: m.Name,
			Reason: fmt.Sprintf("node document missing for %s", missing.Round(time.Second))})
	}
	return p
}

// PromoteRequest is a pending request to a client node to become a member.
type PromoteRequest struct {
	Key, Name string
	AskedAt   time.Time // zero when unreadable
}

// VoterGapInput is the second look of a tick, after DecideMembers' actions.
type VoterGapInput struct {
	Now       time.Time
	DeadAfter time.Duration
	Members   []MemberInfo // read again after this tick's removals and promotions
	Target    int          // voters the cluster config wants; 0 when unreadable
	// Alive and RebootHolders as in MembershipInput.
	Alive, RebootHolders map[string]bool
	// Requests and Clients (nodes whose role entry says client, in key
	// order) are needed only when the cluster has fewer voters than Target.
	Requests []PromoteRequest
	Clients  []string
	Clocks   MemberClocks
}

func (in VoterGapInput) alive(name string) bool { return in.Alive[name] || in.RebootHolders[name] }

// VoterGapPlan is what DecideVoterGap says.
type VoterGapPlan struct {
	Actions  []MemberAction
	NoClient bool // a client was wanted and none is alive
	Clocks   MemberClocks
}

// DecideVoterGap asks a live client node to become a member while the
// cluster has fewer voters than it wants. It decides on every look, not only
// right after a removal, so a client that joins later still fills a gap left
// when no client was alive.
func DecideVoterGap(in VoterGapInput) VoterGapPlan {
	p := VoterGapPlan{Clocks: in.Clocks.clone()}
	c := &p.Clocks
	voters := 0
	for _, m := range in.Members {
		if m.Learner {
			return p // one member change at a time: wait for its promotion
		}
		voters++
	}
	if voters >= in.Target {
		c.ShortSince, c.HealNow = time.Time{}, false
		return p
	}
	// A gap left by a dead member we just removed is filled at once; any
	// other gap (a wiped node rejoining removes its stale member and is
	// added back seconds later) must last dead-after before a client is
	// asked, or the rejoining node would find its seat taken.
	if c.ShortSince.IsZero() {
		c.ShortSince = in.Now
		if c.HealNow {
			c.ShortSince = c.ShortSince.Add(-in.DeadAfter)
		}
	}
	c.HealNow = false
	if in.Now.Sub(c.ShortSince) < in.DeadAfter {
		return p
	}
	waiting := false
	for _, r := range in.Requests {
		// A request to a node that died, or that was not acted on within
		// dead-after, is withdrawn so another client can be asked.
		if in.alive(r.Name) && !r.AskedAt.IsZero() && in.Now.Sub(r.AskedAt) <= in.DeadAfter {
			waiting = true
			continue
		}
		p.Actions = append(p.Actions, MemberAction{Kind: MemberWithdraw, Name: r.Name, Key: r.Key})
	}
	if waiting {
		return p
	}
	for _, name := range in.Clients {
		if in.alive(name) {
			p.Actions = append(p.Actions, MemberAction{Kind: MemberAsk, Name: name})
			return p
		}
	}
	p.NoClient = true
	return p
}
