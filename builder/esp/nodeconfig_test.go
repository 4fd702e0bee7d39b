package esp

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/builder/disk"
	"github.com/berth-os/berth/updater/layout"
)

func TestFilesNodeConfig(t *testing.T) {
	in := testInput()
	files, err := Files(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := filesByPath(t, files)[NodeConfigPath]; ok {
		t.Errorf("%s on the ESP without a node configuration", NodeConfigPath)
	}
	in.NodeConfig = []byte("hostname: node-1\n")
	files, err = Files(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := filesByPath(t, files)[NodeConfigPath]; !bytes.Equal(got, in.NodeConfig) {
		t.Errorf("%s = %q", NodeConfigPath, got)
	}
}

// The node configuration shares the berth/ directory with slot A's kernel:
// the written FAT must stay clean and hold it byte for byte.
func TestNodeConfigOnDisk(t *testing.T) {
	for _, tool := range []string{"fsck.vfat", "mtype"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	slot := filepath.Join(dir, "slot.img")
	if err := os.WriteFile(slot, bytes.Repeat([]byte{7}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	in := testInput()
	in.NodeConfig = []byte("hostname: node-1\r\nagent:\n  voters: 3\n")
	files, err := Files(in)
	if err != nil {
		t.Fatal(err)
	}
	var espFiles []disk.File
	for _, f := range files {
		espFiles = append(espFiles, disk.File{Path: f.Path, Data: f.Data})
	}
	var guids [4]string
	for i := range guids {
		guids[i] = layout.GUID("esp-test", "1.0", string(rune('a'+i)))
	}
	s := disk.Spec{
		DiskGUID: layout.GUID("esp-test", "1.0", "disk"), ESPSize: 66 * disk.MiB, SlotSize: 2 * disk.MiB,
		StateSize: 16 * disk.MiB, ESPFiles: espFiles, SlotA: slot, PartGUIDs: guids,
		Epoch: time.Unix(1700000000, 0), StateUUID: "3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b",
	}
	img := filepath.Join(dir, "disk.img")
	if err := disk.Write(img, s, nil); err != nil {
		t.Fatal(err)
	}
	l, err := disk.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	espPart := l.Parts[0]
	// mtools addresses a partition by byte offset: img@@OFFSET.
	target := img + "@@" + itoa(espPart.Start)
	cmd := exec.Command("mtype", "-i", target, "::/"+NodeConfigPath)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, in.NodeConfig) {
		t.Fatalf("mtype %s: %v: %q", NodeConfigPath, err, got)
	}
	espImg := filepath.Join(dir, "esp.img")
	if out, err := exec.Command("dd", "if="+img, "of="+espImg, "bs=1M", "skip="+itoa(espPart.Start>>20), "count="+itoa(espPart.Size>>20), "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	out, err := exec.Command("fsck.vfat", "-n", espImg).CombinedOutput()
	if err != nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 1 {
		t.Errorf("fsck.vfat -n: %v\n%s", err, out)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
