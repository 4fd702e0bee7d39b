package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

const testStateUUID = "3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"

// newExt4 makes a state filesystem of size bytes in its own file, as
// writeState does; pinned says whether pinExt4 runs over it too.
func newExt4(t *testing.T, size int64, pinned bool) (*os.File, ext4Geometry, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	id := uuid.MustParse(testStateUUID)
	if err := createExt4(file.New(f, false), 0, size, id); err != nil {
		t.Fatal(err)
	}
	if pinned {
		if err := pinExt4(f, f, testEpoch, hashSeed(id)); err != nil {
			t.Fatal(err)
		}
	}
	sb := make([]byte, ext4SuperblockSize)
	if _, err := f.ReadAt(sb, ext4SuperblockOffset); err != nil {
		t.Fatal(err)
	}
	g, err := parseExt4Superblock(sb)
	if err != nil {
		t.Fatal(err)
	}
	return f, g, sb
}

func readInode(t *testing.T, f io.ReaderAt, g ext4Geometry, n int64) []byte {
	t.Helper()
	table, err := inodeTableOfGroup0(f, g)
	if err != nil {
		t.Fatal(err)
	}
	ino := make([]byte, g.inodeSize)
	if _, err := f.ReadAt(ino, table*g.blockSize+(n-1)*g.inodeSize); err != nil {
		t.Fatal(err)
	}
	return ino
}

// Our inode checksum must match what go-diskfs writes, or the repaired
// inodes would carry checksums no reader agrees with.
func TestInodeChecksumMatchesGoDiskfs(t *testing.T) {
	for _, size := range []int64{32 * MiB, 256 * MiB} {
		f, g, sb := newExt4(t, size, false)
		if g.roCompat&roCompatMetadataCsum == 0 {
			t.Fatal("state filesystem has no metadata_csum; this test would prove nothing")
		}
		seed := crc32c(^uint32(0), sb[sbUUID:sbUUID+16])
		if g.incompat&incompatCsumSeed != 0 {
			seed = binary.LittleEndian.Uint32(sb[sbChecksumSeed:])
		}
		for _, n := range []int64{2, 8, 11} { // root, journal, lost+found
			ino := readInode(t, f, g, n)
			stored := uint32(binary.LittleEndian.Uint16(ino[inodeChecksumLo:])) | uint32(binary.LittleEndian.Uint16(ino[inodeChecksumHi:]))<<16
			if got := inodeChecksum(ino, uint32(n), seed); got != stored {
				t.Errorf("%d MiB: inode %d checksum %08x, go-diskfs stored %08x", size/MiB, n, got, stored)
			}
		}
	}
}

