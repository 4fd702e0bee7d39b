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
)

func init() {
	prometheus.MustRegister(joinsTotal, promotionsTotal, membersRemovedTotal, readyGauge, roleGauge)
}
