package netsetup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// containerIfName is the interface name every container sees.
const containerIfName = "eth0"

// aliasPrefix marks host-side veths we own; the rest of the alias is the
// container id, which lets Attach detect a (very unlikely) name-hash collision.
const aliasPrefix = "berth:"

var errClosed = errors.New("netsetup: network is closed")

// Network is the node's container network: one bridge and the attachments on it.
// Its methods are safe for concurrent use.
type Network struct {
	cfg    Config
	ipv6   bool
	hostNS netns.NsHandle  // the namespace Open ran in; all host-side links live there
	host   *netlink.Handle // netlink socket bound to hostNS
	ipam   *ipam
	bridge netlink.Link
	// mtu is what SetMTU asked for: the bridge and every pair get it; 0
	// leaves the bridge's MTU as found and new pairs take the bridge's.
	mtu int

	mu sync.Mutex // serialises Attach/Detach/SetMTU; IPAM's flock covers other processes
}

// Attachment is a container's network: its named netns and addresses.
type Attachment struct {
	NetNSPath string
	IPv4      netip.Addr
	IPv6      netip.Addr // invalid when IPv6 is off
}

// Open ensures the bridge exists with the gateway addresses and that the
// kernel forwards packets. It is idempotent and works in the network namespace
// of the calling thread.
func Open(cfg Config) (*Network, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// Pin the goroutine so the namespace we record and the /proc/sys files we
	// write belong to the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	hostNS, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	n := &Network{cfg: cfg, hostNS: hostNS}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()

	n.ipv6 = !cfg.DisableIPv6 && hostIPv6Enabled()
	subnet6 := cfg.Subnet6
	if !n.ipv6 {
		subnet6 = netip.Prefix{}
	}
	if n.ipam, err = newIPAM(cfg.StateDir, cfg.Subnet4, subnet6); err != nil {
		return nil, err
	}
	if n.host, err = netlink.NewHandleAt(hostNS); err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	if err := n.ensureBridge(); err != nil {
		return nil, err
	}
	if err := enableSysctl("net/ipv4/ip_forward"); err != nil {
		return nil, err
	}
	if n.ipv6 {
		// Note: with forwarding on, the kernel ignores router advertisements on
		// interfaces whose accept_ra is 1; berth nodes configure addresses statically.
		if err := enableSysctl("net/ipv6/conf/all/forwarding"); err != nil {
			return nil, err
		}
	}
	if err := ensureSharedDir(cfg.NetNSDir); err != nil {
		return nil, err
	}
	ok = true
	return n, nil
}

// Close releases the netlink socket; the bridge and attachments stay.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host != nil {
		n.host.Close()
		n.host = nil
	}
	if n.hostNS.IsOpen() {
		n.hostNS.Close()
	}
	return nil
}

// IPv6Enabled reports whether attachments get IPv6 addresses.
func (n *Network) IPv6Enabled() bool { return n.ipv6 }

// Gateway4 and Gateway6 are the bridge addresses containers route through.
func (n *Network) Gateway4() netip.Addr { return gateway(n.cfg.Subnet4) }

// Gateway6 is invalid when IPv6 is off.
func (n *Network) Gateway6() netip.Addr {
	if !n.ipv6 {
		return netip.Addr{}
	}
	return gateway(n.cfg.Subnet6)
}

// NetNSPath is where Attach pins id's network namespace.
func (n *Network) NetNSPath(id string) string {
	return filepath.Join(n.cfg.NetNSDir, id)
}

func hostIPv6Enabled() bool {
	data, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(data)) == "0"
}

