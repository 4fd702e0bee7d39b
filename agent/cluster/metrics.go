package cluster

import "github.com/prometheus/client_golang/prometheus"

// The agent's own metrics, next to etcd's in the default registry that
// /metrics serves.
var (
	joinsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_agent_joins_total",
		Help: "Join requests answered by this agent, by outcome (learner, client, refused, error).",
	}, []string{"outcome"})
	promotionsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "berth_agent_promotions_total",
		Help: "Learners promoted to voters by this agent.",
	})
	membersRemovedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "berth_agent_members_removed_total",
		Help: "Dead or never-started members removed by this agent.",
	})
	readyGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_agent_ready",
		Help: "1 when the agent reached the cluster and published its node document.",
	})
	roleGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "berth_agent_role",
		Help: "1 for the agent's current role (voter, learner, client).",
	}, []string{"role"})
	nodeWritesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_agent_node_document_writes_total",
		Help: "Puts of this node's document, by reason (start, change, refresh, load, memory, trigger).",
	}, []string{"reason"})
	nospaceGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_agent_etcd_nospace_alarm",
		Help: "1 while this agent sees etcd's NOSPACE alarm (the cluster refuses writes).",
	})
	spaceActionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_agent_etcd_space_actions_total",
		Help: "Space maintenance done by this agent as the etcd leader's: compact (under NOSPACE), defrag, disarm; by outcome (ok, error).",
	}, []string{"action", "outcome"})
)

func init() {
	prometheus.MustRegister(joinsTotal, promotionsTotal, membersRemovedTotal, readyGauge, roleGauge,
		nodeWritesTotal, nospaceGauge, spaceActionsTotal)
}
