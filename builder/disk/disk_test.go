package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-os/berth/updater/layout"
)

var testEpoch = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// testSpec builds a small spec whose slot content is written to dir.
func testSpec(t *testing.T, dir string, espMiB, slotBytes int64) Spec {
	t.Helper()
	slot := filepath.Join(dir, "slot.squashfs")
	data := pseudoRandom(1, int(slotBytes))
	// A run of zeros in the middle exercises the sparse copy.
	if len(data) > 3*int(MiB) {
		clear(data[MiB : 2*MiB])
	}
	if err := os.WriteFile(slot, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var guids [4]string
	for i := range guids {
		guids[i] = layout.GUID("test", "1.0", "part", string(rune('1'+i)))
	}
	return Spec{
		DiskGUID:  layout.GUID("test", "1.0", "disk"),
		ESPSize:   espMiB * MiB,
		SlotSize:  8 * MiB,
		StateSize: 32 * MiB,
		ESPFiles: []File{
			{Path: layout.BootLoaderPath, Data: pseudoRandom(2, 123457)},
			{Path: layout.LoaderConfPath, Data: []byte("timeout 3\n")},
			{Path: layout.EntriesDir + "/berth-a+3.conf", Data: []byte("title berth\nlinux /berth/a/vmlinuz\n")},
			{Path: layout.KernelPath(layout.SlotA), Data: pseudoRandom(3, 2*int(MiB)+17)},
			{Path: layout.InitrdPath(layout.SlotA), Data: pseudoRandom(4, 3*int(MiB)+5)},
			{Path: "empty.txt", Data: nil},
			{Path: "EFI/systemd/a-rather-long-file-name-beyond-8.3.efi", Data: []byte("x")},
		},
		SlotA:     slot,
		PartGUIDs: guids,
		Epoch:     testEpoch,
		StateUUID: "3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b",
	}
}

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extract copies one partition of img to its own file.
func extract(t *testing.T, img string, p Part) string {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := filepath.Join(t.TempDir(), p.Label+".img")
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	// Copy sparsely: partitions are mostly holes.
	if err := dst.Truncate(p.Size); err != nil {
		t.Fatal(err)
	}
	if err := copySlot(dst, 0, io.NewSectionReader(src, p.Start, p.Size), p.Size, nil); err != nil {
		t.Fatal(err)
	}
	return out
}

func writeImage(t *testing.T, s Spec) (string, Layout) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(img, s, nil); err != nil {
		t.Fatalf("Write: %v", err)
	}
	l, err := Read(img)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if len(l.Parts) != 4 {
		t.Fatalf("Read returned %d partitions, want 4: %+v", len(l.Parts), l)
	}
	return img, l
}

func TestLayoutReadBack(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir, 40, 5*MiB+3)
	img, l := writeImage(t, s)

	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != Size(s) || Size(s) != (1+40+8+8+32+1)*MiB {
		t.Fatalf("image is %d bytes, Size says %d", st.Size(), Size(s))
	}
	want := []Part{
		{layout.PartESP, layout.LabelESP, layout.TypeESP, s.PartGUIDs[0], MiB, 40 * MiB},
		{layout.PartSlotA, layout.LabelSlotA, layout.TypeSlot, s.PartGUIDs[1], 41 * MiB, 8 * MiB},
		{layout.PartSlotB, layout.LabelSlotB, layout.TypeSlot, s.PartGUIDs[2], 49 * MiB, 8 * MiB},
		{layout.PartState, layout.LabelState, layout.TypeState, s.PartGUIDs[3], 57 * MiB, 32 * MiB},
	}
	for i, w := range want {
		if l.Parts[i] != w {
			t.Errorf("partition %d: got %+v, want %+v", i+1, l.Parts[i], w)
		}
	}
}

