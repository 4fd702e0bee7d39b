package gpt

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-os/berth/builder/initrd/init/internal/testdisk"
	"github.com/berth-os/berth/updater/layout"
)

func openImage(t *testing.T, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

// sgdiskSectors asks sgdisk where partition n starts and ends.
func sgdiskSectors(t *testing.T, img string, n int) (first, last uint64) {
	t.Helper()
	out := testdisk.Run(t, "sgdisk", "-i", strconv.Itoa(n), img)
	get := func(key string) uint64 {
		m := regexp.MustCompile(key + `: (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("sgdisk -i %d: no %q in\n%s", n, key, out)
		}
		v, _ := strconv.ParseUint(m[1], 10, 64)
		return v
	}
	return get("First sector"), get("Last sector")
}

func TestReadMatchesSgdisk(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "disk.img")
	testdisk.Make(t, img, 64, "")
	f, size := openImage(t, img)
	tab, err := Read(f, size, 512)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Primary.DiskGUID != testdisk.DiskGUID {
		t.Errorf("disk GUID %s, want %s", tab.Primary.DiskGUID, testdisk.DiskGUID)
	}
	want := map[int]struct{ name, typ string }{
		1: {layout.LabelESP, layout.TypeESP},
		2: {layout.LabelSlotA, layout.TypeSlot},
		3: {layout.LabelSlotB, layout.TypeSlot},
		4: {layout.LabelState, layout.TypeState},
	}
	if len(tab.Partitions) != len(want) {
		t.Fatalf("%d partitions, want %d: %+v", len(tab.Partitions), len(want), tab.Partitions)
	}
	for _, p := range tab.Partitions {
		w := want[p.Number]
		if p.Name != w.name || p.TypeGUID != w.typ || p.GUID != testdisk.PartGUID[p.Number] {
			t.Errorf("partition %d = %+v, want name %s type %s guid %s", p.Number, p, w.name, w.typ, testdisk.PartGUID[p.Number])
		}
		first, last := sgdiskSectors(t, img, p.Number)
		if p.FirstLBA != first || p.LastLBA != last {
			t.Errorf("partition %d spans %d-%d, sgdisk says %d-%d", p.Number, p.FirstLBA, p.LastLBA, first, last)
		}
	}
	p, ok := tab.ByGUID(strings.ToLower(testdisk.PartGUID[layout.PartSlotB]))
	if !ok || p.Number != layout.PartSlotB {
		t.Errorf("ByGUID(slot B, lower case) = %+v, %v", p, ok)
	}
}

func TestReadFallsBackToBackupAndChecksCRCs(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "disk.img")
	testdisk.Make(t, img, 64, "")
	f, size := openImage(t, img)

	// Damage one byte of the primary entry array (partition 1's name).
	if _, err := f.WriteAt([]byte{'X'}, 2*512+56); err != nil {
		t.Fatal(err)
	}
	tab, err := Read(f, size, 512)
	if err != nil {
		t.Fatalf("the backup GPT is intact, want it read: %v", err)
	}
	if p, _ := tab.Partition(1); p.Name != layout.LabelESP {
		t.Errorf("partition 1 name %q, want the backup's %q", p.Name, layout.LabelESP)
	}

	// Damage the backup header too: now both fail, and the error says why.
	lastLBA := size/512 - 1
	if _, err := f.WriteAt([]byte{0xff}, lastLBA*512+40); err != nil {
		t.Fatal(err)
	}
	_, err = Read(f, size, 512)
	if err == nil || !strings.Contains(err.Error(), "entry array CRC") || !strings.Contains(err.Error(), "backup GPT") {
		t.Fatalf("error = %v, want CRC errors for both copies", err)
	}
}

func TestReadNoGPT(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, size := openImage(t, img)
	if _, err := Read(f, size, 512); !errors.Is(err, ErrNoGPT) {
		t.Fatalf("error = %v, want ErrNoGPT", err)
	}
	if _, err := Read(f, size, 500); err == nil {
		t.Fatal("sector size 500 accepted")
	}
}

func TestGrowAfterDiskResize(t *testing.T) {
	t.Parallel()
	testdisk.RequireTool(t, "sgdisk")
	img := filepath.Join(t.TempDir(), "disk.img")
	testdisk.Make(t, img, 64, "")
	_, oldLast := sgdiskSectors(t, img, layout.PartState)
	if err := os.Truncate(img, 100<<20); err != nil {
		t.Fatal(err)
	}
	// The enlarged image is what a fresh boot finds: sgdisk sees the
	// misplaced backup.
	if out, _ := runVerify(img); strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v finds no problem before the grow, the test proves nothing:\n%s", out)
	}

	f, size := openImage(t, img)
	tab, err := Read(f, size, 512)
	if err != nil {
		t.Fatal(err)
	}
	oldBackup := tab.Primary.AlternateLBA
	g, err := tab.Grow(f, layout.PartState, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !g.Changed() || !g.BackupMoved || g.OldLastLBA != oldLast {
		t.Fatalf("growth %+v, want a moved backup and old end %d", g, oldLast)
	}
	if out, err := runVerify(img); err != nil || !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v after grow: %v\n%s", err, out)
	}
	first, last := sgdiskSectors(t, img, layout.PartState)
	sectors := uint64(size / 512)
	lastUsable := sectors - 34 // 32 sectors of entries and the header
	if last != g.NewLastLBA || (last+1)%2048 != 0 || last > lastUsable || lastUsable-last >= 2048 {
		t.Fatalf("state spans %d-%d (grow said %d); want a 1 MiB aligned end within 1 MiB of LBA %d", first, last, g.NewLastLBA, lastUsable)
	}
	sec := make([]byte, 512)
	if _, err := f.ReadAt(sec, int64(oldBackup)*512); err != nil {
		t.Fatal(err)
	}
	if string(sec[:8]) == signature {
		t.Error("the old backup header is still there")
	}
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(mbr[446+12:]); uint64(got) != sectors-1 {
		t.Errorf("protective MBR covers %d sectors, want %d", got, sectors-1)
	}

	// A second boot finds nothing to do and writes nothing.
	tab, err = Read(f, size, 512)
	if err != nil {
		t.Fatal(err)
	}
	g, err = tab.Grow(failWriter{t}, layout.PartState, 1<<20)
	if err != nil || g.Changed() {
		t.Fatalf("second grow = %+v, %v; want no change", g, err)
	}
}

func TestGrowRefusesInnerPartition(t *testing.T) {
	t.Parallel()
	img := filepath.Join(t.TempDir(), "disk.img")
	testdisk.Make(t, img, 64, "")
	f, size := openImage(t, img)
	tab, err := Read(f, size, 512)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Grow(f, layout.PartSlotA, 1<<20); err == nil || !strings.Contains(err.Error(), "not the last") {
		t.Fatalf("error = %v, want 'not the last'", err)
	}
	if _, err := tab.Grow(f, 9, 1<<20); err == nil {
		t.Fatal("growing a missing partition succeeded")
	}
}

// runVerify runs sgdisk -v, which exits 0 even when it reports problems.
func runVerify(img string) (string, error) {
	out, err := exec.Command("sgdisk", "-v", img).CombinedOutput()
	return string(out), err
}

type failWriter struct{ t *testing.T }

func (w failWriter) WriteAt(p []byte, off int64) (int, error) {
	w.t.Errorf("unexpected write of %d bytes at %d", len(p), off)
	return 0, errors.New("unexpected write")
}
