package disk

import (
	"bytes"
	"fmt"
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

	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

const testStateUUID = "3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"

// writeExt4File makes a state filesystem of size bytes in a file of its
// own, as writeState does for the partition.
func writeExt4File(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "fs.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	s := Spec{StateUUID: testStateUUID, Epoch: testEpoch}
	if err := writeState(dir, f, 0, size, s); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every superblock copy says the same (e2fsck -b falls back to them): the
// epoch, never mounted, the pinned hash seed, the journal backup, and a
// checksum that matches (dumpe2fs refuses a copy whose checksum does not).
func TestExt4SuperblockCopies(t *testing.T) {
	needTools(t, "dumpe2fs")
	// 256 MiB of 4 KiB blocks is two groups, both with a superblock.
	img := writeExt4File(t, 256*MiB)
	seed := hashSeed(uuid.MustParse(testStateUUID))
	for _, args := range [][]string{{"-h", img}, {"-o", "superblock=32768", "-o", "blocksize=4096", "-h", img}} {
		h := run(t, "dumpe2fs", args...)
		for _, want := range []string{
			"Filesystem created:       Mon May  6 07:08:09 2024",
			"Last write time:          Mon May  6 07:08:09 2024",
			"Last checked:             Mon May  6 07:08:09 2024",
			"Last mount time:          n/a",
			"Directory Hash Seed:      " + seed.String(),
			"Journal backup:           inode blocks",
			"Filesystem flags:         signed_directory_hash",
		} {
			if !strings.Contains(h, want) {
				t.Errorf("dumpe2fs %s lacks %q:\n%s", strings.Join(args[:len(args)-1], " "), want, h)
			}
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

// The checker must see the defects it exists for, or a clean result
// means nothing: one that only -fn shows, one that only -fp shows (a
// stale journal backup), and a bad superblock checksum.
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
			// s_checksum: the last 4 bytes of the superblock at byte 1024.
			if _, err := f.WriteAt([]byte{0xde, 0xad}, 1024+0x3FC); err != nil {
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
			// The kernel grows the mounted filesystem at first boot only
			// with the GDT blocks the resize inode reserves.
			if !slices.Contains(have, "resize_inode") {
				t.Errorf("feature resize_inode missing from %v: the initrd cannot grow the filesystem online", have)
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

// The filesystem grows: here offline with resize2fs, which needs no
// privilege (TestStateExt4GrowsOnline is the initrd's way, the kernel's
// online resize). 2 GiB fits the GDT blocks the resize inode reserves;
// 64 GiB needs more than it reserves for a 32 MiB filesystem.
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

// The initrd grows the mounted filesystem with EXT4_IOC_RESIZE_FS, which
// resize2fs also uses on a mounted filesystem. It needs root, a loop
// device and CAP_SYS_RESOURCE (containers often drop it).
func TestStateExt4GrowsOnline(t *testing.T) {
	needTools(t, "e2fsck", "resize2fs", "losetup", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount")
	}
	img := writeExt4File(t, 32*MiB)
	if err := os.Truncate(img, 64<<30); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	dir := t.TempDir()
	if out, err := exec.Command("mount", loop, dir).CombinedOutput(); err != nil {
		t.Skipf("no loop mount here (%v: %s)", err, bytes.TrimSpace(out))
	}
	out, err = exec.Command("resize2fs", loop).CombinedOutput()
	if uerr := exec.Command("umount", dir).Run(); uerr != nil {
		t.Fatalf("umount: %v", uerr)
	}
	if err != nil && strings.Contains(string(out), "Permission denied") {
		t.Skipf("no CAP_SYS_RESOURCE here: %s", bytes.TrimSpace(out))
	}
	if err != nil {
		t.Fatalf("online resize2fs to 64 GiB: %v\n%s", err, out)
	}
	exec.Command("losetup", "-d", loop).Run()
	waitLoopDetached(t, img)
	requireE2fsckClean(t, img)
	want := fmt.Sprintf("Block count:              %d\n", (64<<30)/4096)
	if h := run(t, "dumpe2fs", "-h", img); !strings.Contains(h, want) {
		t.Errorf("after the online resize, dumpe2fs lacks %q:\n%s", want, h)
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