func TestGPTIsValid(t *testing.T) {
	needTools(t, "sgdisk")
	s := testSpec(t, t.TempDir(), 40, 5*MiB)
	img, _ := writeImage(t, s)
	out := run(t, "sgdisk", "-v", img)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	// sgdisk's view must agree with ours on names and GUIDs.
	info := run(t, "sgdisk", "-i", "2", img)
	if !strings.Contains(info, "Partition name: '"+layout.LabelSlotA+"'") ||
		!strings.Contains(info, "Partition unique GUID: "+s.PartGUIDs[1]) ||
		!strings.Contains(info, "Partition GUID code: "+layout.TypeSlot) {
		t.Fatalf("sgdisk -i 2:\n%s", info)
	}
	if d := run(t, "sgdisk", "-p", img); !strings.Contains(d, "Disk identifier (GUID): "+s.DiskGUID) {
		t.Fatalf("sgdisk -p:\n%s", d)
	}
}

var (
	fsckFATBanner  = regexp.MustCompile(`^fsck\.fat \d+\.\d+ \(.*\)$`)
	fsckFATSummary = regexp.MustCompile(`^\S+: \d+ files, \d+/\d+ clusters$`)
)

// fatProblems returns everything fsck.vfat finds in the FAT at img. Its
// exit status alone is not enough (it reports some repairs and still exits
// 0), so -n must print only its banner and the summary, and -a on a copy
// must exit 0, print the same, and leave every byte alone.
func fatProblems(img string) ([]string, error) {
	var problems []string
	check := func(mode string, out []byte, err error) {
		for _, line := range nonEmptyLines(out) {
			if !fsckFATBanner.MatchString(line) && !fsckFATSummary.MatchString(line) {
				problems = append(problems, "fsck.vfat "+mode+" reports: "+line)
			}
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("fsck.vfat %s: %v", mode, err))
		}
	}
	out, err := exec.Command("fsck.vfat", "-n", img).CombinedOutput()
	check("-n", out, err)

	fixed := img + ".fixed"
	defer os.Remove(fixed)
	if out, err := exec.Command("cp", "--sparse=always", img, fixed).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy %s: %v: %s", img, err, out)
	}
	out, err = exec.Command("fsck.vfat", "-a", fixed).CombinedOutput()
	check("-a", out, err)
	if out, err := exec.Command("cmp", img, fixed).CombinedOutput(); err != nil {
		problems = append(problems, "fsck.vfat -a changed the filesystem: "+strings.TrimSpace(string(out)))
	}
	return problems, nil
}

func requireFATClean(t *testing.T, img string) {
	t.Helper()
	problems, err := fatProblems(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("fsck.vfat finds problems in %s:\n%s", img, strings.Join(problems, "\n"))
	}
}

func TestESPIsCleanFAT32(t *testing.T) {
	needTools(t, "fsck.vfat", "mtype", "mdir", "mcopy", "mmd", "cmp")
	// 33 MiB is the smallest size; 64 MiB once came out with a short FAT
	// (go-diskfs); 300 MiB gets mkfs.vfat's 4 KiB clusters.
	for _, espMiB := range []int64{33, 64, 300} {
		t.Run(strconv.FormatInt(espMiB, 10)+"MiB", func(t *testing.T) {
			s := testSpec(t, t.TempDir(), espMiB, 5*MiB)
			img, l := writeImage(t, s)
			esp := extract(t, img, l.Parts[0])
			requireFATClean(t, esp)
			for _, f := range s.ESPFiles {
				got, err := exec.Command("mtype", "-i", esp, "::/"+f.Path).Output()
				if err != nil {
					t.Fatalf("mtype %s: %v", f.Path, err)
				}
				if !bytes.Equal(got, f.Data) {
					t.Errorf("%s: read back %d bytes that differ from the %d written", f.Path, len(got), len(f.Data))
				}
			}
			// Every entry carries the epoch, not the build time.
			listing := run(t, "mdir", "-i", esp, "::/loader")
			if !strings.Contains(listing, "2024-05-06") || !strings.Contains(listing, "7:08") {
				t.Errorf("mdir ::/loader does not show the epoch:\n%s", listing)
			}
			// Another FAT implementation allocates in it and leaves it
			// clean, as the updater's writes to the ESP must.
			extra := filepath.Join(t.TempDir(), "extra.bin")
			if err := os.WriteFile(extra, pseudoRandom(7, int(MiB)+3), 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, "mmd", "-i", esp, "::/berth/b")
			run(t, "mcopy", "-i", esp, extra, "::/berth/b/vmlinuz")
			requireFATClean(t, esp)
		})
	}
}

