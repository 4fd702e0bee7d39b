package thinpool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeDM stands in for losetup and dmsetup on the build host, which has no
// device-mapper: it keeps the kernel's side (loops, active devices, thin
// ids in the pool's metadata) so that the pool's ordering and recovery
// can be checked. The real commands run on berth nodes in the e2e tests.
type fakeDM struct {
	loops  map[string]string // file -> /dev/loopN
	active map[string]string // dm name -> table
	ids    map[int]bool      // thin ids in the pool metadata
	calls  []string
	fail   string // a call with this prefix fails
}

func newFakeDM() *fakeDM {
	return &fakeDM{loops: map[string]string{}, active: map[string]string{}, ids: map[int]bool{}}
}

func (f *fakeDM) run(_ context.Context, name string, args ...string) (string, error) {
	call := name + " " + strings.Join(args, " ")
	f.calls = append(f.calls, call)
	if f.fail != "" && strings.HasPrefix(call, f.fail) {
		return "", fmt.Errorf("%s: injected failure", call)
	}
	switch {
	case name == "losetup" && args[0] == "--associated":
		return f.loops[args[1]], nil
	case name == "losetup" && args[0] == "--find":
		dev := fmt.Sprintf("/dev/loop%d", len(f.loops))
		f.loops[args[len(args)-1]] = dev
		return dev + "\n", nil
	case name == "dmsetup" && args[0] == "status":
		if _, ok := f.active[args[1]]; !ok {
			return "", fmt.Errorf("Device does not exist")
		}
		return "0 8192 thin-pool 1 10/4096 3/16384 - rw discard_passdown queue_if_no_space - 1024", nil
	case name == "dmsetup" && args[0] == "create":
		if _, ok := f.active[args[1]]; ok {
			return "", fmt.Errorf("Device or resource busy")
		}
		t := strings.Fields(args[3])
		if t[2] == "thin" {
			id, _ := strconv.Atoi(t[4])
			if !f.ids[id] {
				return "", fmt.Errorf("reload ioctl failed: No data available")
			}
		}
		f.active[args[1]] = args[3]
		return "", nil
	case name == "dmsetup" && args[0] == "remove":
		delete(f.active, args[1])
		return "", nil
	case name == "dmsetup" && (args[0] == "suspend" || args[0] == "resume"):
		return "", nil
	case name == "dmsetup" && args[0] == "message":
		m := strings.Fields(args[3])
		id, _ := strconv.Atoi(m[1])
		switch m[0] {
		case "create_thin", "create_snap":
			if f.ids[id] {
				return "", fmt.Errorf("message failed: File exists")
			}
			f.ids[id] = true
		case "delete":
			if !f.ids[id] {
				return "", fmt.Errorf("message failed: No data available")
			}
			delete(f.ids, id)
		}
		return "", nil
	}
	return "", fmt.Errorf("fake: unexpected %s", call)
}

