package rollout

import (
	"strings"
	"testing"
)

func voters(names ...string) []Member {
	var out []Member
	for _, n := range names {
		out = append(out, Member{Name: n, Voter: true, Healthy: true})
	}
	return out
}

func TestCheckQuorum(t *testing.T) {
	three := voters("a", "b", "c")
	five := voters("a", "b", "c", "d", "e")
	withSick := append(voters("a", "b"), Member{Name: "c", Voter: true})
	withLearner := append(voters("a", "b", "c"), Member{Name: "l", Healthy: true}, Member{Name: "x"})
	cases := []struct {
		name        string
		members     []Member
		unavailable []string
		candidate   string
		ok          bool
	}{
		{"3 voters, none down", three, nil, "a", true},
		{"3 voters, another holds a slot", three, []string{"b"}, "a", false},
		{"3 voters, the candidate itself holds", three, []string{"a"}, "a", true},
		{"3 voters, one unhealthy", withSick, nil, "a", false},
		{"3 voters, the unhealthy one reboots", withSick, nil, "c", true},
		{"5 voters, one other down", five, []string{"b"}, "a", true},
		{"5 voters, two others down", five, []string{"b", "c"}, "a", false},
		{"learner may always reboot", withLearner, []string{"a"}, "l", true},
		{"client node may always reboot", withLearner, []string{"a", "b"}, "x", true},
		{"unknown node is no member", three, []string{"a", "b"}, "zz", true},
		{"single voter cluster", voters("a"), nil, "a", true},
		{"2 voters: quorum is both", voters("a", "b"), nil, "a", false},
	}
	for _, c := range cases {
		err := CheckQuorum(c.members, c.unavailable, c.candidate)
		if (err == nil) != c.ok {
			t.Errorf("%s: CheckQuorum = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "quorum needs") {
			t.Errorf("%s: error %q does not say why", c.name, err)
		}
	}
}

func TestVoterSlots(t *testing.T) {
	sick := func(m []Member, name string) []Member {
		out := append([]Member(nil), m...)
		for i := range out {
			if out[i].Name == name {
				out[i].Healthy = false
			}
		}
		return out
	}
	five := voters("a", "b", "c", "d", "e")
	cases := []struct {
		name    string
		members []Member
		holders []string
		want    int
	}{
		{"1 voter", voters("a"), nil, 1},
		{"2 voters", voters("a", "b"), nil, 0},
		{"3 voters", voters("a", "b", "c"), nil, 1},
		{"5 voters", five, nil, 2},
		{"5 voters, one down elsewhere", sick(five, "c"), nil, 1},
		{"5 voters, the down one holds a slot", sick(five, "c"), []string{"c"}, 2},
		{"3 voters, one down elsewhere", sick(voters("a", "b", "c"), "a"), nil, 0},
		{"non-voters do not count", append(voters("a", "b", "c"), Member{Name: "l"}), nil, 1},
	}
	for _, c := range cases {
		if got := VoterSlots(c.members, c.holders); got != c.want {
			t.Errorf("%s: VoterSlots = %d, want %d", c.name, got, c.want)
		}
	}
}
