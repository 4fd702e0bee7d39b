package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
)

// DRBD limits (drbd.conf(5), 8.4).
const (
	maxMinor = 1<<20 - 1
	// ResourceDir holds the resource files the agent writes on a node
	// (/etc/drbd.d is on the read-only root; drbdadm is given -c).
	ResourceDir = "/run/berth/drbd"
	// DiskDir holds one link per resource to its backing device, so
	// that both nodes' files are identical whatever the device's name.
	DiskDir = "/run/berth/volumes"
)

// Resource is one DRBD 8.4 resource: the two copies of a volume,
// replicated synchronously (protocol C), fenced through etcd.
type Resource struct {
	Volume ID
	// Minor is the device /dev/drbdMINOR on both nodes; Port the TCP
	// port both listen on. Both are the volume's in the cluster.
	Minor, Port int
	// SizeBytes is the volume's size (for metrics; DRBD takes the
	// backing device's).
	SizeBytes int64
	// Addresses are the two nodes' addresses (one family); each node
	// finds its own section by its address (DRBD's "floating").
	Addresses [2]netip.Addr
	// Agent is the berth-agent binary DRBD's handlers run.
	Agent string
}

// ResourceName is the DRBD name of a volume's resource: short, in
// DRBD's character set, the same on every node.
func ResourceName(id ID) string {
	sum := sha256.Sum256([]byte(id.String()))
	return "bv-" + hex.EncodeToString(sum[:6])
}

// DiskLink is the backing device's link on a node.
func (r Resource) DiskLink() string { return path.Join(DiskDir, ResourceName(r.Volume)+".disk") }

// File is where the agent writes the resource on a node.
func (r Resource) File() string { return path.Join(ResourceDir, ResourceName(r.Volume)+".res") }

// Validate says what is wrong with r, in one line.
func (r Resource) Validate() error {
	switch {
	case r.Minor < 0 || r.Minor > maxMinor:
		return fmt.Errorf("volume %s: DRBD minor %d is outside 0..%d", r.Volume, r.Minor, maxMinor)
	case r.Port < 1 || r.Port > 65535:
		return fmt.Errorf("volume %s: DRBD port %d is outside 1..65535", r.Volume, r.Port)
	case !r.Addresses[0].IsValid() || !r.Addresses[1].IsValid():
		return fmt.Errorf("volume %s: a copy's node has no address", r.Volume)
	case r.Addresses[0] == r.Addresses[1]:
		return fmt.Errorf("volume %s: both copies at %s: the two copies must be on different nodes", r.Volume, r.Addresses[0])
	case r.Addresses[0].Is4() != r.Addresses[1].Is4():
		return fmt.Errorf("volume %s: copies at %s and %s are of different address families", r.Volume, r.Addresses[0], r.Addresses[1])
	case r.Agent == "" || strings.ContainsAny(r.Agent, "\"\\\n ;{}"):
		return fmt.Errorf("volume %s: agent path %q cannot go into a DRBD handler", r.Volume, r.Agent)
	}
	return nil
}

// Config renders the resource file, the same on both nodes.
//
//   - disk { fencing resource-and-stonith }: when the primary loses its
//     peer, DRBD freezes I/O and runs the fence-peer handler (berth's
//     etcd fence); I/O resumes only if it says the peer is outdated.
//   - after-sb-*: after a split brain nothing is thrown away silently
//     except a side that wrote nothing; two primaries disconnect.
//
// A resynced peer is recorded up to date by the owner's agent, which sees
// it in /proc/drbd (Local.reconcile), not by a handler on the peer: only
// the owner may say so (Synced).
func (r Resource) Config() (string, error) {
	if err := r.Validate(); err != nil {
		return "", err
	}
	fam := "ipv4"
	if !r.Addresses[0].Is4() {
		fam = "ipv6"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# berth volume %s (written by berth-agent; etcd holds the truth)\n", r.Volume)
	fmt.Fprintf(&b, "resource %s {\n", ResourceName(r.Volume))
	fmt.Fprintf(&b, "\tdevice minor %d;\n\tdisk %s;\n\tmeta-disk internal;\n", r.Minor, r.DiskLink())
	b.WriteString("\tdisk {\n\t\tfencing resource-and-stonith;\n\t\ton-io-error detach;\n\t}\n")
	b.WriteString("\tnet {\n\t\tprotocol C;\n\t\tafter-sb-0pri discard-zero-changes;\n\t\tafter-sb-1pri discard-secondary;\n\t\tafter-sb-2pri disconnect;\n\t}\n")
	fmt.Fprintf(&b, "\thandlers {\n\t\tfence-peer \"%s volume fence-peer %s\";\n\t}\n", r.Agent, r.Volume)
	for _, a := range r.Addresses {
		fmt.Fprintf(&b, "\tfloating %s %s;\n", fam, netip.AddrPortFrom(a, uint16(r.Port)))
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// Exit codes of DRBD 8.4's fence-peer handler (drbd.conf(5)) that berth
// uses. 5 ("peer unreachable") is never returned: DRBD would take it as
// the peer outdated and resume I/O on a primary that etcd may have
// deposed.
const (
	FenceOutdated = 4 // the peer's copy is outdated in etcd: resume I/O
	FenceDeposed  = 6 // another node owns the volume: outdate this copy, I/O stays frozen
	FenceFailed   = 1 // etcd not reached: I/O stays frozen until the agent fences and resumes it
)

// FenceExitCode maps the result of FenceNode to the handler's exit code.
func FenceExitCode(err error) int {
	switch {
	case err == nil:
		return FenceOutdated
	case errors.Is(err, ErrDeposed):
		return FenceDeposed
	}
	return FenceFailed
}

// ResourceOf is the DRBD resource of a record whose two copies' nodes
// are at addrs (in the order of r.Copies).
func ResourceOf(r Record, addrs [2]netip.Addr, agent string) Resource {
	return Resource{Volume: r.ID, Minor: r.Minor, Port: BasePort + r.Minor, SizeBytes: r.SizeBytes, Addresses: addrs, Agent: agent}
}
