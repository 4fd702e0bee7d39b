// Package testdisk builds small berth-shaped GPT disk images with sgdisk
// for tests. Only tests import it.
package testdisk

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

// Known partition GUIDs of images made by Make, so tests can look them up.
var (
	DiskGUID = layout.GUID("testdisk", "disk")
	PartGUID = map[int]string{
		layout.PartESP:   layout.GUID("testdisk", "esp"),
		layout.PartSlotA: layout.GUID("testdisk", "a"),
		layout.PartSlotB: layout.GUID("testdisk", "b"),
		layout.PartState: layout.GUID("testdisk", "state"),
	}
)

// RequireTool skips the test when name is not installed.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed: %v", name, err)
	}
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Make writes a sizeMiB disk image at path with the berth layout: 8 MiB
// ESP, two 8 MiB slots and the state partition filling the rest, with
// guidSalt mixed into every partition GUID (empty for PartGUID's values).
func Make(t testing.TB, path string, sizeMiB int, guidSalt string) {
	t.Helper()
	RequireTool(t, "sgdisk")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	guid := func(n int) string {
		if guidSalt == "" {
			return PartGUID[n]
		}
		return layout.GUID("testdisk", guidSalt, fmt.Sprint(n))
	}
	args := []string{"-o", "-U", DiskGUID}
	parts := []struct {
		n         int
		size, typ string
		name      string
	}{
		{layout.PartESP, "+8M", layout.TypeESP, layout.LabelESP},
		{layout.PartSlotA, "+8M", layout.TypeSlot, layout.LabelSlotA},
		{layout.PartSlotB, "+8M", layout.TypeSlot, layout.LabelSlotB},
		{layout.PartState, "0", layout.TypeState, layout.LabelState},
	}
	for _, p := range parts {
		args = append(args,
			fmt.Sprintf("-n%d:0:%s", p.n, p.size),
			fmt.Sprintf("-t%d:%s", p.n, p.typ),
			fmt.Sprintf("-c%d:%s", p.n, p.name),
			fmt.Sprintf("-u%d:%s", p.n, guid(p.n)))
	}
	Run(t, "sgdisk", append(args, path)...)
}
