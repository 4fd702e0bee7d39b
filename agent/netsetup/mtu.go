package netsetup

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// MTU limits: IPv4 needs 68 (RFC 791); below 1280 the kernel removes IPv6
// from an interface (RFC 8200), which would silently cut the containers'
// IPv6 addresses.
const (
	minMTU4 = 68
	minMTU6 = 1280
)

// checkMTU refuses an MTU the container network cannot run with.
func checkMTU(mtu int, ipv6 bool) error {
	switch {
	case ipv6 && mtu < minMTU6:
		return fmt.Errorf("MTU %d is below IPv6's minimum of %d", mtu, minMTU6)
	case mtu < minMTU4:
		return fmt.Errorf("MTU %d is below IPv4's minimum of %d", mtu, minMTU4)
	}
	return nil
}

// portOf names the container whose host-side veth l is, when l is one of
// ours (a veth with our alias and the name derived from it) attached to
// the bridge with index bridge. The alias prefix alone is not enough:
// netroute's VXLAN device carries "berth:netroute".
func portOf(l netlink.Link, bridge int) (string, bool) {
	a := l.Attrs()
	id, ok := strings.CutPrefix(a.Alias, aliasPrefix)
	if !ok || l.Type() != "veth" || a.MasterIndex != bridge || validateID(id) != nil || a.Name != hostVethName(id) {
		return "", false
	}
	return id, true
}

// SetMTU sets the MTU of the container network: the bridge, both ends of
// every container's veth pair on it (eth0 inside the container's
// namespace) and the pairs Attach creates or repairs from now on. The
// caller passes what the paths between nodes carry (1450 over VXLAN on a
// 1500 underlay), so containers never send more than the encapsulation
// takes. mtu <= 0 means unknown and changes nothing.
//
// One container that cannot be changed does not stop the others; the
// error names each one, and calling SetMTU again retries (ends already at
// mtu are left alone).
func (n *Network) SetMTU(mtu int) error {
	if mtu <= 0 {
		return nil
	}
	if err := checkMTU(mtu, n.ipv6); err != nil {
		return fmt.Errorf("set container network MTU: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host == nil {
		return errClosed
	}
	// Recorded first: a container attached after this call gets mtu even
	// if a step below fails.
	n.mtu = mtu
	if err := n.ensureBridge(); err != nil {
		return fmt.Errorf("set container network MTU: %w", err)
	}
	links, err := n.host.LinkList()
	if err != nil {
		return fmt.Errorf("set container network MTU: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		id, ok := portOf(l, n.bridge.Attrs().Index)
		if !ok {
			continue
		}
		if err := n.setContainerMTU(id, l, mtu); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", id, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set container network MTU %d: %w", mtu, err)
	}
	return nil
}

// setContainerMTU opens id's namespace to reach its end of the pair.
func (n *Network) setContainerMTU(id string, hostLink netlink.Link, mtu int) error {
	path := n.NetNSPath(id)
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer nsh.Close()
	inner, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer inner.Close()
	return n.setPairMTU(hostLink, inner, mtu)
}

// setPairMTU sets both ends of a container's veth pair to mtu; the host
// end and eth0 have an MTU each, and a container whose eth0 stays larger
// would still send frames the path drops.
func (n *Network) setPairMTU(hostLink netlink.Link, inner *netlink.Handle, mtu int) error {
	if hostLink.Attrs().MTU != mtu {
		if err := n.host.LinkSetMTU(hostLink, mtu); err != nil {
			return fmt.Errorf("MTU %d on %s: %w", mtu, hostLink.Attrs().Name, err)
		}
	}
	eth0, err := inner.LinkByName(containerIfName)
	if err != nil {
		return fmt.Errorf("find %s in container: %w", containerIfName, err)
	}
	if eth0.Attrs().Index != hostLink.Attrs().ParentIndex {
		// Not this veth's peer (the namespace was recreated): Attach
		// replaces the pair, with mtu.
		return nil
	}
	if eth0.Attrs().MTU != mtu {
		if err := inner.LinkSetMTU(eth0, mtu); err != nil {
			return fmt.Errorf("MTU %d on %s in container: %w", mtu, containerIfName, err)
		}
	}
	return nil
}
