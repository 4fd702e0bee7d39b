package volume

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
)

// DefaultSpreadLabel is the node label whose values copies are spread
// over: the two copies of a volume never share a zone when nodes say
// which zone they are in.
const DefaultSpreadLabel = "zone"

// NodeSpace is what copy placement knows of a node.
type NodeSpace struct {
	Name      string
	Ready     bool
	FreeBytes int64 // free for volumes on the node's state partition
	Labels    map[string]string
}

// CopyRequest asks for the nodes of new copies.
type CopyRequest struct {
	Volume    ID
	SizeBytes int64
	// Copies is how many new copies are wanted.
	Copies int
	// Keep are the nodes that hold the volume's other copies: never
	// chosen, and their zones are taken.
	Keep []string
	// Spread is the label copies are spread over (DefaultSpreadLabel
	// when empty). If any node has it, every copy must be in a zone of
	// its own; the nodes without it count as one more zone (so that
	// labelling a few nodes never strands the others).
	Spread string
}

// PlaceCopies picks the nodes of req.Copies new copies: ready nodes with
// room for the volume, not holding a copy already, one per zone, those
// with the most free space first (ties by name: the same input gives the
// same answer). It refuses, in one line that says what was missing, when
// not enough nodes qualify; nothing is half-placed.
func PlaceCopies(nodes []NodeSpace, req CopyRequest) ([]string, error) {
	label := cmp.Or(req.Spread, DefaultSpreadLabel)
	zoned := slices.ContainsFunc(nodes, func(n NodeSpace) bool { _, ok := n.Labels[label]; return ok })
	taken := map[string]bool{}
	keep := map[string]bool{}
	for _, k := range req.Keep {
		keep[k] = true
		for _, n := range nodes {
			if n.Name == k && zoned {
				taken[n.Labels[label]] = true
			}
		}
	}
	var fit []NodeSpace
	var short []string // why nodes were passed over, for the error
	for _, n := range nodes {
		switch z, hasZone := n.Labels[label]; {
		case keep[n.Name]:
		case !n.Ready:
			short = append(short, n.Name+" not ready")
		case n.FreeBytes < req.SizeBytes:
			short = append(short, fmt.Sprintf("%s has %s free", n.Name, jobs.FormatMemory(n.FreeBytes)))
		case zoned && taken[z]:
			if !hasZone {
				short = append(short, fmt.Sprintf("%s is, like a node holding a copy, without a %s label", n.Name, label))
				break
			}
			short = append(short, fmt.Sprintf("%s is in %s %s, which holds a copy", n.Name, label, z))
		default:
			fit = append(fit, n)
		}
	}
	slices.SortFunc(fit, func(a, b NodeSpace) int {
		return cmp.Or(cmp.Compare(b.FreeBytes, a.FreeBytes), strings.Compare(a.Name, b.Name))
	})
	var chosen []string
	for _, n := range fit {
		if len(chosen) == req.Copies {
			break
		}
		if zoned {
			if taken[n.Labels[label]] {
				continue
			}
			taken[n.Labels[label]] = true
		}
		chosen = append(chosen, n.Name)
	}
	if len(chosen) < req.Copies {
		where := ""
		if zoned {
			where = " in distinct " + label + "s"
		}
		why := ""
		if len(short) > 0 {
			why = " (" + strings.Join(short, "; ") + ")"
		}
		return nil, fmt.Errorf("volume %s needs %d ready nodes with %s free%s besides those holding its copies; %d qualify%s",
			req.Volume, req.Copies, jobs.FormatMemory(req.SizeBytes), where, len(chosen), why)
	}
	return chosen, nil
}
