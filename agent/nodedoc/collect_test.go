package nodedoc

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/slot"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fakeProc(t *testing.T) string {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"uptime":  "123.98 200.00\n",
		"stat":    "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n",
		"loadavg": "0.25 0.20 0.10 1/100 4242\n",
		"meminfo": "MemTotal:        2048 kB\nMemFree:          100 kB\nMemAvailable:     1024 kB\n",
		"cpuinfo": "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n\nprocessor\t: 2\n",
	})
	return dir
}

type fakeUpdater struct {
	st  slot.Status
	err error
}

func (f fakeUpdater) Status() (slot.Status, error) { return f.st, f.err }

func TestGatherFromFixtures(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"os-release": "ID=debian\nVERSION_ID=\"12\"\n"})
	now := time.Date(2026, 3, 1, 10, 0, 0, 500, time.UTC)
	c := &Collector{
		Name: "node-1", Role: RoleVoter, Addresses: []string{"127.0.0.11"}, ClientURL: "https://127.0.0.11:2379",
		AgentVersion: "1.2.3", ProcDir: fakeProc(t), OSRelease: filepath.Join(dir, "os-release"),
		Updater:    fakeUpdater{err: errors.New("no berth.slot on the kernel command line")},
		Kernel:     func() (string, error) { return "6.1.0-test", nil },
		Containers: func() (int, int) { return 2, 5 },
		Ready:      func() bool { return false },
		Now:        func() time.Time { return now },
	}
	n, err := c.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	want := Node{
		Schema: Schema, Name: "node-1", Role: "voter", Addresses: []string{"127.0.0.11"}, ClientURL: "https://127.0.0.11:2379",
		OS:     OS{Name: "debian", Version: "12"},
		Kernel: "6.1.0-test", BootTime: time.Unix(1700000000, 0).UTC(), UptimeSeconds: 123,
		CPU: CPU{Cores: 3, Load1: 0.25}, Memory: Memory{TotalBytes: 2048 * 1024, AvailableBytes: 1024 * 1024},
		Agent:      Agent{Version: "1.2.3", Started: now.Truncate(time.Second)},
		Containers: Containers{Running: 2, Total: 5},
		Heartbeat:  now.Truncate(time.Second), Ready: false,
	}
	gotJSON, _ := json.Marshal(n)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("document:\n got %s\nwant %s", gotJSON, wantJSON)
	}
}

func TestGatherBerthNodeUsesUpdaterLibrary(t *testing.T) {
	// A fake berth node for the real slot.System: booted from slot b
	// (blessed entry), slot a bad, last update recorded as success.
	root := t.TempDir()
	entry := layout.SlotEntry(layout.SlotB, "0.2.0", "11111111-2222-3333-4444-555555555555", nil).Render()
	entryA := layout.SlotEntry(layout.SlotA, "0.1.0", "11111111-2222-3333-4444-666666666666", nil).Render()
	writeFiles(t, root, map[string]string{
		"cmdline":    "ro quiet " + layout.CmdlineSlot + "=b\n",
		"os-release": "ID=debian\nIMAGE_ID=berth-minimal\nIMAGE_VERSION=0.2.0\n" + layout.OSReleaseVersionKey + "=0.2.0\n",
		"esp/" + layout.EntriesDir + "/berth-b.conf":     string(entry),
		"esp/" + layout.EntriesDir + "/berth-a+0-3.conf": string(entryA),
		"state/last-update.json":                         `{"state":"success","version":"0.2.0","slot":"b","from_version":"0.1.0","from_slot":"a","time":"2026-01-01T00:00:00Z"}`,
	})
	os.MkdirAll(filepath.Join(root, "efivars"), 0o755)
	sys := slot.System{
		ESP: filepath.Join(root, "esp"), StateDir: filepath.Join(root, "state"), Cmdline: filepath.Join(root, "cmdline"),
		OSRelease: filepath.Join(root, "os-release"), EFIVars: filepath.Join(root, "efivars"),
	}
	c := &Collector{Name: "n", ProcDir: fakeProc(t), OSRelease: filepath.Join(root, "os-release"), Updater: sys,
		Kernel: func() (string, error) { return "k", nil }}
	n, err := c.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	want := OS{Name: "berth-minimal", Version: "0.2.0", Slot: "b", OtherSlotState: slot.SlotBad,
		LastUpdate: &LastUpdate{State: "success", Version: "0.2.0"}}
	got, _ := json.Marshal(n.OS)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("os:\n got %s\nwant %s", got, exp)
	}
}

func TestGatherReportsEachBrokenSourceButStillFills(t *testing.T) {
	proc := t.TempDir()
	writeFiles(t, proc, map[string]string{
		"uptime":  "garbage\n",
		"meminfo": "MemTotal: 10 kB\n", // no MemAvailable
		"loadavg": "0.5 0 0 1/1 1\n",
	})
	c := &Collector{Name: "n", ProcDir: proc, OSRelease: filepath.Join(proc, "missing"),
		Updater: fakeUpdater{err: errors.New("off berth")}, Kernel: func() (string, error) { return "", errors.New("no uname") }}
	n, err := c.Gather()
	if err == nil {
		t.Fatal("Gather: want an error for the broken sources")
	}
	for _, part := range []string{"uptime: bad value", "boot time:", "memory:", "cores:", "no uname", "os-release:"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q lacks %q", err, part)
		}
	}
	if strings.Contains(err.Error(), "off berth") {
		t.Errorf("updater status off a berth node must not be an error: %v", err)
	}
	if n.Name != "n" || n.Schema != Schema || n.CPU.Load1 != 0.5 || !n.Ready || n.CPU.Cores < 1 {
		t.Fatalf("partial document not filled: %+v", n)
	}
}

func TestCollectRealSystem(t *testing.T) {
	n, err := (&Collector{Name: "real"}).Gather()
	if err != nil {
		t.Fatalf("Gather on this machine: %v", err)
	}
	if n.Kernel == "" || n.UptimeSeconds <= 0 || n.CPU.Cores < 1 || n.Memory.TotalBytes == 0 ||
		n.BootTime.IsZero() || n.BootTime.After(time.Now()) || n.OS.Name == "" {
		t.Fatalf("implausible document from the real system: %+v", n)
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"node-1", "a", "n.example", "x0"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a/b", "a b", strings.Repeat("a", 64), "ä"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q): want error", bad)
		}
	}
	if name, ok := NameFromKey(NodesPrefix, NodeKey("node-2")); !ok || name != "node-2" {
		t.Errorf("NameFromKey = %q, %v", name, ok)
	}
	if _, ok := NameFromKey(NodesPrefix, RoleKey("node-2")); ok {
		t.Error("NameFromKey accepted a key under another prefix")
	}
}

func TestGatherDraining(t *testing.T) {
	c := &Collector{Name: "node-1", ProcDir: fakeProc(t), OSRelease: filepath.Join(t.TempDir(), "missing"),
		Updater: fakeUpdater{err: errors.New("off berth")}, Kernel: func() (string, error) { return "6.1", nil }}
	raw, err := json.Marshal(c.Collect())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), `"draining"`) {
		t.Fatalf("nil Draining: document has a draining field: %s", raw)
	}
	draining := true
	c.Draining = func() bool { return draining }
	if n := c.Collect(); !n.Draining {
		t.Fatal("Draining returns true, document says not draining")
	}
	raw, err = json.Marshal(c.Collect())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"draining":true`) {
		t.Fatalf("draining document lacks \"draining\":true: %s", raw)
	}
	draining = false
	if n := c.Collect(); n.Draining {
		t.Fatal("Draining returns false, document says draining")
	}
}
