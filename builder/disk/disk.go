// Package disk assembles a berth GPT disk image: an ESP (FAT32) holding the
// boot loader, entries, kernels and initrds; slot A filled with a finished
// squashfs; slot B of the same size left empty; and an empty ext4 state
// partition. The image is reproducible: the same Spec gives the same bytes.
//
// The GPT is written with go-diskfs. The FAT32 (mkfs.vfat and mtools,
// fat.go) and the ext4 (mke2fs, ext4.go) are made by the standard tools in
// files of their own, with every timestamp, serial and seed taken from the
// Spec, and copied into their partitions.
package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/updater/layout"
)

const (
	// MiB is the unit of every partition size and of the alignment.
	MiB = int64(1) << 20
	// sectorSize is the logical sector size of the image.
	sectorSize = 512
	// gptReserve is the space before the first partition (protective MBR,
	// primary GPT, padding to 1 MiB) and after the last (backup GPT).
	gptReserve = MiB
	// MinESPSize is the smallest ESP that mkfs.vfat makes a proper FAT32
	// of: with 512-byte clusters, 32 MiB gives fewer than the 65525
	// clusters that define FAT32.
	MinESPSize = 33 * MiB
	// minStateSize keeps the ext4 large enough for a journal of its own.
	minStateSize = 16 * MiB
)

// File is one file to put on the ESP.
type File struct {
	Path string // ESP-relative, forward slashes, e.g. "EFI/BOOT/BOOTX64.EFI"
	Data []byte
}

// Spec describes the disk to build. Every field that would otherwise be
// random or taken from the clock is given here, so builds are reproducible.
type Spec struct {
	DiskGUID                     string // from layout.GUID(name, version, "disk")
	ESPSize, SlotSize, StateSize int64  // bytes, whole MiB
	ESPFiles                     []File
	SlotA                        string    // squashfs image for partition 2 (BERTH-A); must fit SlotSize
	PartGUIDs                    [4]string // partition GUIDs, in partition order
	Epoch                        time.Time // every timestamp written (FAT entries, ext4 times)
	StateUUID                    string    // ext4 filesystem UUID
}

// Layout is a disk's partition table as read back by Read.
type Layout struct{ Parts []Part }

// Part is one GPT partition. Start and Size are in bytes.
type Part struct {
	Number                int
	Label, TypeGUID, GUID string
	Start, Size           int64
}

// Size is the total image size for s: 1 MiB in front (MBR, primary GPT),
// the partitions, and 1 MiB at the end for the backup GPT.
func Size(s Spec) int64 {
	return gptReserve + s.ESPSize + 2*s.SlotSize + s.StateSize + gptReserve
}

// partitionPlan is one partition to create, in order.
type partitionPlan struct {
	number   int
	label    string
	typeGUID string
	guid     string
	start    int64 // bytes
	size     int64 // bytes
}

// plan lays the four partitions out back to back from 1 MiB on.
func plan(s Spec) []partitionPlan {
	sizes := [4]int64{s.ESPSize, s.SlotSize, s.SlotSize, s.StateSize}
	labels := [4]string{layout.LabelESP, layout.LabelSlotA, layout.LabelSlotB, layout.LabelState}
	types := [4]string{layout.TypeESP, layout.TypeSlot, layout.TypeSlot, layout.TypeState}
	numbers := [4]int{layout.PartESP, layout.PartSlotA, layout.PartSlotB, layout.PartState}
	parts := make([]partitionPlan, 4)
	start := gptReserve
	for i := range parts {
		parts[i] = partitionPlan{
			number: numbers[i], label: labels[i], typeGUID: types[i],
			guid: s.PartGUIDs[i], start: start, size: sizes[i],
		}
		start += sizes[i]
	}
	return parts
}

// Tools are the programs Write runs, with the Debian package of each.
var Tools = map[string]string{
	"mkfs.vfat": "dosfstools",
	"mlabel":    "mtools",
	"mmd":       "mtools",
	"mcopy":     "mtools",
	"mke2fs":    "e2fsprogs",
}

// CheckTools says which of Tools is missing and how to install it.
func CheckTools() error {
	names := make([]string, 0, len(Tools))
	for t := range Tools {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found: install the %s package (make deps)", t, Tools[t])
		}
	}
	return nil
}