// The checker must see what it exists for: a wrong free-cluster count
// is only "Auto-correcting" even with -n.
func TestFATProblemsSeesDefects(t *testing.T) {
	needTools(t, "fsck.vfat", "cmp")
	s := testSpec(t, t.TempDir(), 40, 5*MiB)
	img, l := writeImage(t, s)
	esp := extract(t, img, l.Parts[0])
	requireFATClean(t, esp)
	f, err := os.OpenFile(esp, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The FSInfo sector number is at byte 0x30 of the boot sector; its
	// free cluster count at byte 488.
	var sector [2]byte
	if _, err := f.ReadAt(sector[:], 0x30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{5, 0, 0, 0}, int64(binary.LittleEndian.Uint16(sector[:]))*sectorSize+488); err != nil {
		t.Fatal(err)
	}
	problems, err := fatProblems(esp)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) == 0 {
		t.Fatal("fatProblems found nothing in a FAT with a wrong free count")
	}
	t.Logf("found: %q", problems)
}

func TestStateIsCleanExt4(t *testing.T) {
	needTools(t, "e2fsck", "dumpe2fs", "debugfs")
	for _, stateMiB := range []int64{32, 1024} {
		t.Run(strconv.FormatInt(stateMiB, 10)+"MiB", func(t *testing.T) {
			s := testSpec(t, t.TempDir(), 40, 5*MiB)
			s.StateSize = stateMiB * MiB
			img, l := writeImage(t, s)
			state := extract(t, img, l.Parts[3])
			requireE2fsckClean(t, state)
			h := run(t, "dumpe2fs", "-h", state)
			for _, want := range []string{
				"Filesystem volume name:   " + layout.LabelState,
				"Filesystem UUID:          " + s.StateUUID,
				"Filesystem created:       Mon May  6 07:08:09 2024",
				"Last write time:          Mon May  6 07:08:09 2024",
				"Last mount time:          n/a",
				"Block size:               4096",
			} {
				if !strings.Contains(h, want) {
					t.Errorf("dumpe2fs -h lacks %q:\n%s", want, h)
				}
			}
			for _, ino := range []string{"<2>", "lost+found"} {
				st := run(t, "debugfs", "-R", "stat "+ino, state)
				if !strings.Contains(st, "crtime: 0x663881d9:00000000") || !strings.Contains(st, " mtime: 0x663881d9:00000000") {
					t.Errorf("%s times are not the epoch:\n%s", ino, st)
				}
			}
		})
	}
}

