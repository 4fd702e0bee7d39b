package rollout

import "fmt"

// Member is an etcd member as the quorum guard sees it.
type Member struct {
	Name string
	// Voter is false for learners and for client nodes (no member at all).
	Voter bool
	// Healthy is false for a member that is down or not caught up.
	Healthy bool
}

// CheckQuorum tells whether candidate may reboot now without leaving etcd
// without quorum. unavailable names nodes counted as down besides unhealthy
// members: the other holders of a reboot slot, which may go down at any
// moment. A non-voter may always reboot. A cluster with a single voter is
// the exception: its quorum is lost by any reboot of that voter, which is
// unavoidable, so the guard lets it through. It returns nil or an error
// saying how many voters would be left.
func CheckQuorum(members []Member, unavailable []string, candidate string) error {
	down := make(map[string]bool, len(unavailable))
	for _, n := range unavailable {
		down[n] = true
	}
	voters, up := 0, 0
	candidateVotes := false
	for _, m := range members {
		if !m.Voter {
			continue
		}
		voters++
		if m.Name == candidate {
			candidateVotes = true
			continue
		}
		if m.Healthy && !down[m.Name] {
			up++
		}
	}
	if !candidateVotes || voters == 1 {
		return nil
	}
	quorum := voters/2 + 1
	if up < quorum {
		return fmt.Errorf("rebooting voter %s would leave %d of %d voters up, quorum needs %d", candidate, up, voters, quorum)
	}
	return nil
}

// VotersGroup is the semaphore group every voting etcd member must also
// hold a slot of before rebooting, with VoterSlots as its maximum: the Txn
// of the semaphore then keeps two voters from both passing CheckQuorum on
// the same stale view. Targets and node statuses refuse it as a group name.
const VotersGroup = "etcd-voters"

// VoterSlots is how many voters may reboot at once without losing quorum:
// the voters beyond a quorum, minus the voters that are down for another
// reason (unhealthy and not among holders, the voter slot holders). A
// single-voter cluster gets 1 (see CheckQuorum). The result may be 0.
func VoterSlots(members []Member, holders []string) int {
	holding := make(map[string]bool, len(holders))
	for _, h := range holders {
		holding[h] = true
	}
	voters, downElsewhere := 0, 0
	for _, m := range members {
		if !m.Voter {
			continue
		}
		voters++
		if !m.Healthy && !holding[m.Name] {
			downElsewhere++
		}
	}
	if voters == 1 {
		return 1
	}
	return max(voters-(voters/2+1)-downElsewhere, 0)
}