// Write builds the image at path, replacing any file there. The caller
// writes to a temporary name and renames. progress, if not nil, is called
// with bytes done and total while the slot content is copied. The
// filesystems are made in a temporary directory beside path.
func Write(path string, s Spec, progress func(done, total int64)) (err error) {
	files, err := validate(s)
	if err != nil {
		return err
	}
	if err := CheckTools(); err != nil {
		return err
	}
	slot, slotSize, err := openSlot(s)
	if err != nil {
		return err
	}
	defer slot.Close()

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create disk image: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close disk image: %w", cerr)
		}
	}()
	// Truncate rather than write: every region we leave alone (slot B,
	// unused FAT and ext4 space) stays a hole in the file.
	if err := f.Truncate(Size(s)); err != nil {
		return fmt.Errorf("size disk image to %d bytes: %w", Size(s), err)
	}
	work, err := os.MkdirTemp(filepath.Dir(path), ".berth-disk-")
	if err != nil {
		return fmt.Errorf("work directory for the filesystems: %w", err)
	}
	defer os.RemoveAll(work)
	d, err := diskfs.OpenBackend(file.New(f, false), diskfs.WithSectorSize(sectorSize))
	if err != nil {
		return fmt.Errorf("open disk image: %w", err)
	}
	parts := plan(s)
	if err := writeGPT(d, s.DiskGUID, parts); err != nil {
		return err
	}
	esp, state, slotA := parts[0], parts[3], parts[1]
	if err := writeESP(work, f, esp.start, esp.size, files, s); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	if err := writeState(work, f, state.start, state.size, s); err != nil {
		return fmt.Errorf("state partition: %w", err)
	}
	if err := copySlot(f, slotA.start, slot, slotSize, progress); err != nil {
		return fmt.Errorf("slot A: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync disk image: %w", err)
	}
	return nil
}

// validate checks everything that can be checked before the image file is
// touched, and returns the ESP files in a canonical (sorted) order so the
// FAT layout does not depend on the caller's order.
func validate(s Spec) ([]File, error) {
	sizes := []struct {
		name string
		v    int64
		min  int64
	}{{"ESP", s.ESPSize, MinESPSize}, {"slot", s.SlotSize, MiB}, {"state", s.StateSize, minStateSize}}
	for _, z := range sizes {
		if z.v%MiB != 0 {
			return nil, fmt.Errorf("%s partition size %d is not a whole number of MiB", z.name, z.v)
		}
		if z.v < z.min {
			return nil, fmt.Errorf("%s partition is %d MiB; it must be at least %d MiB", z.name, z.v/MiB, z.min/MiB)
		}
	}
	if s.ESPSize > 2*1024*MiB {
		return nil, fmt.Errorf("ESP partition is %d MiB; keep it at most 2048 MiB", s.ESPSize/MiB)
	}
	if err := checkGUID("disk GUID", s.DiskGUID); err != nil {
		return nil, err
	}
	seen := map[string]bool{strings.ToUpper(s.DiskGUID): true}
	for i, g := range s.PartGUIDs {
		name := fmt.Sprintf("partition %d GUID", i+1)
		if err := checkGUID(name, g); err != nil {
			return nil, err
		}
		if seen[strings.ToUpper(g)] {
			return nil, fmt.Errorf("%s %s is used twice; every GUID on the disk must be unique", name, g)
		}
		seen[strings.ToUpper(g)] = true
	}
	if err := checkGUID("state filesystem UUID", s.StateUUID); err != nil {
		return nil, err
	}
	if y := s.Epoch.UTC().Year(); y < 1980 || y > 2107 {
		return nil, fmt.Errorf("epoch %s is outside 1980..2107, the range FAT timestamps can hold", s.Epoch.UTC().Format(time.RFC3339))
	}
	files := append([]File(nil), s.ESPFiles...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var total int64
	isFile := map[string]bool{} // lower-cased: FAT names ignore case
	for _, f := range files {
		if err := checkESPPath(f.Path); err != nil {
			return nil, err
		}
		key := strings.ToLower(f.Path)
		if isFile[key] {
			return nil, fmt.Errorf("ESP file %q is given twice (FAT names ignore case)", f.Path)
		}
		isFile[key] = true
		total += int64(len(f.Data))
	}
	for _, f := range files {
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			if isFile[strings.ToLower(dir)] {
				return nil, fmt.Errorf("ESP path %q needs %q to be a directory, but it is also given as a file", f.Path, dir)
			}
		}
	}
	if total > s.ESPSize*9/10 {
		return nil, fmt.Errorf("ESP files take %d MiB, too much for an ESP of %d MiB; raise the ESP size", total/MiB, s.ESPSize/MiB)
	}
	return files, nil
}

func checkGUID(what, g string) error {
	if g == "" {
		return fmt.Errorf("%s is empty; derive it with layout.GUID so builds are reproducible", what)
	}
	if _, err := uuid.Parse(g); err != nil || len(g) != 36 {
		return fmt.Errorf("%s %q is not a GUID like 01234567-89AB-CDEF-0123-456789ABCDEF", what, g)
	}
	return nil
}

// checkESPPath accepts clean relative paths whose names FAT long file
// names can hold.
func checkESPPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || strings.HasPrefix(p, "../") || p == ".." {
		return fmt.Errorf("ESP path %q must be a clean relative path like EFI/BOOT/BOOTX64.EFI", p)
	}
	for _, name := range strings.Split(p, "/") {
		if len(name) > 255 {
			return fmt.Errorf("ESP path %q: name %q is longer than 255 characters", p, name)
		}
		if strings.HasSuffix(name, ".") || strings.HasSuffix(name, " ") {
			return fmt.Errorf("ESP path %q: FAT names cannot end in a dot or a space", p)
		}
		for _, c := range name {
			if c < 0x20 || strings.ContainsRune(`"*:<>?\|`, c) || c > 0x7e {
				return fmt.Errorf("ESP path %q: character %q is not allowed in a FAT name (use printable ASCII)", p, c)
			}
		}
	}
	return nil
}