func TestSlotContent(t *testing.T) {
	s := testSpec(t, t.TempDir(), 40, 5*MiB+3)
	var calls []int64
	img := filepath.Join(t.TempDir(), "disk.img")
	err := Write(img, s, func(done, total int64) {
		if total != 5*MiB+3 {
			t.Errorf("progress total %d, want %d", total, 5*MiB+3)
		}
		calls = append(calls, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) < 2 || calls[len(calls)-1] != 5*MiB+3 {
		t.Errorf("progress calls %v do not end at the slot size", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] < calls[i-1] {
			t.Errorf("progress went backwards: %v", calls)
		}
	}
	l, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(s.SlotA)
	if err != nil {
		t.Fatal(err)
	}
	a := raw[l.Parts[1].Start : l.Parts[1].Start+l.Parts[1].Size]
	if !bytes.Equal(a[:len(want)], want) {
		t.Error("slot A does not start with the slot content")
	}
	if !allZero(a[len(want):]) {
		t.Error("slot A is not zero after the slot content")
	}
	b := raw[l.Parts[2].Start : l.Parts[2].Start+l.Parts[2].Size]
	if !allZero(b) {
		t.Error("slot B is not empty")
	}
}

func TestImageIsSparse(t *testing.T) {
	s := testSpec(t, t.TempDir(), 300, 5*MiB)
	s.SlotSize = 512 * MiB
	s.StateSize = 512 * MiB
	img, _ := writeImage(t, s)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	used := st.Sys().(*syscall.Stat_t).Blocks * 512
	if used > 64*MiB {
		t.Errorf("image of %d MiB uses %d MiB on disk; empty regions should be holes", st.Size()/MiB, used/MiB)
	}
}

func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir, 40, 5*MiB)
	first := filepath.Join(dir, "a.img")
	second := filepath.Join(dir, "b.img")
	if err := Write(first, s, nil); err != nil {
		t.Fatal(err)
	}
	// FAT times have 2 s resolution: wait past a tick so any use of the
	// clock shows.
	time.Sleep(2100 * time.Millisecond)
	// The caller's file order must not matter either.
	s.ESPFiles[0], s.ESPFiles[len(s.ESPFiles)-1] = s.ESPFiles[len(s.ESPFiles)-1], s.ESPFiles[0]
	if err := Write(second, s, nil); err != nil {
		t.Fatal(err)
	}
	if a, b := fileSHA(t, first), fileSHA(t, second); a != b {
		t.Fatalf("two builds differ: %s vs %s", a, b)
	}
	// Overwriting an existing image gives the same bytes again.
	if err := Write(first, s, nil); err != nil {
		t.Fatal(err)
	}
	if a, b := fileSHA(t, first), fileSHA(t, second); a != b {
		t.Fatalf("rewriting changed the image: %s vs %s", a, b)
	}
	// A different epoch must change the image (times really are written).
	s.Epoch = s.Epoch.Add(24 * time.Hour)
	if err := Write(second, s, nil); err != nil {
		t.Fatal(err)
	}
	if a, b := fileSHA(t, first), fileSHA(t, second); a == b {
		t.Fatal("changing the epoch did not change the image")
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestSlotTooLarge(t *testing.T) {
	dir := t.TempDir()
	s := testSpec(t, dir, 40, 1)
	if err := os.Truncate(s.SlotA, 312*MiB); err != nil {
		t.Fatal(err)
	}
	s.SlotSize = 256 * MiB
	img := filepath.Join(dir, "disk.img")
	err := Write(img, s, nil)
	want := "slot content is 312 MiB but the slot partition is 256 MiB; raise partitions.slot in the spec"
	if err == nil || err.Error() != want {
		t.Fatalf("got error %v, want %q", err, want)
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Fatalf("image was created before the size check: %v", err)
	}
}

func TestBadSpecs(t *testing.T) {
	dir := t.TempDir()
	base := testSpec(t, dir, 40, 1)
	cases := map[string]func(*Spec){
		"ESP not whole MiB":  func(s *Spec) { s.ESPSize += 1 },
		"ESP too small":      func(s *Spec) { s.ESPSize = 32 * MiB },
		"absolute ESP path":  func(s *Spec) { s.ESPFiles[0].Path = "/EFI/x" },
		"dot-dot ESP path":   func(s *Spec) { s.ESPFiles[0].Path = "../x" },
		"bad FAT character":  func(s *Spec) { s.ESPFiles[0].Path = "a:b" },
		"duplicate ESP path": func(s *Spec) { s.ESPFiles[1].Path = strings.ToLower(s.ESPFiles[0].Path) },
		"missing disk GUID":  func(s *Spec) { s.DiskGUID = "" },
		"bad partition GUID": func(s *Spec) { s.PartGUIDs[2] = "nope" },
		"repeated GUID":      func(s *Spec) { s.PartGUIDs[3] = s.PartGUIDs[0] },
		"bad state UUID":     func(s *Spec) { s.StateUUID = "x" },
		"epoch before FAT":   func(s *Spec) { s.Epoch = time.Unix(0, 0) },
		"missing slot file":  func(s *Spec) { s.SlotA = filepath.Join(dir, "absent") },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := base
			s.ESPFiles = append([]File(nil), base.ESPFiles...)
			mutate(&s)
			img := filepath.Join(t.TempDir(), "disk.img")
			if err := Write(img, s, nil); err == nil {
				t.Fatal("Write accepted a bad spec")
			}
			if _, err := os.Stat(img); !os.IsNotExist(err) {
				t.Fatal("image was created for a bad spec")
			}
		})
	}
}

func TestReadRejectsNonGPT(t *testing.T) {
	p := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(p, make([]byte, 4*MiB), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p); err == nil {
		t.Fatal("Read accepted a blank image")
	}
}