// enableSysctl writes 1 unless the value already is 1, so a read-only
// /proc/sys is fine on hosts that were configured beforehand.
func enableSysctl(name string) error {
	p := "/proc/sys/" + name
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if strings.TrimSpace(string(data)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return nil
}

func (n *Network) ensureBridge() error {
	name := n.cfg.Bridge
	link, err := n.host.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		// A fixed MAC stops the kernel from re-deriving the bridge address
		// from its ports as containers come and go, which would leave every
		// container's neighbour entry for the gateway stale.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: localMAC(0xbb, []byte(name))}}
		if err := n.host.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = n.host.LinkByName(name); err != nil {
			return fmt.Errorf("find bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("interface %s exists but is a %s, not a bridge", name, link.Type())
	}
	// Also after SetMTU: a bridge recreated behind our back starts at 1500.
	if n.mtu > 0 && link.Attrs().MTU != n.mtu {
		if err := n.host.LinkSetMTU(link, n.mtu); err != nil {
			return fmt.Errorf("MTU %d on bridge %s: %w", n.mtu, name, err)
		}
		link.Attrs().MTU = n.mtu // new pairs copy it (ensureVeth)
	}
	addrs := []netip.Prefix{netip.PrefixFrom(gateway(n.cfg.Subnet4), n.cfg.Subnet4.Bits())}
	if n.ipv6 {
		addrs = append(addrs, netip.PrefixFrom(gateway(n.cfg.Subnet6), n.cfg.Subnet6.Bits()))
	}
	for _, p := range addrs {
		if err := n.host.AddrReplace(link, nlAddr(p)); err != nil {
			return fmt.Errorf("address %s on bridge %s: %w", p, name, err)
		}
	}
	if err := n.host.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	n.bridge = link
	return nil
}

// nlAddr converts a prefix to a netlink address; IPv6 skips duplicate address
// detection so the address is usable at once instead of after ~2s.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// hostVethName is deterministic per id and fits IFNAMSIZ (15 chars):
// "bv" + 13 hex digits (52 bits) of sha256(id). Collisions are detected via
// the link alias, never silently shared.
func hostVethName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "bv" + hex.EncodeToString(sum[:])[:13]
}

// containerMAC derives eth0's MAC from its IPv4 address (as Docker does), so a
// reused address or a repaired veth keeps the MAC that neighbours have cached.
func containerMAC(ip4 netip.Addr) net.HardwareAddr {
	b := ip4.As4()
	return net.HardwareAddr{0x02, 0xbe, b[0], b[1], b[2], b[3]}
}

// localMAC is a locally administered unicast MAC: 02:<kind>:<4 bytes of sha256(seed)>.
func localMAC(kind byte, seed []byte) net.HardwareAddr {
	sum := sha256.Sum256(seed)
	return net.HardwareAddr{0x02, kind, sum[0], sum[1], sum[2], sum[3]}
}

// Attach gives id a named network namespace connected to the bridge. Calling it
// again for the same id returns the same Attachment and repairs missing parts.
func (n *Network) Attach(id string) (Attachment, error) {
	if err := validateID(id); err != nil {
		return Attachment{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host == nil {
		return Attachment{}, errClosed
	}

	path := n.NetNSPath(id)
	existed, err := isNetNSMount(path)
	if err != nil {
		return Attachment{}, err
	}
	att, err := n.attach(id, path, existed)
	if err != nil {
		if !existed {
			// Do not leave half a fresh attachment behind.
			if derr := n.detach(id); derr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", derr))
			}
		}
		return Attachment{}, fmt.Errorf("attach %s: %w", id, err)
	}
	return att, nil
}

func (n *Network) attach(id, path string, existed bool) (Attachment, error) {
	// Cheap, and repairs a bridge deleted behind our back since Open.
	if err := n.ensureBridge(); err != nil {
		return Attachment{}, err
	}
	alloc, err := n.ipam.allocate(id)
	if err != nil {
		return Attachment{}, err
	}
	if !existed {
		// A leftover plain file (crash between create and mount) is replaced.
		if err := removeNamedNetNS(path); err != nil {
			return Attachment{}, err
		}
		if err := createNamedNetNS(path); err != nil {
			return Attachment{}, err
		}
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return Attachment{}, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer nsh.Close()
	inner, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return Attachment{}, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer inner.Close()

	hostLink, err := n.ensureVeth(id, alloc.IPv4, nsh, inner)
	if err != nil {
		return Attachment{}, err
	}
	if n.mtu > 0 {
		// A pair kept from before SetMTU (agent restart, repair).
		if err := n.setPairMTU(hostLink, inner, n.mtu); err != nil {
			return Attachment{}, err
		}
	}
	if err := n.host.LinkSetMaster(hostLink, n.bridge); err != nil {
		return Attachment{}, fmt.Errorf("attach %s to bridge %s: %w", hostLink.Attrs().Name, n.cfg.Bridge, err)
	}
	if err := n.host.LinkSetUp(hostLink); err != nil {
		return Attachment{}, fmt.Errorf("bring up %s: %w", hostLink.Attrs().Name, err)
	}
	if err := n.configureInside(inner, alloc); err != nil {
		return Attachment{}, err
	}
	att := Attachment{NetNSPath: path, IPv4: alloc.IPv4}
	if n.ipv6 {
		att.IPv6 = alloc.IPv6
	}
	return att, nil
}

// ensureVeth returns the host side of id's veth pair, creating the pair (peer
// directly inside the container netns as eth0) when it is missing or broken.
func (n *Network) ensureVeth(id string, ip4 netip.Addr, nsh netns.NsHandle, inner *netlink.Handle) (netlink.Link, error) {
	name := hostVethName(id)
	hostLink, err := n.host.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &notFound) {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	if err == nil {
		if alias := hostLink.Attrs().Alias; alias != aliasPrefix+id {
			return nil, fmt.Errorf("veth name %s already used by %q (hash collision or foreign link)", name, strings.TrimPrefix(alias, aliasPrefix))
		}
		eth0, err := inner.LinkByName(containerIfName)
		if err == nil && eth0.Attrs().Index == hostLink.Attrs().ParentIndex {
			return hostLink, nil
		}
		// The peer is gone or elsewhere (e.g. the netns was recreated): start over.
		if err := n.host.LinkDel(hostLink); err != nil {
			return nil, fmt.Errorf("delete stale %s: %w", name, err)
		}
	}
	if old, err := inner.LinkByName(containerIfName); err == nil {
		if err := inner.LinkDel(old); err != nil {
			return nil, fmt.Errorf("delete stale %s in container: %w", containerIfName, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: name, MTU: n.bridge.Attrs().MTU},
		PeerName:         containerIfName,
		PeerNamespace:    netlink.NsFd(nsh),
		PeerHardwareAddr: containerMAC(ip4),
	}
	if err := n.host.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", name, err)
	}
	hostLink, err = n.host.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find new veth %s: %w", name, err)
	}
	if err := n.host.LinkSetAlias(hostLink, aliasPrefix+id); err != nil {
		return nil, fmt.Errorf("label veth %s: %w", name, err)
	}
	return hostLink, nil
}

// configureInside sets lo and eth0 up with the allocated addresses and default routes.
func (n *Network) configureInside(inner *netlink.Handle, alloc allocation) error {
	lo, err := inner.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in container: %w", err)
	}
	if err := inner.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in container: %w", err)
	}
	eth0, err := inner.LinkByName(containerIfName)
	if err != nil {
		return fmt.Errorf("find %s in container: %w", containerIfName, err)
	}
	type family struct {
		addr   netip.Addr
		subnet netip.Prefix
	}
	fams := []family{{alloc.IPv4, n.cfg.Subnet4}}
	if n.ipv6 {
		fams = append(fams, family{alloc.IPv6, n.cfg.Subnet6})
	}
	for _, f := range fams {
		if err := inner.AddrReplace(eth0, nlAddr(netip.PrefixFrom(f.addr, f.subnet.Bits()))); err != nil {
			return fmt.Errorf("address %s on %s: %w", f.addr, containerIfName, err)
		}
	}
	if err := inner.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring up %s in container: %w", containerIfName, err)
	}
	for _, f := range fams {
		gw := gateway(f.subnet)
		route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}
		if err := inner.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// Detach removes id's veth pair and netns and frees its addresses. Unknown ids
// are fine, so Detach can always be retried.
func (n *Network) Detach(id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host == nil {
		return errClosed
	}
	if err := n.detach(id); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	return nil
}

func (n *Network) detach(id string) error {
	name := hostVethName(id)
	link, err := n.host.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return fmt.Errorf("find %s: %w", name, err)
	case link.Attrs().Alias != aliasPrefix+id:
		// Someone else's link with our hashed name: not ours to delete.
	default:
		// Deleting one end of a veth deletes both.
		if err := n.host.LinkDel(link); err != nil && !errors.As(err, &notFound) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	if err := removeNamedNetNS(n.NetNSPath(id)); err != nil {
		return err
	}
	return n.ipam.release(id)
}

// Lookup returns id's current addresses without changing anything.
func (n *Network) Lookup(id string) (Attachment, bool, error) {
	if err := validateID(id); err != nil {
		return Attachment{}, false, err
	}
	alloc, ok, err := n.ipam.lookup(id)
	if err != nil || !ok {
		return Attachment{}, false, err
	}
	att := Attachment{NetNSPath: n.NetNSPath(id), IPv4: alloc.IPv4}
	if n.ipv6 {
		att.IPv6 = alloc.IPv6
	}
	return att, true, nil
}
