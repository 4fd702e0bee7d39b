package volume

import (
	"fmt"
	"strings"
)

// Health says in a word or two how a volume stands, from its record:
// "ok" when both copies are up to date; "degraded (node-2 outdated)"
// when a copy may miss writes (its node away, fenced, or resyncing: the
// volume runs on one copy); "new" before its first owner promoted it.
func Health(r Record) string {
	var behind []string
	for _, c := range r.Copies {
		if c.State != UpToDate {
			behind = append(behind, c.Node+" "+string(c.State))
		}
	}
	switch {
	case len(behind) > 0:
		return fmt.Sprintf("degraded (%s)", strings.Join(behind, ", "))
	case r.Epoch == 0:
		return "new"
	}
	return "ok"
}
