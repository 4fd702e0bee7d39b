package volume

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func testResource(a, b string) Resource {
	return Resource{
		Volume: ID{Tenant: "acme", Job: "db", Replica: 0, Name: "data"},
		Minor:  3, Port: 7790,
		Addresses: [2]netip.Addr{netip.MustParseAddr(a), netip.MustParseAddr(b)},
		Agent:     "/usr/bin/berth-agent",
	}
}

func TestResourceValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Resource)
		want string
	}{
		{"ok", func(*Resource) {}, ""},
		{"minor", func(r *Resource) { r.Minor = 1 << 20 }, "minor 1048576 is outside 0..1048575"},
		{"port", func(r *Resource) { r.Port = 0 }, "port 0 is outside 1..65535"},
		{"same node", func(r *Resource) { r.Addresses[1] = r.Addresses[0] }, "must be on different nodes"},
		{"families", func(r *Resource) { r.Addresses[1] = netip.MustParseAddr("fd00::2") }, "different address families"},
		{"no address", func(r *Resource) { r.Addresses[1] = netip.Addr{} }, "has no address"},
		{"agent with a quote", func(r *Resource) { r.Agent = `/bin/x"; rm` }, "cannot go into a DRBD handler"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testResource("10.240.0.11", "10.240.0.12")
			tc.edit(&r)
			err := r.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
			if _, cerr := r.Config(); (cerr == nil) != (err == nil) {
				t.Errorf("Config and Validate disagree: %v / %v", cerr, err)
			}
		})
	}
}

// TestResourceConfigParses hands the rendered file to drbd-utils' own
// 8.4 parser (the berth kernel's DRBD is 8.4): drbdadm-84 dump must
// accept it and show both nodes with the volume's device, disk and port.
func TestResourceConfigParses(t *testing.T) {
	const drbdadm84 = "/usr/lib/drbd/drbdadm-84"
	if _, err := os.Stat(drbdadm84); err != nil {
		t.Skipf("%s missing: install drbd-utils (make deps) to check the DRBD syntax", drbdadm84)
	}
	for _, addrs := range [][2]string{{"10.240.0.11", "10.240.0.12"}, {"fd00:240::11", "fd00:240::12"}} {
		r := testResource(addrs[0], addrs[1])
		text, err := r.Config()
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "r.res")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(drbdadm84, "-c", file, "dump", "all").CombinedOutput()
		if err != nil {
			t.Fatalf("drbdadm-84 refuses the file: %v\n%s\n--- file ---\n%s", err, out, text)
		}
		dump := string(out)
		for _, a := range addrs {
			want := "floating ipv4 " + a + ":7790"
			if strings.Contains(a, ":") {
				want = "floating ipv6 [" + a + "]:7790"
			}
			if !strings.Contains(dump, want) {
				t.Errorf("dump lacks %q:\n%s", want, dump)
			}
		}
		for _, want := range []string{"resource " + ResourceName(r.Volume), "minor 3;", r.DiskLink(), "resource-and-stonith", "protocol           C",
			`"/usr/bin/berth-agent volume fence-peer acme/db/0/data"`} {
			if !strings.Contains(dump, want) {
				t.Errorf("dump lacks %q:\n%s", want, dump)
			}
		}
	}
}

func TestResourceName(t *testing.T) {
	a := ResourceName(ID{Tenant: "acme", Job: "db", Name: "data"})
	b := ResourceName(ID{Tenant: "acme", Job: "db", Replica: 1, Name: "data"})
	if a == b || len(a) != 15 || !strings.HasPrefix(a, "bv-") {
		t.Errorf("names %q %q: want distinct bv-<12 hex>", a, b)
	}
}

func TestFenceExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 4},
		{fmt.Errorf("volume x: node-1 acts at epoch 1 but node-2 owns epoch 2: %w", ErrDeposed), 6},
		{errors.New("read volume x: context deadline exceeded"), 1},
	} {
		if got := FenceExitCode(tc.err); got != tc.want {
			t.Errorf("FenceExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestResourceOf(t *testing.T) {
	r := ResourceOf(Record{ID: ID{Tenant: "acme", Job: "db", Name: "data"}, Minor: 12},
		[2]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}, "/usr/bin/berth-agent")
	if r.Port != BasePort+12 || r.Minor != 12 || r.Validate() != nil {
		t.Errorf("%+v: want minor 12 on port %d, valid", r, BasePort+12)
	}
}
