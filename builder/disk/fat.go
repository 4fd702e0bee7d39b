package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

// writeESP creates the FAT32 with go-diskfs, adds the files, then runs
// repairFAT32 over the result.
func writeESP(d *disk.Disk, img io.ReaderAt, start, size int64, files []File, s Spec) error {
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{
		Partition:    layout.PartESP,
		FSType:       filesystem.TypeFat32,
		VolumeLabel:  layout.LabelESP,
		Reproducible: true, // volume serial 0 instead of the clock; repairFAT32 sets ours
	})
	if err != nil {
		return fmt.Errorf("create FAT32: %w", err)
	}
	for _, f := range files {
		if dir := path.Dir(f.Path); dir != "." {
			if err := fs.Mkdir("/" + dir); err != nil {
				return fmt.Errorf("create directory %s: %w", dir, err)
			}
		}
		if err := writeFATFile(fs, "/"+f.Path, f.Data); err != nil {
			return err
		}
	}
	w, ok := img.(io.WriterAt)
	if !ok {
		return errors.New("disk image is not writable")
	}
	return repairFAT32(io.NewSectionReader(img, start, size), io.NewOffsetWriter(w, start), s.Epoch, volumeID(s.PartGUIDs[0]))
}

func writeFATFile(fs filesystem.FileSystem, p string, data []byte) error {
	f, err := fs.OpenFile(p, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	return nil
}

// volumeID derives the FAT volume serial from the ESP's partition GUID, so
// /dev/disk/by-uuid differs between images but not between builds.
func volumeID(guid string) uint32 {
	u, _ := uuid.Parse(guid) // validated by validate
	return binary.BigEndian.Uint32(u[:4])
}

// FAT32 on-disk constants (Microsoft FAT specification).
const (
	fat32MinClusters = 65525      // fewer clusters make a FAT16 by definition
	fatEntryMask     = 0x0FFFFFFF // the top 4 bits of a FAT32 entry are reserved
	fatBadCluster    = 0x0FFFFFF7
	dirEntrySize     = 32
	attrLongName     = 0x0F
	attrVolumeID     = 0x08
	attrDirectory    = 0x10
	fsInfoLeadSig    = 0x41615252
	fsInfoStructSig  = 0x61417272
	fsInfoUnknown    = 0xFFFFFFFF
)

// fat32Geometry is what the repair needs from the boot sector.
type fat32Geometry struct {
	bytesPerSector    int64
	sectorsPerCluster int64
	reservedSectors   int64
	fatCount          int64
	sectorsPerFAT     int64
	totalSectors      int64
	rootCluster       uint32
	fsInfoSector      int64
	backupBootSector  int64
}

func (g fat32Geometry) firstDataSector() int64 { return g.reservedSectors + g.fatCount*g.sectorsPerFAT }
func (g fat32Geometry) clusterBytes() int64    { return g.bytesPerSector * g.sectorsPerCluster }
func (g fat32Geometry) clusterCount() int64 {
	return (g.totalSectors - g.firstDataSector()) / g.sectorsPerCluster
}
func (g fat32Geometry) clusterOffset(c uint32) int64 {
	return (g.firstDataSector() + int64(c-2)*g.sectorsPerCluster) * g.bytesPerSector
}

func parseFAT32BootSector(b []byte) (fat32Geometry, error) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xAA {
		return fat32Geometry{}, errors.New("no boot sector signature")
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(b[o:])) }
	g := fat32Geometry{
		bytesPerSector:    le16(0x0B),
		sectorsPerCluster: int64(b[0x0D]),
		reservedSectors:   le16(0x0E),
		fatCount:          int64(b[0x10]),
		totalSectors:      le32(0x20),
		sectorsPerFAT:     le32(0x24),
		rootCluster:       uint32(le32(0x2C)),
		fsInfoSector:      le16(0x30),
		backupBootSector:  le16(0x32),
	}
	if g.bytesPerSector != 512 && g.bytesPerSector != 4096 || g.sectorsPerCluster == 0 ||
		g.fatCount == 0 || g.sectorsPerFAT == 0 || g.totalSectors <= g.firstDataSector() || g.rootCluster < 2 {
		return fat32Geometry{}, fmt.Errorf("boot sector does not describe a FAT32 (%+v)", g)
	}
	return g, nil
}

