package health

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// unitDirectives parses a systemd unit file into section -> key -> values.
func unitDirectives(t *testing.T, data []byte) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q is not key=value in a section", line)
			}
			out[section][k] = append(out[section][k], strings.Fields(v)...)
		}
	}
	return out
}

func TestUnitWiring(t *testing.T) {
	u := unitDirectives(t, Unit)
	has := func(section, key, value string) {
		t.Helper()
		if !slices.Contains(u[section][key], value) {
			t.Errorf("[%s] %s= lacks %s (has %v)", section, key, value, u[section][key])
		}
	}
	// Judge the booted system, and finish before boot-complete.target so
	// systemd-bless-boot (After=boot-complete.target) waits for the verdict.
	has("Unit", "After", DefaultTarget)
	has("Unit", "Before", "boot-complete.target")
	has("Service", "Type", "oneshot")
	has("Service", "RemainAfterExit", "yes")
	has("Service", "ExecStart", "/usr/bin/berth-update")
	has("Service", "ExecStart", "health")
	// A failed gate must fail boot-complete.target; and the gate runs on
	// every boot, not only counted ones.
	has("Install", "RequiredBy", "boot-complete.target")
	has("Install", "WantedBy", DefaultTarget)

	// The service start timeout must outlast the longest default wait.
	limit := u["Service"]["TimeoutStartSec"]
	if len(limit) != 1 {
		t.Fatalf("TimeoutStartSec = %v", limit)
	}
	d, err := time.ParseDuration(strings.Replace(limit[0], "min", "m", 1))
	if err != nil {
		t.Fatalf("TimeoutStartSec %q: %v", limit[0], err)
	}
	if d <= DefaultWaitTargets+DefaultTimeout {
		t.Errorf("TimeoutStartSec %v leaves no time for checks after waiting %v for targets", d, DefaultWaitTargets)
	}
}

func TestUnitFileIsEmbedded(t *testing.T) {
	disk, err := os.ReadFile(UnitName)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk, Unit) {
		t.Error("Unit differs from " + UnitName)
	}
}

// TestConnectSystemd talks to the real service manager when there is one.
func TestConnectSystemd(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("systemd is not the service manager here (no /run/systemd/system)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sd, err := ConnectSystemd(ctx)
	if err != nil {
		t.Skipf("no systemd on the system bus or private socket: %v", err)
	}
	defer sd.Close()

	// PID 1 has a unit that is always active.
	state, err := sd.ActiveState(ctx, "-.slice")
	if err != nil {
		t.Fatalf("ActiveState(-.slice): %v", err)
	}
	if state != "active" {
		t.Errorf("ActiveState(-.slice) = %q, want active", state)
	}
	failed, err := sd.FailedUnits(ctx)
	if err != nil {
		t.Fatalf("FailedUnits: %v", err)
	}
	t.Logf("failed units: %v", failed)
	if !slices.IsSorted(failed) {
		t.Errorf("FailedUnits not sorted: %v", failed)
	}
}
