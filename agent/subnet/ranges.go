// Package subnet leases each node its own container subnets (an IPv4 one
// and an IPv6 /64) out of the cluster-wide ranges stored in etcd at
// bootstrap. The decisions (range checks, the lowest free subnet, which
// leases to reclaim) are pure functions; store.go and node.go do the etcd
// side: every lease is created in a transaction that requires its key not
// to exist, so two nodes never hold the same subnet.
package subnet

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// NodeBits6 is the size of every node's IPv6 subnet: a /64, the size
// SLAAC and most IPv6 tooling assume.
const NodeBits6 = 64

// Defaults of the cluster ranges.
const (
	DefaultIPv4         = "10.88.0.0/16"
	DefaultNodeBits4    = 24
	DefaultIPv6Bits     = 48
	DefaultReclaimAfter = 24 * time.Hour
)

// Bounds of the ranges. A node subnet of IPv4 needs a /30 at least
// (network, gateway, one container, broadcast); ranges are limited to
// 2^32 node subnets so an index fits the arithmetic below.
const (
	minIPv4Bits  = 8
	maxNodeBits4 = 30
	minIPv6Bits  = 32
)

// ula is fc00::/7, the unique local addresses of RFC 4193.
var ula = netip.MustParsePrefix("fc00::/7")

// Ranges is the document at RangesKey: the cluster's container ranges,
// chosen once at bootstrap and the same for every node.
type Ranges struct {
	IPv4      netip.Prefix `json:"ipv4"`           // e.g. 10.88.0.0/16
	NodeBits4 int          `json:"ipv4_node_bits"` // each node's IPv4 subnet, e.g. 24
	IPv6      netip.Prefix `json:"ipv6"`           // a ULA, e.g. fd5a:1f03:9c2e::/48; nodes get /64s
	// ReclaimAfterSeconds is how long a node must be gone (no node
	// document, no etcd member) before its subnets return to the pool.
	ReclaimAfterSeconds int64 `json:"reclaim_after_seconds"`
}

// ReclaimAfter is the grace period as a duration.
func (r Ranges) ReclaimAfter() time.Duration {
	return time.Duration(r.ReclaimAfterSeconds) * time.Second
}

// Validate checks a complete ranges document (IPv6 chosen).
func (r Ranges) Validate() error {
	if err := CheckIPv4(r.IPv4, r.NodeBits4); err != nil {
		return err
	}
	if err := CheckIPv6(r.IPv6); err != nil {
		return err
	}
	if r.ReclaimAfterSeconds < 1 {
		return fmt.Errorf("subnet reclaim-after %ds must be at least 1s", r.ReclaimAfterSeconds)
	}
	return nil
}

// CheckIPv4 checks the IPv4 cluster range and the per-node prefix length.
func CheckIPv4(p netip.Prefix, nodeBits int) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("cluster subnet %q is not an IPv4 prefix like %s", p, DefaultIPv4)
	}
	if p.Masked() != p {
		return fmt.Errorf("cluster subnet %s has host bits set: write it as %s", p, p.Masked())
	}
	if p.Bits() < minIPv4Bits {
		return fmt.Errorf("cluster subnet %s is larger than a /%d", p, minIPv4Bits)
	}
	if nodeBits < p.Bits() {
		return fmt.Errorf("node subnet size /%d is larger than the cluster subnet %s", nodeBits, p)
	}
	if nodeBits > maxNodeBits4 {
		return fmt.Errorf("node subnet size /%d is too small: a node needs at least a /%d (gateway and one container)", nodeBits, maxNodeBits4)
	}
	return nil
}

// CheckIPv6 checks the IPv6 cluster range: a ULA prefix from /32 to /64
// (nodes get /64s out of it).
func CheckIPv6(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() {
		return fmt.Errorf("cluster subnet6 %q is not an IPv6 prefix like fd5a:1f03:9c2e::/48", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("cluster subnet6 %s has host bits set: write it as %s", p, p.Masked())
	}
	if !ula.Contains(p.Addr()) {
		return fmt.Errorf("cluster subnet6 %s is not a unique local (fc00::/7) prefix", p)
	}
	if p.Bits() < minIPv6Bits || p.Bits() > NodeBits6 {
		return fmt.Errorf("cluster subnet6 %s must be a /%d to /%d (nodes get /%d subnets)", p, minIPv6Bits, NodeBits6, NodeBits6)
	}
	return nil
}

// CheckOwn checks a node's explicitly configured bridge subnet against
// the cluster range of its family: it must not overlap it, since the
// range's subnets are leased to other nodes. An explicit subnet is a
// node-local network outside the cluster network.
func CheckOwn(setting string, own, clusterRange netip.Prefix) error {
	if own.IsValid() && clusterRange.IsValid() && own.Overlaps(clusterRange) {
		return fmt.Errorf("%s %s overlaps the cluster range %s, whose subnets are leased to the nodes: remove %s to lease one, or choose a subnet outside %s",
			setting, own, clusterRange, setting, clusterRange)
	}
	return nil
}

// CheckAddrs refuses ranges that contain one of the node's own addresses:
// routes to the containers would capture the node's traffic.
func (r Ranges) CheckAddrs(addrs []netip.Addr) error {
	for _, a := range addrs {
		for _, p := range []netip.Prefix{r.IPv4, r.IPv6} {
			if p.IsValid() && p.Contains(a.Unmap()) {
				return fmt.Errorf("cluster range %s contains this node's address %s: choose cluster ranges apart from the node network at bootstrap", p, a)
			}
		}
	}
	return nil
}

// RandomULA returns a /48 with a random 40-bit global ID under fd00::/8,
// as RFC 4193 section 3.2 asks, read from rnd (crypto/rand when nil).
func RandomULA(rnd io.Reader) (netip.Prefix, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var b [16]byte
	b[0] = 0xfd
	if _, err := io.ReadFull(rnd, b[1:6]); err != nil {
		return netip.Prefix{}, fmt.Errorf("random IPv6 global ID: %w", err)
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), DefaultIPv6Bits), nil
}