func TestPinExt4SetsEveryCopy(t *testing.T) {
	// 256 MiB of 4 KiB blocks is two groups, both with a superblock.
	f, g, _ := newExt4(t, 256*MiB, true)
	seed := hashSeed(uuid.MustParse(testStateUUID))
	journal := readInode(t, f, g, 8)
	copies := 0
	sb := make([]byte, ext4SuperblockSize)
	for n := int64(0); n < g.groups; n++ {
		if !g.hasSuperblock(n) {
			continue
		}
		copies++
		if _, err := f.ReadAt(sb, g.superblockOffset(n)); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if v := binary.LittleEndian.Uint32(sb[sbMountTime:]); v != 0 {
			t.Errorf("group %d: mount time %d, want 0 (never mounted)", n, v)
		}
		for _, off := range []int{sbWriteTime, sbLastCheck, sbMkfsTime} {
			if v := binary.LittleEndian.Uint32(sb[off:]); int64(v) != testEpoch.Unix() {
				t.Errorf("group %d: time at %#x is %d, want %d", n, off, v, testEpoch.Unix())
			}
		}
		if !bytes.Equal(sb[sbHashSeed:sbHashSeed+16], seed[:]) {
			t.Errorf("group %d: hash seed not set", n)
		}
		if v := binary.LittleEndian.Uint16(sb[sbBlockGroupNr:]); int64(v) != n {
			t.Errorf("group %d: s_block_group_nr is %d", n, v)
		}
		// The journal backup is the journal inode's i_block, i_size_high
		// and i_size, word for word.
		want := append(append(append([]byte(nil), journal[inodeBlock:inodeBlock+60]...),
			journal[inodeSizeHigh:inodeSizeHigh+4]...), journal[inodeSizeLo:inodeSizeLo+4]...)
		if !bytes.Equal(sb[sbJnlBlocks:sbJnlBlocks+jnlBackupSize], want) || sb[sbJnlBackupType] != jnlBackupBlocks {
			t.Errorf("group %d: journal backup %x (type %d), want %x", n, sb[sbJnlBlocks:sbJnlBlocks+jnlBackupSize], sb[sbJnlBackupType], want)
		}
		if allZero(want[:60]) {
			t.Error("journal inode has an empty block map; the comparison proves nothing")
		}
		if binary.LittleEndian.Uint32(sb[sbFlags:])&flagSignedHash == 0 {
			t.Errorf("group %d: no directory hash signedness hint", n)
		}
		if c := crc32c(^uint32(0), sb[:sbChecksum]); c != binary.LittleEndian.Uint32(sb[sbChecksum:]) {
			t.Errorf("group %d: superblock checksum %08x, want %08x", n, binary.LittleEndian.Uint32(sb[sbChecksum:]), c)
		}
	}
	if copies < 2 {
		t.Fatalf("only %d superblock copies in %d groups; the test should cover backups", copies, g.groups)
	}
}

func TestHasSuperblockSparse(t *testing.T) {
	g := ext4Geometry{roCompat: roCompatSparseSuper}
	var got []int64
	for n := int64(0); n < 60; n++ {
		if g.hasSuperblock(n) {
			got = append(got, n)
		}
	}
	want := []int64{0, 1, 3, 5, 7, 9, 25, 27, 49}
	if len(got) != len(want) {
		t.Fatalf("groups with superblocks %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("groups with superblocks %v, want %v", got, want)
		}
	}
}

var (
	e2fsckBanner  = regexp.MustCompile(`^e2fsck \d+\.\d+(\.\d+)? \(.*\)$`)
	e2fsckSummary = regexp.MustCompile(`^` + regexp.QuoteMeta(layout.LabelState) + `: \d+/\d+ files \([0-9.]+% non-contiguous\), \d+/\d+ blocks$`)
	e2fsckPasses  = []string{
		"Pass 1: Checking inodes, blocks, and sizes",
		"Pass 2: Checking directory structure",
		"Pass 3: Checking directory connectivity",
		"Pass 4: Checking reference counts",
		"Pass 5: Checking group summary information",
	}
)

// e2fsckProblems returns everything e2fsck finds in the ext4 at img. The
// exit status alone is not enough: e2fsck -n answers "no" to every
// question and still exits 0. So -fn must print only its banner, the five
// passes and the summary, and a preen (-fp, on a copy) must exit 0 and
// print only the banner and the summary: whatever it mends, it names.
func e2fsckProblems(img string) ([]string, error) {
	var problems []string
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	passes := 0
	for _, line := range nonEmptyLines(out) {
		switch {
		case strings.Contains(line, "? no"):
			problems = append(problems, "e2fsck -fn would fix: "+line)
		case passes < len(e2fsckPasses) && line == e2fsckPasses[passes]:
			passes++
		case e2fsckBanner.MatchString(line), e2fsckSummary.MatchString(line):
		default:
			problems = append(problems, "e2fsck -fn reports: "+line)
		}
	}
	if err != nil {
		problems = append(problems, fmt.Sprintf("e2fsck -fn: %v", err))
	}
	if passes != len(e2fsckPasses) {
		problems = append(problems, fmt.Sprintf("e2fsck -fn ran %d of %d passes", passes, len(e2fsckPasses)))
	}

	preen := filepath.Join(filepath.Dir(img), filepath.Base(img)+".preen")
	defer os.Remove(preen)
	if out, err := exec.Command("cp", "--sparse=always", img, preen).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy %s: %v: %s", img, err, out)
	}
	out, err = exec.Command("e2fsck", "-fp", preen).CombinedOutput()
	for _, line := range nonEmptyLines(out) {
		if !e2fsckBanner.MatchString(line) && !e2fsckSummary.MatchString(line) {
			problems = append(problems, "e2fsck -fp mends: "+line)
		}
	}
	if err != nil {
		problems = append(problems, fmt.Sprintf("e2fsck -fp: %v (exit status 0 means nothing to mend)", err))
	}
	return problems, nil
}

