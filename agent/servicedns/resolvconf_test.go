package servicedns

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestResolvConf(t *testing.T) {
	got := string(ResolvConf([]netip.Addr{mustAddr(t, "10.88.3.1"), {}, mustAddr(t, "fd00:88:3::1")}, append(Search("acme"), "bad domain", "")...))
	want := "# written by berth-agent: service names JOB.TENANT.berth, other names via the node\n" +
		"nameserver 10.88.3.1\nnameserver fd00:88:3::1\nsearch acme.berth berth\noptions ndots:2 edns0\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// What we write, we read back.
	ups := parseResolvConf([]byte(got))
	if !slices.Equal(ups, []netip.AddrPort{netip.MustParseAddrPort("10.88.3.1:53"), netip.MustParseAddrPort("[fd00:88:3::1]:53")}) {
		t.Errorf("parsed back %v", ups)
	}
}

func TestParseResolvConf(t *testing.T) {
	data := "# comment\nnameserver 127.0.0.53\nnameserver not-an-ip\n  nameserver   192.0.2.1  \noptions edns0 trust-ad\nsearch example.com\nnameserver fe80::1%eth0\n"
	got := parseResolvConf([]byte(data))
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("192.0.2.1:53"), netip.MustParseAddrPort("[fe80::1%eth0]:53"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := readResolvConf(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing resolv.conf read fine")
	}
}

// The upstream list follows the file, keeps the old list when the file
// goes bad, and drops our own address (a loop).
func TestUpstreamsReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(s string, mod time.Time) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write("nameserver 192.0.2.1\n", t0)
	self := netip.MustParseAddrPort("10.88.3.1:53")
	_, u, err := Config{Listen: []netip.AddrPort{self}, ResolvConf: path, Log: slog.New(slog.DiscardHandler)}.validate()
	if err != nil {
		t.Fatal(err)
	}
	check := func(want ...string) {
		t.Helper()
		u.checked = time.Time{} // skip the recheck interval
		var w []netip.AddrPort
		for _, s := range want {
			w = append(w, netip.MustParseAddrPort(s))
		}
		if got := u.get(); !slices.Equal(got, w) {
			t.Errorf("upstreams %v, want %v", got, w)
		}
	}
	check("192.0.2.1:53")
	write("nameserver 192.0.2.2\nnameserver 10.88.3.1\n", t0.Add(time.Second))
	check("192.0.2.2:53")
	write("# emptied by a broken DHCP client\n", t0.Add(2*time.Second))
	check("192.0.2.2:53")
	write("nameserver 10.88.3.1\n", t0.Add(3*time.Second))
	check("192.0.2.2:53")
}