// repairFAT32 finishes a FAT32 written by go-diskfs v1.9.4, whose output
// fails `fsck.vfat -n`. On the partition (r and w address the same bytes)
// it:
//   - shrinks the volume when the FAT has fewer entries than there are data
//     clusters (go-diskfs sizes the FAT without the two reserved entries;
//     a 64 MiB volume hits this): the last clusters become unusable;
//   - points ".." of first-level directories at cluster 0, as the spec
//     says for the root's children (go-diskfs writes the root's cluster);
//   - frees the cluster go-diskfs gives an empty file (an empty file must
//     have cluster 0);
//   - fills in the FSInfo free cluster count (go-diskfs leaves "unknown");
//   - sets every directory entry timestamp to epoch (go-diskfs uses the
//     clock) and the volume serial to id.
func repairFAT32(r io.ReaderAt, w io.WriterAt, epoch time.Time, id uint32) error {
	boot := make([]byte, 512)
	if _, err := r.ReadAt(boot, 0); err != nil {
		return fmt.Errorf("read boot sector: %w", err)
	}
	g, err := parseFAT32BootSector(boot)
	if err != nil {
		return err
	}
	fatBytes := make([]byte, g.sectorsPerFAT*g.bytesPerSector)
	if _, err := r.ReadAt(fatBytes, g.reservedSectors*g.bytesPerSector); err != nil {
		return fmt.Errorf("read FAT: %w", err)
	}
	if entries := int64(len(fatBytes) / 4); g.clusterCount()+2 > entries {
		g.totalSectors = g.firstDataSector() + (entries-2)*g.sectorsPerCluster
	}
	if g.clusterCount() < fat32MinClusters {
		return fmt.Errorf("FAT32 has %d clusters, fewer than the %d FAT32 needs; raise the ESP size", g.clusterCount(), fat32MinClusters)
	}
	fix := &fatDirFixer{r: r, w: w, g: g, fat: fatBytes, visited: map[uint32]bool{}}
	fix.date, fix.time, fix.tenths = dosDateTime(epoch)
	if err := fix.walk(g.rootCluster, 0, true); err != nil {
		return err
	}
	if fix.fatChanged {
		for i := int64(0); i < g.fatCount; i++ {
			if _, err := w.WriteAt(fatBytes, (g.reservedSectors+i*g.sectorsPerFAT)*g.bytesPerSector); err != nil {
				return fmt.Errorf("write FAT %d: %w", i+1, err)
			}
		}
	}
	free, err := countFreeClusters(fatBytes, g)
	if err != nil {
		return err
	}

	binary.LittleEndian.PutUint32(boot[0x20:], uint32(g.totalSectors))
	binary.LittleEndian.PutUint32(boot[0x43:], id)
	for _, sector := range []int64{0, g.backupBootSector} {
		if _, err := w.WriteAt(boot, sector*g.bytesPerSector); err != nil {
			return fmt.Errorf("write boot sector %d: %w", sector, err)
		}
	}
	return writeFSInfo(r, w, g, free)
}

// countFreeClusters counts free entries and checks that every chain link
// stays inside the (possibly shrunk) volume.
func countFreeClusters(fat []byte, g fat32Geometry) (uint32, error) {
	last := uint32(g.clusterCount() + 1)
	var free uint32
	for c := uint32(2); c <= last; c++ {
		v := binary.LittleEndian.Uint32(fat[4*c:]) & fatEntryMask
		switch {
		case v == 0:
			free++
		case v < fatBadCluster && (v < 2 || v > last):
			return 0, fmt.Errorf("FAT entry of cluster %d points to cluster %d, outside the volume", c, v)
		}
	}
	return free, nil
}

func writeFSInfo(r io.ReaderAt, w io.WriterAt, g fat32Geometry, free uint32) error {
	sector := make([]byte, 512)
	if _, err := r.ReadAt(sector, g.fsInfoSector*g.bytesPerSector); err != nil {
		return fmt.Errorf("read FSInfo: %w", err)
	}
	if binary.LittleEndian.Uint32(sector[0:]) != fsInfoLeadSig || binary.LittleEndian.Uint32(sector[484:]) != fsInfoStructSig {
		return errors.New("FSInfo sector has no signature")
	}
	binary.LittleEndian.PutUint32(sector[488:], free)
	binary.LittleEndian.PutUint32(sector[492:], fsInfoUnknown) // no allocation hint
	copies := []int64{g.fsInfoSector}
	if g.backupBootSector > 0 {
		copies = append(copies, g.backupBootSector+g.fsInfoSector)
	}
	for _, s := range copies {
		if _, err := w.WriteAt(sector, s*g.bytesPerSector); err != nil {
			return fmt.Errorf("write FSInfo sector %d: %w", s, err)
		}
	}
	return nil
}