func requireE2fsckClean(t *testing.T, img string) {
	t.Helper()
	problems, err := e2fsckProblems(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("e2fsck finds problems in %s:\n%s", img, strings.Join(problems, "\n"))
	}
}

func nonEmptyLines(b []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// writeExt4File writes a state filesystem image to a file of its own.
func writeExt4File(t *testing.T, size int64) string {
	t.Helper()
	f, _, _ := newExt4(t, size, true)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// The checker must see the defects it exists for, or a clean result
// means nothing: one that only -fn shows, one that only -fp shows (the
// empty journal backup go-diskfs wrote), and a bad superblock checksum.
func TestE2fsckProblemsSeesDefects(t *testing.T) {
	needTools(t, "e2fsck", "debugfs")
	for name, damage := range map[string]func(t *testing.T, img string){
		"bad link count": func(t *testing.T, img string) {
			run(t, "debugfs", "-w", "-R", "sif <11> links_count 5", img)
		},
		"no lost+found": func(t *testing.T, img string) {
			run(t, "debugfs", "-w", "-R", "rmdir lost+found", img)
		},
		"stale journal backup": func(t *testing.T, img string) {
			run(t, "debugfs", "-w", "-R", "ssv jnl_blocks[4] 0", img)
		},
		"superblock checksum": func(t *testing.T, img string) {
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xde, 0xad}, ext4SuperblockOffset+sbChecksum); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			img := writeExt4File(t, 32*MiB)
			requireE2fsckClean(t, img)
			damage(t, img)
			problems, err := e2fsckProblems(img)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) == 0 {
				t.Fatal("e2fsckProblems found nothing in a damaged filesystem")
			}
			t.Logf("found: %q", problems)
		})
	}
}

func TestStateExt4IsClean(t *testing.T) {
	needTools(t, "e2fsck", "dumpe2fs", "debugfs")
	// 16 MiB is the smallest state partition; 1100 MiB ends in a partial
	// group; 4200 MiB has backups beyond group 1 and several flex groups.
	for _, mib := range []int64{16, 32, 1100, 4200} {
		t.Run(strconv.FormatInt(mib, 10)+"MiB", func(t *testing.T) {
			img := writeExt4File(t, mib*MiB)
			requireE2fsckClean(t, img)
			h := run(t, "dumpe2fs", "-h", img)
			features := regexp.MustCompile(`(?m)^Filesystem features: +(.*)$`).FindStringSubmatch(h)
			if features == nil {
				t.Fatalf("dumpe2fs -h shows no features:\n%s", h)
			}
			have := strings.Fields(features[1])
			for _, want := range []string{"has_journal", "extent", "64bit", "flex_bg", "metadata_csum", "dir_index", "dir_nlink", "extra_isize"} {
				if !slices.Contains(have, want) {
					t.Errorf("feature %s missing from %v", want, have)
				}
			}
			if slices.Contains(have, "resize_inode") {
				t.Errorf("resize_inode is back (go-diskfs writes an invalid one): %v", have)
			}
			for _, want := range []string{
				"Block size:               4096",
				"Filesystem flags:         signed_directory_hash",
				"Journal backup:           inode blocks",
				"Last mounted on:          <not available>",
			} {
				if !strings.Contains(h, want) {
					t.Errorf("dumpe2fs -h lacks %q:\n%s", want, h)
				}
			}
			lf := run(t, "debugfs", "-R", "stat lost+found", img)
			if !strings.Contains(lf, "Type: directory    Mode:  0700") || !strings.Contains(lf, "Links: 2") {
				t.Errorf("lost+found is not a 0700 directory:\n%s", lf)
			}
			if root := run(t, "debugfs", "-R", "stat <2>", img); !strings.Contains(root, "Links: 3") {
				t.Errorf("root does not count lost+found's link:\n%s", root)
			}
		})
	}
}

