package volume

import (
	"errors"
	"fmt"
	"time"
)

// ErrDeposed is the answer to a node that acts as the owner of an epoch
// that is over: another node owns the volume now. A deposed primary keeps
// its I/O frozen and stops its container; it never resumes writing.
var ErrDeposed = errors.New("deposed")

// PromoteInput is what Promote decides on.
type PromoteInput struct {
	Record Record
	// Node asks to make its copy primary.
	Node string
	// OwnerAlive tells whether the current owner still holds its node
	// lease in etcd: a live owner is never replaced.
	OwnerAlive bool
	Now        time.Time
}

// Promote decides whether Node may make its copy primary and returns the
// record that says so. The owner keeps its epoch (a restart of the owner's
// container promotes again); a new owner takes the next epoch, and only
// when the old one is gone and the new one's copy is up to date.
func Promote(in PromoteInput) (Record, error) {
	r := in.Record.clone()
	i := r.copyOf(in.Node)
	if i < 0 {
		return r, fmt.Errorf("volume %s has no copy on %s (copies on %s)", r.ID, in.Node, nodesOf(r))
	}
	if r.Owner == in.Node {
		return r, nil
	}
	if r.Owner != "" && in.OwnerAlive {
		return r, fmt.Errorf("volume %s is owned by %s (epoch %d), which is alive: stop its replica first", r.ID, r.Owner, r.Epoch)
	}
	if c := r.Copies[i]; c.State != UpToDate {
		why := ""
		if c.Reason != "" {
			why = " (" + c.Reason + ")"
		}
		return r, fmt.Errorf("volume %s: the copy on %s is %s since %s%s: it may miss acknowledged writes and cannot become primary",
			r.ID, in.Node, c.State, c.Since.UTC().Format(time.RFC3339), why)
	}
	r.Owner = in.Node
	r.Epoch++
	return r, nil
}

// FenceInput is what Fence decides on.
type FenceInput struct {
	Record Record
	// Node is the primary that lost its peer, acting at Epoch.
	Node  string
	Epoch int64
	Now   time.Time
}

// Fence decides what the primary Node that lost its DRBD peer may do: as
// the owner of the current epoch it marks every other copy outdated (they
// miss what it writes from now on) and resumes I/O. A node that is not the
// owner at Epoch gets ErrDeposed and must keep I/O frozen.
func Fence(in FenceInput) (Record, error) {
	r := in.Record.clone()
	if err := r.ownedBy(in.Node, in.Epoch); err != nil {
		return r, err
	}
	for i, c := range r.Copies {
		if c.Node != in.Node && c.State != Outdated {
			r.Copies[i] = Copy{Node: c.Node, Address: c.Address, State: Outdated, Since: in.Now, Reason: fmt.Sprintf("fenced by %s at epoch %d: lost the connection", in.Node, in.Epoch)}
		}
	}
	return r, nil
}

// SyncedInput is what Synced decides on.
type SyncedInput struct {
	Record Record
	// Node is the owner reporting, at Epoch, that Peer's copy finished
	// its resync (DRBD shows it UpToDate and connected).
	Node, Peer string
	Epoch      int64
	Now        time.Time
}

// Synced records Peer's copy up to date again. Only the owner of the
// current epoch may say so: it is the one whose writes Peer now holds.
func Synced(in SyncedInput) (Record, error) {
	r := in.Record.clone()
	if err := r.ownedBy(in.Node, in.Epoch); err != nil {
		return r, err
	}
	i := r.copyOf(in.Peer)
	if i < 0 || in.Peer == in.Node {
		return r, fmt.Errorf("volume %s has no peer copy on %s (copies on %s)", r.ID, in.Peer, nodesOf(r))
	}
	if r.Copies[i].State != UpToDate {
		r.Copies[i] = Copy{Node: in.Peer, Address: r.Copies[i].Address, State: UpToDate, Since: in.Now, Reason: fmt.Sprintf("resynced from %s at epoch %d", in.Node, in.Epoch)}
	}
	return r, nil
}

// ReplaceInput is what Replace decides on.
type ReplaceInput struct {
	Record Record
	// Gone is the node whose copy is dropped (dead or drained); New gets
	// a new copy, built by a full sync from the owner.
	Gone, New string
	// NewAddress is New's replication address.
	NewAddress string
	Now        time.Time
}

// Replace moves a copy off Gone onto New. The owner's copy is never
// replaced (move the owner first), and New must not hold a copy already:
// the two copies of a pair are on different nodes.
func Replace(in ReplaceInput) (Record, error) {
	r := in.Record.clone()
	i := r.copyOf(in.Gone)
	switch {
	case i < 0:
		return r, fmt.Errorf("volume %s has no copy on %s (copies on %s)", r.ID, in.Gone, nodesOf(r))
	case in.Gone == r.Owner:
		return r, fmt.Errorf("volume %s: the copy on %s is the owner's: promote the other copy first", r.ID, in.Gone)
	case r.copyOf(in.New) >= 0:
		return r, fmt.Errorf("volume %s already has a copy on %s: the copies must be on different nodes", r.ID, in.New)
	case in.New == "":
		return r, fmt.Errorf("volume %s: no node to take the copy of %s", r.ID, in.Gone)
	}
	r.Copies[i] = Copy{Node: in.New, Address: in.NewAddress, State: Syncing, Since: in.Now, Reason: "replaces the copy on " + in.Gone}
	return r, nil
}

// ReleaseInput is what Release decides on.
type ReleaseInput struct {
	Record Record
	// Node gives up ownership at Epoch: its replica stopped here (moved
	// or removed) and its copy is secondary again.
	Node  string
	Epoch int64
}

// Release clears the owner so that the other copy's node may promote
// while this one is alive (a planned move). The epoch stays: the next
// owner takes the one after it. A release by a node that no longer owns
// the epoch changes nothing.
func Release(in ReleaseInput) (Record, error) {
	r := in.Record.clone()
	if err := r.ownedBy(in.Node, in.Epoch); err != nil {
		return r, err
	}
	r.Owner = ""
	return r, nil
}

// ownedBy is nil when node owns the record at epoch, ErrDeposed if not.
func (r Record) ownedBy(node string, epoch int64) error {
	if r.Owner != node || r.Epoch != epoch {
		return fmt.Errorf("volume %s: %s acts at epoch %d but %s owns epoch %d: %w", r.ID, node, epoch, orNone(r.Owner), r.Epoch, ErrDeposed)
	}
	return nil
}

func nodesOf(r Record) string {
	if len(r.Copies) == 0 {
		return "no node"
	}
	s := ""
	for i, c := range r.Copies {
		if i > 0 {
			s += ", "
		}
		s += c.Node
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "nobody"
	}
	return s
}

// RunnableOn lists the nodes where a replica using the volume may run,
// best first: the owner while it is alive (its copy is the primary), else
// every live node whose copy is up to date (one of them promotes). Empty
// means no live node has the data: the replica waits rather than start
// on a copy that may miss acknowledged writes.
func RunnableOn(r Record, alive map[string]bool) []string {
	if r.Owner != "" && alive[r.Owner] {
		if _, ok := r.Copy(r.Owner); ok {
			return []string{r.Owner}
		}
	}
	var nodes []string
	for _, c := range r.Copies {
		if c.State == UpToDate && alive[c.Node] {
			nodes = append(nodes, c.Node)
		}
	}
	return nodes
}