// dosDateTime encodes t (taken as UTC, FAT has no zone) in the FAT
// date, time (2 s units) and creation tenths (10 ms units, 0..199) fields.
func dosDateTime(t time.Time) (date, clock uint16, tenths uint8) {
	t = t.UTC()
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	clock = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	tenths = uint8(t.Second()%2*100 + t.Nanosecond()/10_000_000)
	return date, clock, tenths
}

// fatDirFixer walks the directory tree, rewriting entries in place.
type fatDirFixer struct {
	r       io.ReaderAt
	w       io.WriterAt
	g       fat32Geometry
	fat     []byte
	visited map[uint32]bool
	// fatChanged is set when clusters were freed and the FAT copies must
	// be written back.
	fatChanged bool
	date       uint16
	time       uint16
	tenths     uint8
}

// chain follows the FAT from cluster first.
func (f *fatDirFixer) chain(first uint32) ([]uint32, error) {
	last := uint32(f.g.clusterCount() + 1)
	var out []uint32
	for c := first; ; {
		if c < 2 || c > last {
			return nil, fmt.Errorf("directory cluster chain from %d reaches invalid cluster %d", first, c)
		}
		if len(out) > int(last) {
			return nil, fmt.Errorf("directory cluster chain from %d loops", first)
		}
		out = append(out, c)
		next := binary.LittleEndian.Uint32(f.fat[4*c:]) & fatEntryMask
		if next >= fatBadCluster {
			return out, nil
		}
		c = next
	}
}

// walk fixes the directory at cluster dir. parent is the cluster ".."
// must name: 0 for the root and its children.
func (f *fatDirFixer) walk(dir, parent uint32, isRoot bool) error {
	if f.visited[dir] {
		return fmt.Errorf("directory cluster %d is reachable twice", dir)
	}
	f.visited[dir] = true
	clusters, err := f.chain(dir)
	if err != nil {
		return err
	}
	// Children's ".." names this directory, or 0 when this is the root.
	self := dir
	if isRoot {
		self = 0
	}
	var subdirs []uint32
	buf := make([]byte, f.g.clusterBytes())
	for _, c := range clusters {
		off := f.g.clusterOffset(c)
		if _, err := f.r.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read directory cluster %d: %w", c, err)
		}
		end := false
		for i := 0; i < len(buf) && !end; i += dirEntrySize {
			e := buf[i : i+dirEntrySize]
			switch {
			case e[0] == 0x00:
				end = true
				continue
			case e[0] == 0xE5 || e[11] == attrLongName:
				continue // deleted, or a long name part (which has no times)
			}
			f.stamp(e)
			if e[11]&attrDirectory == 0 {
				if err := f.freeIfEmpty(e); err != nil {
					return err
				}
				continue
			}
			switch string(e[0:11]) {
			case ".          ":
				setEntryCluster(e, dir)
			case "..         ":
				setEntryCluster(e, parent)
			default:
				subdirs = append(subdirs, entryCluster(e))
			}
		}
		if _, err := f.w.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write directory cluster %d: %w", c, err)
		}
		if end {
			break
		}
	}
	for _, sub := range subdirs {
		if err := f.walk(sub, self, false); err != nil {
			return err
		}
	}
	return nil
}

func (f *fatDirFixer) stamp(e []byte) {
	e[0x0D] = f.tenths
	binary.LittleEndian.PutUint16(e[0x0E:], f.time) // created
	binary.LittleEndian.PutUint16(e[0x10:], f.date)
	binary.LittleEndian.PutUint16(e[0x12:], f.date) // accessed
	binary.LittleEndian.PutUint16(e[0x16:], f.time) // written
	binary.LittleEndian.PutUint16(e[0x18:], f.date)
}

func entryCluster(e []byte) uint32 {
	return uint32(binary.LittleEndian.Uint16(e[0x14:]))<<16 | uint32(binary.LittleEndian.Uint16(e[0x1A:]))
}

func setEntryCluster(e []byte, c uint32) {
	binary.LittleEndian.PutUint16(e[0x14:], uint16(c>>16))
	binary.LittleEndian.PutUint16(e[0x1A:], uint16(c))
}

// freeIfEmpty releases the clusters of a zero-length file entry.
func (f *fatDirFixer) freeIfEmpty(e []byte) error {
	first := entryCluster(e)
	if binary.LittleEndian.Uint32(e[0x1C:]) != 0 || first == 0 || e[11]&attrVolumeID != 0 {
		return nil // has data, has no cluster, or is the volume label
	}
	clusters, err := f.chain(first)
	if err != nil {
		return err
	}
	for _, c := range clusters {
		binary.LittleEndian.PutUint32(f.fat[4*c:], 0)
	}
	setEntryCluster(e, 0)
	f.fatChanged = true
	return nil
}
