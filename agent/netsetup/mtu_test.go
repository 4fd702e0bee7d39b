package netsetup

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestCheckMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu  int
		ipv6 bool
		want string // "" accepts
	}{
		{1450, true, ""},
		{1500, false, ""},
		{1280, true, ""},
		{1279, true, "IPv6's minimum"},
		{1279, false, ""},
		{68, false, ""},
		{67, false, "IPv4's minimum"},
	} {
		err := checkMTU(tc.mtu, tc.ipv6)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkMTU(%d, ipv6 %v) = %v, want %q", tc.mtu, tc.ipv6, err, tc.want)
		}
	}
}

func TestPortOf(t *testing.T) {
	const bridge = 7
	veth := func(name, alias string, master int) netlink.Link {
		return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, Alias: alias, MasterIndex: master}}
	}
	for _, tc := range []struct {
		name string
		link netlink.Link
		want string // "" is not ours
	}{
		{"a container's host veth", veth(hostVethName("acme.web.0"), "berth:acme.web.0", bridge), "acme.web.0"},
		{"on another bridge", veth(hostVethName("acme.web.0"), "berth:acme.web.0", 8), ""},
		{"not on a bridge", veth(hostVethName("acme.web.0"), "berth:acme.web.0", 0), ""},
		{"no alias", veth(hostVethName("acme.web.0"), "", bridge), ""},
		{"alias of another name", veth(hostVethName("other"), "berth:acme.web.0", bridge), ""},
		{"netroute's VXLAN device", &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth.vx", Alias: "berth:netroute", MasterIndex: bridge}}, ""},
		{"a bad id in the alias", veth("bvx", "berth:../x", bridge), ""},
	} {
		got, ok := portOf(tc.link, bridge)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: portOf = %q, %v; want %q", tc.name, got, ok, tc.want)
		}
	}
}

// mtuOf reads a link's MTU through h (the sandbox's handle, or one in a container).
func mtuOf(t *testing.T, h *netlink.Handle, name string) int {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return l.Attrs().MTU
}

func TestSetMTU(t *testing.T) {
	s := newSandbox(t)
	n := s.open(s.config(t.TempDir()))
	old := mustAttach(t, n, "mtu.old")
	t.Cleanup(func() { n.Detach("mtu.old"); n.Detach("mtu.new"); n.Detach("mtu.repaired") })
	host, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	// What the test expects to change is not there already.
	if got := mtuOf(t, host, hostVethName("mtu.old")); got != 1500 {
		t.Fatalf("host veth starts at %d, want the default 1500", got)
	}
	inside := func(a Attachment) (mtu int) {
		s.in(a.NetNSPath, func() {
			h, err := netlink.NewHandle()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			mtu = mtuOf(t, h, containerIfName)
		})
		return mtu
	}
	check := func(when string, want int, ids ...string) {
		t.Helper()
		if got := mtuOf(t, host, "btest0"); got != want {
			t.Errorf("%s: bridge MTU %d, want %d", when, got, want)
		}
		for _, id := range ids {
			a, ok, err := n.Lookup(id)
			if err != nil || !ok {
				t.Fatalf("%s: lookup %s: %v %v", when, id, ok, err)
			}
			if got := mtuOf(t, host, hostVethName(id)); got != want {
				t.Errorf("%s: %s host veth MTU %d, want %d", when, id, got, want)
			}
			if got := inside(a); got != want {
				t.Errorf("%s: %s eth0 MTU %d, want %d", when, id, got, want)
			}
		}
	}

	if err := n.SetMTU(0); err != nil {
		t.Fatalf("SetMTU(0): %v", err)
	}
	check("MTU unknown", 1500, "mtu.old")

	// VXLAN over a 1500 underlay: existing containers come down, new ones start there.
	if err := n.SetMTU(1450); err != nil {
		t.Fatalf("SetMTU(1450): %v", err)
	}
	check("after SetMTU(1450)", 1450, "mtu.old")
	mustAttach(t, n, "mtu.new")
	check("a container attached after", 1450, "mtu.old", "mtu.new")

	// A pair from before (here: one put back to 1500 behind our back) is
	// corrected when it is attached again, as after an agent restart.
	s.in(old.NetNSPath, func() {
		h, _ := netlink.NewHandle()
		defer h.Close()
		l, err := h.LinkByName(containerIfName)
		if err == nil {
			err = h.LinkSetMTU(l, 1500)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
	if got := inside(old); got != 1500 {
		t.Fatalf("eth0 not reset for the test: %d", got)
	}
	mustAttach(t, n, "mtu.old")
	check("re-attached", 1450, "mtu.old")

	// The path grows again (the last VXLAN peer left): everything follows.
	if err := n.SetMTU(1500); err != nil {
		t.Fatalf("SetMTU(1500): %v", err)
	}
	check("after SetMTU(1500)", 1500, "mtu.old", "mtu.new")

	// Refused: IPv6 is on, and the kernel would drop it from every link.
	if err := n.SetMTU(1200); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("SetMTU(1200) with IPv6 on: %v", err)
	}
	check("after a refused MTU", 1500, "mtu.old", "mtu.new")

	// A bridge deleted behind our back comes back with the MTU set.
	if err := n.SetMTU(1450); err != nil {
		t.Fatal(err)
	}
	br, err := host.LinkByName("btest0")
	if err != nil {
		t.Fatal(err)
	}
	if err := host.LinkDel(br); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, n, "mtu.repaired")
	check("bridge recreated", 1450, "mtu.repaired")
}
