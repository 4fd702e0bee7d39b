package nodeconfig

import (
	"fmt"
	"net/netip"
	"strings"
)

// networkFilePrefix marks the .network files this package owns under
// /run/systemd/network; stale ones with it are removed.
const networkFilePrefix = "berth-"

// dhcpFileName sorts after configured interfaces' files; it is written only
// when no (valid) network section exists.
const dhcpFileName = "90-" + networkFilePrefix + "dhcp.network"

const generatedNote = "# Written by berth-node-config at every boot from node.yaml; edit node.yaml, not this file.\n"

// dhcpNetwork configures every ethernet interface with DHCPv4 and IPv6
// router advertisements. Name= keeps it off the containers' veths (bv*)
// and bridge, which the agent manages.
func dhcpNetwork() []byte {
	return []byte(generatedNote + `[Match]
Name=en* eth*
Type=ether

[Network]
DHCP=ipv4
IPv6AcceptRA=yes
LinkLocalAddressing=ipv6
`)
}

// networkFiles renders one .network file per interface, named so that
// systemd-networkd tries them in the order given (the first match wins).
func networkFiles(n *Network) map[string][]byte {
	if n == nil {
		return map[string][]byte{dhcpFileName: dhcpNetwork()}
	}
	files := map[string][]byte{}
	for i, ifc := range n.Interfaces {
		files[fmt.Sprintf("%02d-%s%d.network", 10+i, networkFilePrefix, i)] = interfaceNetwork(ifc)
	}
	return files
}

func interfaceNetwork(ifc Interface) []byte {
	var b strings.Builder
	b.WriteString(generatedNote)
	b.WriteString("[Match]\n")
	if ifc.MAC != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", ifc.MAC)
	} else {
		fmt.Fprintf(&b, "Name=%s\n", ifc.Name)
	}
	b.WriteString("\n[Network]\n")
	if ifc.DHCP {
		b.WriteString("DHCP=ipv4\n")
	} else {
		b.WriteString("DHCP=no\n")
	}
	// Router advertisements stay on unless IPv6 is configured statically.
	static6 := ifc.Gateway6.IsValid()
	for _, a := range ifc.Addresses {
		static6 = static6 || a.Addr().Is6()
	}
	if static6 && !ifc.DHCP {
		b.WriteString("IPv6AcceptRA=no\n")
	} else {
		b.WriteString("IPv6AcceptRA=yes\n")
	}
	b.WriteString("LinkLocalAddressing=ipv6\n")
	for _, a := range ifc.Addresses {
		fmt.Fprintf(&b, "Address=%s\n", a)
	}
	for _, g := range []netip.Addr{ifc.Gateway4, ifc.Gateway6} {
		if g.IsValid() {
			fmt.Fprintf(&b, "Gateway=%s\n", g)
		}
	}
	for _, d := range ifc.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	return []byte(b.String())
}

// resolvConf lists every interface's name servers once, in order; nil when
// none are configured (resolv.conf is then left alone).
func resolvConf(n *Network) []byte {
	if n == nil {
		return nil
	}
	seen := map[netip.Addr]bool{}
	var b strings.Builder
	for _, ifc := range n.Interfaces {
		for _, d := range ifc.DNS {
			if !seen[d] {
				seen[d] = true
				fmt.Fprintf(&b, "nameserver %s\n", d)
			}
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return []byte(generatedNote + b.String())
}

func authorizedKeys(keys []string) []byte {
	var b strings.Builder
	b.WriteString(generatedNote)
	for _, k := range keys {
		b.WriteString(k + "\n")
	}
	return []byte(b.String())
}
