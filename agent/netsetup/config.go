// Package netsetup gives every container on a node its own network namespace,
// wired to a node-local bridge with a veth pair and addressed from a small
// file-based IPAM that survives agent restarts. Network.SetMTU gives the
// bridge and every veth pair the MTU the paths between nodes carry.
//
// All netlink work happens in the network namespace of the thread that called
// Open, so tests can run the whole package inside a throwaway namespace.
package netsetup

import (
	"fmt"
	"net/netip"
	"regexp"
)

// Defaults used when a Config field is left zero.
const (
	DefaultBridge   = "berth0"
	DefaultStateDir = "/var/lib/berth/net"
	DefaultNetNSDir = "/run/berth/netns"
)

var (
	DefaultSubnet4 = netip.MustParsePrefix("10.88.0.0/24")
	DefaultSubnet6 = netip.MustParsePrefix("fd42:6265:7274::/64")
)

// Config describes the node network. Zero fields take the defaults above.
type Config struct {
	Bridge  string       // bridge interface name, default "berth0"
	Subnet4 netip.Prefix // container IPv4 subnet, default 10.88.0.0/24
	Subnet6 netip.Prefix // container IPv6 subnet, default fd42:6265:7274::/64
	// DisableIPv6 turns IPv6 off even when the host has it. (A zero Subnet6
	// means "default", so disabling needs its own switch.)
	DisableIPv6 bool
	StateDir    string // IPAM state, default /var/lib/berth/net
	NetNSDir    string // named netns files, default /run/berth/netns
}

// idPattern matches the runtime's container IDs; an ID is also a file name here.
var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)

func validateID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("invalid container id %q: want ^[a-z0-9][a-z0-9_.-]{0,127}$", id)
	}
	return nil
}

// bridgeNamePattern keeps names within IFNAMSIZ and free of characters the kernel rejects.
var bridgeNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

// withDefaults fills zero fields and checks the result.
func (c Config) withDefaults() (Config, error) {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet4.IsValid() {
		c.Subnet4 = DefaultSubnet4
	}
	if !c.Subnet6.IsValid() {
		c.Subnet6 = DefaultSubnet6
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.NetNSDir == "" {
		c.NetNSDir = DefaultNetNSDir
	}
	c.Subnet4 = c.Subnet4.Masked()
	c.Subnet6 = c.Subnet6.Masked()

	if !bridgeNamePattern.MatchString(c.Bridge) {
		return c, fmt.Errorf("invalid bridge name %q: 1-15 characters of A-Za-z0-9_.-", c.Bridge)
	}
	if !c.Subnet4.Addr().Is4() {
		return c, fmt.Errorf("subnet4 %s is not an IPv4 prefix", c.Subnet4)
	}
	// Network, gateway, one container and broadcast need at least a /30.
	if c.Subnet4.Bits() > 30 {
		return c, fmt.Errorf("subnet4 %s is too small: need at least a /30 (gateway plus one container)", c.Subnet4)
	}
	if !c.Subnet6.Addr().Is6() || c.Subnet6.Addr().Is4In6() {
		return c, fmt.Errorf("subnet6 %s is not an IPv6 prefix", c.Subnet6)
	}
	if c.Subnet6.Bits() > 126 {
		return c, fmt.Errorf("subnet6 %s is too small: need at least a /126", c.Subnet6)
	}
	return c, nil
}

// gateway is the first host address of a subnet (.1 or ::1); it sits on the bridge.
func gateway(p netip.Prefix) netip.Addr {
	return p.Addr().Next()
}