// openSlot opens the slot content and checks it fits before anything is
// written.
func openSlot(s Spec) (*os.File, int64, error) {
	if s.SlotA == "" {
		return nil, 0, errors.New("no slot content given (Spec.SlotA)")
	}
	f, err := os.Open(s.SlotA)
	if err != nil {
		return nil, 0, fmt.Errorf("slot content: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("slot content: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("slot content %s is not a regular file", s.SlotA)
	}
	if st.Size() > s.SlotSize {
		f.Close()
		return nil, 0, fmt.Errorf("slot content is %d MiB but the slot partition is %d MiB; raise partitions.slot in the spec",
			ceilMiB(st.Size()), s.SlotSize/MiB)
	}
	return f, st.Size(), nil
}

func ceilMiB(n int64) int64 { return (n + MiB - 1) / MiB }

// newFile creates an empty (sparse) file of size bytes for a filesystem.
func newFile(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size %s to %d bytes: %w", p, size, err)
	}
	return f.Close()
}

// copyInto copies the filesystem made in the file at p, size bytes, into
// its partition at start. Only the file's data is read (the tools leave
// most of a fresh filesystem a hole), and of that only the non-zero runs
// are written: the image is fresh, so the rest are holes already.
func copyInto(w io.WriterAt, start int64, p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole from here on
		}
		end := size
		if err == nil {
			end, err = f.Seek(data, unix.SEEK_HOLE)
		}
		if err != nil {
			// No SEEK_DATA on this filesystem: copy the rest whole.
			data, end = off, size
		}
		end = min(end, size)
		if err := copySlot(w, start+data, io.NewSectionReader(f, data, end-data), end-data, nil); err != nil {
			return fmt.Errorf("copy %s into the image: %w", filepath.Base(p), err)
		}
		off = end
	}
	return nil
}

// runTool runs one of the filesystem tools; its output becomes part of the
// error when it fails.
func runTool(env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return nil
}

// writeGPT writes the protective MBR and both GPT headers.
func writeGPT(d *disk.Disk, diskGUID string, parts []partitionPlan) error {
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               diskGUID,
	}
	for _, p := range parts {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: p.number,
			Start: uint64(p.start / sectorSize),
			End:   uint64((p.start+p.size)/sectorSize - 1),
			Size:  uint64(p.size),
			Type:  gpt.Type(p.typeGUID),
			Name:  p.label,
			GUID:  p.guid,
		})
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("write partition table: %w", err)
	}
	return nil
}

// copySlot copies total bytes from r to w at start (the slot content, a
// filesystem). Blocks of zeros are skipped: the image is fresh, so they are
// holes already.
func copySlot(w io.WriterAt, start int64, r io.Reader, total int64, progress func(done, total int64)) error {
	buf := make([]byte, 4*MiB)
	var done int64
	if progress != nil {
		progress(0, total)
	}
	for done < total {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), total-done)])
		if err != nil {
			return fmt.Errorf("read at byte %d: %w", done, err)
		}
		if err := writeNonZero(w, buf[:n], start+done); err != nil {
			return err
		}
		done += int64(n)
		if progress != nil {
			progress(done, total)
		}
	}
	return nil
}

// writeNonZero writes b at off, leaving out 64 KiB runs of zeros.
func writeNonZero(w io.WriterAt, b []byte, off int64) error {
	const chunk = 64 << 10
	for i := 0; i < len(b); i += chunk {
		c := b[i:min(i+chunk, len(b))]
		if allZero(c) {
			continue
		}
		if _, err := w.WriteAt(c, off+int64(i)); err != nil {
			return fmt.Errorf("write at byte %d: %w", off+int64(i), err)
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// Read returns the GPT of the image at path.
func Read(path string) (Layout, error) {
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly), diskfs.WithSectorSize(sectorSize))
	if err != nil {
		return Layout{}, fmt.Errorf("open disk image: %w", err)
	}
	defer d.Close()
	t, err := d.GetPartitionTable()
	if err != nil {
		return Layout{}, fmt.Errorf("read partition table of %s: %w", path, err)
	}
	gt, ok := t.(*gpt.Table)
	if !ok {
		return Layout{}, fmt.Errorf("%s has a %s partition table, not GPT", path, t.Type())
	}
	var l Layout
	for _, p := range gt.Partitions {
		if p == nil || p.Type == gpt.Unused {
			continue
		}
		l.Parts = append(l.Parts, Part{
			Number:   p.Index,
			Label:    p.Name,
			TypeGUID: strings.ToUpper(string(p.Type)),
			GUID:     strings.ToUpper(p.GUID),
			Start:    int64(p.Start) * sectorSize,
			Size:     int64(p.End-p.Start+1) * sectorSize,
		})
	}
	return l, nil
}
