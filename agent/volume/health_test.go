package volume

import "testing"

func TestHealth(t *testing.T) {
	up := func(n string) Copy { return Copy{Node: n, State: UpToDate} }
	for _, tc := range []struct {
		r    Record
		want string
	}{
		{Record{Copies: []Copy{up("n1"), up("n2")}, Owner: "n1", Epoch: 1}, "ok"},
		{Record{Copies: []Copy{up("n1"), up("n2")}}, "new"},
		{Record{Copies: []Copy{up("n1"), {Node: "n2", State: Outdated}}, Owner: "n1", Epoch: 2}, "degraded (n2 outdated)"},
		{Record{Copies: []Copy{{Node: "n3", State: Syncing}, {Node: "n2", State: Outdated}}, Epoch: 3}, "degraded (n3 syncing, n2 outdated)"},
	} {
		if got := Health(tc.r); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r, got, tc.want)
		}
	}
}