func openFake(t *testing.T, dir string, f *fakeDM) *Pool {
	t.Helper()
	p, err := Open(context.Background(), Config{Dir: dir, Size: 1 << 30, Run: f.run})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenMakesSparseFilesAndPool(t *testing.T) {
	dir := t.TempDir()
	f := newFakeDM()
	p := openFake(t, dir, f)
	for file, want := range map[string]int64{dataFile: 1 << 30, metaFile: MetadataSize(1 << 30)} {
		st, err := os.Stat(filepath.Join(dir, file))
		if err != nil || st.Size() != want {
			t.Fatalf("%s: %v, size %d want %d", file, err, st.Size(), want)
		}
	}
	if tbl := f.active[PoolName]; tbl != PoolTable("/dev/loop0", "/dev/loop1", 1<<30) {
		t.Fatalf("pool table %q", tbl)
	}
	dev, err := p.Create(context.Background(), "v1", 256<<20)
	if err != nil || dev != "/dev/mapper/berth-v-v1" {
		t.Fatalf("create: %q %v", dev, err)
	}
	// Opening again (an agent restart, devices still active) changes
	// nothing and keeps the pool's size even if the config says another.
	n := len(f.active)
	p2, err := Open(context.Background(), Config{Dir: dir, Size: 2 << 30, Run: f.run})
	if err != nil || len(f.active) != n || p2.state.DataSize != 1<<30 {
		t.Fatalf("reopen: %v active %d->%d size %d", err, n, len(f.active), p2.state.DataSize)
	}
	// After a reboot (nothing active, loops gone) Open activates it all.
	f.active, f.loops = map[string]string{}, map[string]string{}
	if _, err := Open(context.Background(), Config{Dir: dir, Run: f.run}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.active[ThinName("v1")]; !ok {
		t.Fatalf("v1 not active after reboot: %v", f.active)
	}
}

func TestCreateRefusesWhatDoesNotFitAndChangesNothing(t *testing.T) {
	f := newFakeDM()
	p := openFake(t, t.TempDir(), f)
	ctx := context.Background()
	if _, err := p.Create(ctx, "a", 768<<20); err != nil {
		t.Fatal(err)
	}
	calls := len(f.calls)
	_, err := p.Create(ctx, "b", 512<<20)
	if err == nil || !strings.Contains(err.Error(), "has 256Mi of 1Gi left") {
		t.Fatalf("want a refusal naming what is left, got %v", err)
	}
	if len(f.calls) != calls || len(p.Devices()) != 1 {
		t.Fatalf("a refused create ran %v", f.calls[calls:])
	}
	if _, err := p.Create(ctx, "a", 512<<20); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("resize: %v", err)
	}
	if _, err := p.Create(ctx, "Bad/Name", 1<<20); err == nil {
		t.Fatal("a bad name was accepted")
	}
}

func TestLeftoverThinIDIsRecycled(t *testing.T) {
	f := newFakeDM()
	p := openFake(t, t.TempDir(), f)
	f.ids[0] = true // a create that crashed before the state was saved
	if _, err := p.Create(context.Background(), "v", 1<<20); err != nil {
		t.Fatal(err)
	}
	if d := p.Devices()["v"]; d.ID != 0 || !f.ids[0] {
		t.Fatalf("device %+v ids %v", d, f.ids)
	}
}

func TestSnapshotSuspendsOriginAndRemoveForgetsFirst(t *testing.T) {
	dir := t.TempDir()
	f := newFakeDM()
	p := openFake(t, dir, f)
	ctx := context.Background()
	if _, err := p.Create(ctx, "v", 64<<20); err != nil {
		t.Fatal(err)
	}
	f.calls = nil
	if err := p.Snapshot(ctx, "v", "v.s1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"dmsetup status berth-v-v", "dmsetup suspend berth-v-v", "dmsetup message berth-pool 0 create_snap 1 0", "dmsetup resume berth-v-v"}
	if strings.Join(f.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("calls %q\nwant %q", f.calls, want)
	}
	if err := p.Snapshot(ctx, "nope", "x"); err == nil || !strings.Contains(err.Error(), "no volume nope") {
		t.Fatalf("snapshot of a missing volume: %v", err)
	}
	// A snapshot does not count against the pool's size.
	if p.state.Committed() != 64<<20 {
		t.Fatalf("committed %d", p.state.Committed())
	}
	// The origin still busy: Remove fails and keeps the record.
	f.fail = "dmsetup remove"
	if err := p.Remove(ctx, "v"); err == nil {
		t.Fatal("remove of a busy device succeeded")
	}
	if _, ok := p.Devices()["v"]; !ok {
		t.Fatal("a failed remove forgot the device")
	}
	f.fail = "dmsetup message berth-pool 0 delete"
	if err := p.Remove(ctx, "v"); err != nil {
		t.Fatalf("remove with the kernel's delete failing: %v (the id is recycled later)", err)
	}
	if _, ok := p.Devices()["v"]; ok {
		t.Fatal("removed device still listed")
	}
	f.fail = ""
	// The id still in the kernel is taken over by the next create.
	if _, err := p.Create(ctx, "w", 1<<20); err != nil {
		t.Fatal(err)
	}
	if d := p.Devices()["w"]; d.ID != 0 {
		t.Fatalf("w got id %d, want the recycled 0", d.ID)
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		line    string
		want    Status
		wantErr string
	}{
		{line: "0 2097152 thin-pool 1 10/4096 3/16384 - rw discard_passdown queue_if_no_space - 1024",
			want: Status{UsedMetadata: 10 * 4096, TotalMetadata: 4096 * 4096, UsedData: 3 * BlockSize, TotalData: 16384 * BlockSize}},
		{line: "0 2097152 thin-pool 7 10/4096 3/16384 - ro discard_passdown queue_if_no_space needs_check 1024",
			want: Status{UsedMetadata: 10 * 4096, TotalMetadata: 4096 * 4096, UsedData: 3 * BlockSize, TotalData: 16384 * BlockSize, ReadOnly: true, NeedsCheck: true}},
		{line: "0 2097152 thin-pool Fail", wantErr: "has failed"},
		{line: "0 2097152 thin 0 -", wantErr: "not a thin-pool"},
		{line: "0 2097152 thin-pool 1 10 3/16384 - rw x", wantErr: "not used/total"},
	} {
		got, err := ParseStatus(tc.line)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.line, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v, want %+v", tc.line, got, err, tc.want)
		}
	}
}

func TestMetadataSizeAndTables(t *testing.T) {
	if MetadataSize(1<<30) != minMetadata || MetadataSize(1<<50) != maxMetadata {
		t.Fatalf("bounds: %d %d", MetadataSize(1<<30), MetadataSize(1<<50))
	}
	if got := MetadataSize(1 << 40); got != (1<<40)/BlockSize*128 {
		t.Fatalf("1 TiB: %d", got)
	}
	if got := ThinTable("/dev/mapper/berth-pool", 3, 1<<30); got != "0 2097152 thin /dev/mapper/berth-pool 3" {
		t.Fatal(got)
	}
	if got := PoolTable("/dev/loop0", "/dev/loop1", 1<<30); got != "0 2097152 thin-pool /dev/loop0 /dev/loop1 128 0" {
		t.Fatal(got)
	}
}