// The filesystem must work, not just pass e2fsck: the kernel writes to it
// through a loop device when it can, debugfs (e2fsprogs' own writer)
// always.
func TestStateExt4Writable(t *testing.T) {
	needTools(t, "e2fsck", "debugfs")
	img := writeExt4File(t, 64*MiB)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, pseudoRandom(5, 3*int(MiB)+7), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "debugfs", "-w", "-R", "write "+src+" written-by-debugfs", img)
	requireE2fsckClean(t, img)
	if got := run(t, "debugfs", "-R", "stat written-by-debugfs", img); !strings.Contains(got, "Size: "+strconv.Itoa(3*int(MiB)+7)) {
		t.Fatalf("debugfs wrote no file:\n%s", got)
	}

	dir := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("no loop mount here (%v: %s); debugfs wrote to the filesystem", err, bytes.TrimSpace(out))
	}
	mounted := true
	unmount := func() {
		if mounted {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Fatalf("umount: %v\n%s", err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)
	// Enough names to make the kernel index the directory (dir_index).
	if err := os.Mkdir(filepath.Join(dir, "many"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		if err := os.WriteFile(filepath.Join(dir, "many", fmt.Sprintf("entry-with-a-long-name-%05d", i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), pseudoRandom(6, 20*int(MiB)), 0o644); err != nil {
		t.Fatal(err)
	}
	unmount()
	waitLoopDetached(t, img)
	requireE2fsckClean(t, img)
	if htree := run(t, "debugfs", "-R", "htree many", img); !strings.Contains(htree, "Root node dump") {
		t.Errorf("the kernel did not index a directory of 2000 names:\n%.400s", htree)
	}
}

// The initrd grows the filesystem offline with resize2fs on first boot.
// 64 GiB needs more group descriptor blocks than the image has, which
// resize2fs must find room for without a resize inode.
func TestStateExt4Grows(t *testing.T) {
	needTools(t, "e2fsck", "resize2fs", "dumpe2fs")
	img := writeExt4File(t, 32*MiB)
	for _, gib := range []int64{2, 64} {
		grown := filepath.Join(t.TempDir(), "grown.img")
		run(t, "cp", "--sparse=always", img, grown)
		if err := os.Truncate(grown, gib<<30); err != nil {
			t.Fatal(err)
		}
		// Lazy inode table init, as with /sys mounted: new groups are left
		// uninitialised, which group checksums (metadata_csum) allow.
		cmd := exec.Command("resize2fs", grown)
		cmd.Env = append(os.Environ(), "RESIZE2FS_FORCE_LAZY_ITABLE_INIT=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("resize2fs to %d GiB: %v\n%s", gib, err, out)
		}
		requireE2fsckClean(t, grown)
		want := fmt.Sprintf("Block count:              %d\n", gib<<30/4096)
		if h := run(t, "dumpe2fs", "-h", grown); !strings.Contains(h, want) {
			t.Errorf("after resize2fs to %d GiB, dumpe2fs lacks %q:\n%s", gib, want, h)
		}
		st, err := os.Stat(grown)
		if err != nil {
			t.Fatal(err)
		}
		if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 64*MiB {
			t.Errorf("growing to %d GiB wrote %d MiB; new block groups should stay uninitialised", gib, used/MiB)
		}
	}
}

// waitLoopDetached waits until no loop device is backed by img: umount
// releases an auto-cleared loop device asynchronously, and reading the
// image before that may race with the device's last writes.
func waitLoopDetached(t *testing.T, img string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("losetup", "-j", img).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loop device still attached to %s after umount: %s", img, bytes.TrimSpace(out))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("sync", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("sync %s: %v: %s", img, err, out)
	}
}
