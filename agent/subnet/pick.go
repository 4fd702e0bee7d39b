package subnet

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrExhausted is wrapped by Pick's error when every subnet of a range is
// leased.
var ErrExhausted = errors.New("no free subnet")

// Pick returns the lowest subnet of size /nodeBits inside rng that
// overlaps none of taken. It is deterministic: every node racing for a
// subnet proposes the same one, and the etcd transaction decides.
func Pick(rng netip.Prefix, nodeBits int, taken []netip.Prefix) (netip.Prefix, error) {
	width := nodeBits - rng.Bits()
	if width < 0 || width > 32 || nodeBits > rng.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("node subnets /%d do not fit in %s", nodeBits, rng)
	}
	// Only taken prefixes inside rng can block a candidate; the rest
	// (leases of an older range) are ignored.
	var inside []netip.Prefix
	for _, t := range taken {
		if t.IsValid() && t.Overlaps(rng) {
			inside = append(inside, t.Masked())
		}
	}
	count := uint64(1) << width
	// Every step past the first is a blocked candidate, so the scan is
	// bounded by what is taken, not by the size of the range.
	for i := uint64(0); i < count; i++ {
		cand := nth(rng, nodeBits, i)
		free := true
		for _, t := range inside {
			if t.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d /%d subnets of %s are leased: remove nodes that are gone for good (their subnets return after the reclaim grace period) or bootstrap the cluster with a larger range",
		ErrExhausted, count, nodeBits, rng)
}

// nth is the i-th subnet of size /nodeBits inside rng (i fits the bits
// between rng's length and nodeBits).
func nth(rng netip.Prefix, nodeBits int, i uint64) netip.Prefix {
	b := rng.Masked().Addr().AsSlice()
	// Write i's bits, lowest first, into bit positions nodeBits-1 down to
	// rng.Bits() (bit 0 is the top bit of the first byte).
	for pos := nodeBits - 1; pos >= rng.Bits() && i > 0; pos-- {
		if i&1 == 1 {
			b[pos/8] |= 0x80 >> (pos % 8)
		}
		i >>= 1
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, nodeBits)
}
