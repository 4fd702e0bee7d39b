package volume

import (
	"slices"
	"strings"
	"testing"
)

func TestPlaceCopies(t *testing.T) {
	const gi = int64(1) << 30
	zone := func(z string) map[string]string { return map[string]string{"zone": z} }
	id := ID{Tenant: "acme", Job: "db", Name: "data"}
	for _, tc := range []struct {
		name    string
		nodes   []NodeSpace
		req     CopyRequest
		want    []string
		wantErr string
	}{
		{"most free space first, ties by name",
			[]NodeSpace{{"node-1", true, 5 * gi, nil}, {"node-2", true, 9 * gi, nil}, {"node-3", true, 5 * gi, nil}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2}, []string{"node-2", "node-1"}, ""},
		{"too small, not ready and kept nodes are passed over",
			[]NodeSpace{{"node-1", true, 1 * gi, nil}, {"node-2", false, 9 * gi, nil}, {"node-3", true, 9 * gi, nil}, {"node-4", true, 3 * gi, nil}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 1, Keep: []string{"node-3"}}, []string{"node-4"}, ""},
		{"one copy per zone",
			[]NodeSpace{{"node-1", true, 9 * gi, zone("a")}, {"node-2", true, 8 * gi, zone("a")}, {"node-3", true, 3 * gi, zone("b")}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2}, []string{"node-1", "node-3"}, ""},
		{"a replacement avoids the kept copy's zone",
			[]NodeSpace{{"node-1", true, 9 * gi, zone("a")}, {"node-2", true, 8 * gi, zone("a")}, {"node-3", true, 3 * gi, zone("b")}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 1, Keep: []string{"node-1"}}, []string{"node-3"}, ""},
		{"a custom spread label",
			[]NodeSpace{{"node-1", true, 9 * gi, map[string]string{"rack": "r1"}}, {"node-2", true, 8 * gi, map[string]string{"rack": "r1"}}, {"node-3", true, 3 * gi, map[string]string{"rack": "r2"}}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2, Spread: "rack"}, []string{"node-1", "node-3"}, ""},
		{"not enough zones: refused, saying why",
			[]NodeSpace{{"node-1", true, 9 * gi, zone("a")}, {"node-2", true, 8 * gi, zone("a")}, {"node-3", true, 1 * gi, zone("b")}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2}, nil,
			"volume acme/db/0/data needs 2 ready nodes with 2Gi free in distinct zones besides those holding its copies; 1 qualify (node-3 has 1Gi free)"},
		{"nodes without the zone label are one zone of their own",
			[]NodeSpace{{"node-1", true, 9 * gi, nil}, {"node-2", true, 8 * gi, nil}, {"node-3", true, 3 * gi, zone("b")}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2}, []string{"node-1", "node-3"}, ""},
		{"two unlabelled nodes are one zone: refused when no other zone is left",
			[]NodeSpace{{"node-1", true, 9 * gi, nil}, {"node-2", true, 8 * gi, nil}, {"node-3", true, 3 * gi, zone("b")}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 1, Keep: []string{"node-1", "node-3"}}, nil, "node-2 is, like a node holding a copy, without a zone label"},
		{"one node cannot hold two copies",
			[]NodeSpace{{"node-1", true, 9 * gi, nil}},
			CopyRequest{Volume: id, SizeBytes: 2 * gi, Copies: 2}, nil, "needs 2 ready nodes with 2Gi free besides those holding its copies; 1 qualify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlaceCopies(tc.nodes, tc.req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want error %q", got, err, tc.wantErr)
				}
				if got != nil {
					t.Errorf("a refusal placed %v", got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
