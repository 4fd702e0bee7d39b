package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

// writeState creates the empty ext4 of the state partition with go-diskfs,
// then pins what go-diskfs takes from the clock and from crypto/rand.
func writeState(d *disk.Disk, img io.ReaderAt, start, size int64, s Spec) error {
	id, err := uuid.Parse(s.StateUUID)
	if err != nil {
		return fmt.Errorf("state filesystem UUID %q: %w", s.StateUUID, err)
	}
	if err := createExt4(d.Backend, start, size, id); err != nil {
		return err
	}
	w, ok := img.(io.WriterAt)
	if !ok {
		return errors.New("disk image is not writable")
	}
	return pinExt4(io.NewSectionReader(img, start, size), io.NewOffsetWriter(w, start), s.Epoch, hashSeed(id))
}

// stateLostFound is the directory e2fsck puts reconnected files in.
const stateLostFound = "lost+found"

// createExt4 makes the state filesystem with go-diskfs: 4 KiB blocks, the
// features mke2fs gives ext4 except the resize inode, and /lost+found.
func createExt4(b backend.Storage, start, size int64, id uuid.UUID) error {
	params := &ext4.Params{
		UUID:       &id,
		VolumeName: layout.LabelState,
		// 4 KiB blocks: go-diskfs picks 1 KiB below 512 MiB, and the block
		// size stays when the initrd grows the filesystem to the disk
		// (terabytes on bare metal): 1 KiB blocks mean 8 MiB block groups,
		// a quarter million of them per 2 TiB, and blocks below page size.
		SectorsPerBlock: 4096 / sectorSize,
		Features: []ext4.FeatureOpt{
			// go-diskfs v1.9.4 writes a resize inode that e2fsck calls "not
			// valid" (and then refuses to preen); without one the
			// filesystem is clean and the initrd still grows it offline
			// with resize2fs.
			ext4.WithFeatureReservedGDTBlocksForExpansion(false),
			// The rest of what mke2fs gives ext4 and go-diskfs leaves out.
			// metadata_csum matters most: with group checksums resize2fs
			// may leave the groups it adds uninitialised for the kernel to
			// zero lazily (it does when /sys/fs/ext4/features/
			// lazy_itable_init exists or RESIZE2FS_FORCE_LAZY_ITABLE_INIT=1):
			// growing a 1 GiB image to 100 GiB then writes 9 MiB instead
			// of 3.2 GiB of inode tables, and e2fsck skips unused groups.
			ext4.WithFeatureMetadataChecksums(true),
			ext4.WithFeatureDirectoryIndices(true),       // dir_index: hashed lookups in big directories
			ext4.WithFeatureLargeSubdirectoryCount(true), // dir_nlink: more than 65000 subdirectories
			ext4.WithFeatureLargeInodes(true),            // extra_isize: room for nanosecond times
		},
	}
	fs, err := ext4.Create(b, size, start, sectorSize, params)
	if err != nil {
		return fmt.Errorf("create ext4: %w", err)
	}
	// e2fsck -p creates a missing /lost+found and exits 1 ("errors
	// corrected"). go-diskfs gives it one block where mke2fs gives 16 KiB;
	// e2fsck makes it one block too, and grows it when it fills up.
	if err := fs.Mkdir(stateLostFound); err != nil {
		return fmt.Errorf("create /%s: %w", stateLostFound, err)
	}
	if err := fs.Chmod(stateLostFound, 0o700); err != nil {
		return fmt.Errorf("chmod /%s: %w", stateLostFound, err)
	}
	return nil
}

// hashSeed derives the htree hash seed from the filesystem UUID: stable
// across builds, different between filesystems.
func hashSeed(id uuid.UUID) [16]byte {
	h := sha256.Sum256(append([]byte("berth ext4 hash seed\x00"), id[:]...))
	var seed [16]byte
	copy(seed[:], h[:16])
	return seed
}

// ext4 on-disk offsets (Documentation/filesystems/ext4 in the kernel).
const (
	ext4SuperblockOffset = 1024
	ext4SuperblockSize   = 1024
	ext4Magic            = 0xEF53

	sbBlocksCountLo   = 0x04
	sbFirstDataBlock  = 0x14
	sbLogBlockSize    = 0x18
	sbBlocksPerGroup  = 0x20
	sbInodesPerGroup  = 0x28
	sbMountTime       = 0x2C
	sbWriteTime       = 0x30
	sbMagic           = 0x38
	sbLastCheck       = 0x40
	sbFirstIno        = 0x54
	sbInodeSize       = 0x58
	sbBlockGroupNr    = 0x5A
	sbFeatureCompat   = 0x5C
	sbFeatureIncompat = 0x60
	sbFeatureROCompat = 0x64
	sbUUID            = 0x68
	sbLastMounted     = 0x88
	sbJournalInum     = 0xE0
	sbHashSeed        = 0xEC
	sbJnlBackupType   = 0xFD
	sbDescSize        = 0xFE
	sbMkfsTime        = 0x108
	sbJnlBlocks       = 0x10C
	sbBlocksCountHi   = 0x150
	sbFlags           = 0x160
	sbBackupBGs       = 0x24C
	sbChecksumSeed    = 0x270
	sbWriteTimeHi     = 0x274
	sbMountTimeHi     = 0x275
	sbMkfsTimeHi      = 0x276
	sbLastCheckHi     = 0x277
	sbChecksum        = 0x3FC

	compatHasJournal     = 0x4
	compatDirIndex       = 0x20
	compatSparseSuper2   = 0x200
	incompat64Bit        = 0x80
	incompatCsumSeed     = 0x2000
	roCompatSparseSuper  = 0x1
	roCompatMetadataCsum = 0x400

	gdInodeTableLo = 0x08
	gdInodeTableHi = 0x28

	flagSignedHash  = 0x1 // EXT2_FLAGS_SIGNED_HASH in s_flags
	jnlBackupBlocks = 1   // EXT3_JNL_BACKUP_BLOCKS: s_jnl_blocks holds i_block
	jnlBackupSize   = 17 * 4

	inodeMode        = 0x00
	inodeSizeLo      = 0x04
	inodeAtime       = 0x08
	inodeCtime       = 0x0C
	inodeMtime       = 0x10
	inodeLinks       = 0x1A
	inodeBlock       = 0x28
	inodeBlockSize   = 60 // i_block: 15 words, the extent tree root
	inodeGeneration  = 0x64
	inodeSizeHigh    = 0x6C
	inodeChecksumLo  = 0x7C
	inodeGoodOldSize = 0x80 // end of the base inode; i_extra_isize follows
	inodeExtraIsize  = 0x80
	inodeChecksumHi  = 0x82
	inodeCtimeExtra  = 0x84
	inodeMtimeExtra  = 0x88
	inodeAtimeExtra  = 0x8C
	inodeCrtime      = 0x90
	inodeCrtimeExtra = 0x94
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is ext4's crc32c_le: seeded, without the final inversion.
func crc32c(seed uint32, b []byte) uint32 { return ^crc32.Update(^seed, castagnoli, b) }

// ext4Geometry is what pinExt4 needs from the superblock.
type ext4Geometry struct {
	blockSize      int64
	firstDataBlock int64
	blocksPerGroup int64
	groups         int64
	inodesPerGroup int64
	inodeSize      int64
	firstIno       int64
	descSize       int64
	compat         uint32
	incompat       uint32
	roCompat       uint32
	backupBGs      [2]uint32
}

func parseExt4Superblock(sb []byte) (ext4Geometry, error) {
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(sb[o:]) }
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(sb[o:]) }
	if le16(sbMagic) != ext4Magic {
		return ext4Geometry{}, errors.New("no ext4 superblock magic")
	}
	g := ext4Geometry{
		blockSize:      1024 << le32(sbLogBlockSize),
		firstDataBlock: int64(le32(sbFirstDataBlock)),
		blocksPerGroup: int64(le32(sbBlocksPerGroup)),
		inodesPerGroup: int64(le32(sbInodesPerGroup)),
		inodeSize:      int64(le16(sbInodeSize)),
		firstIno:       int64(le32(sbFirstIno)),
		descSize:       32,
		compat:         le32(sbFeatureCompat),
		incompat:       le32(sbFeatureIncompat),
		roCompat:       le32(sbFeatureROCompat),
		backupBGs:      [2]uint32{le32(sbBackupBGs), le32(sbBackupBGs + 4)},
	}
	blocks := int64(le32(sbBlocksCountLo))
	if g.incompat&incompat64Bit != 0 {
		blocks |= int64(le32(sbBlocksCountHi)) << 32
		g.descSize = int64(le16(sbDescSize))
	}
	if g.blockSize > 65536 || g.blocksPerGroup == 0 || g.inodeSize < 128 || g.inodesPerGroup < g.firstIno || g.descSize < 32 {
		return ext4Geometry{}, fmt.Errorf("implausible ext4 superblock (%+v)", g)
	}
	g.groups = (blocks - g.firstDataBlock + g.blocksPerGroup - 1) / g.blocksPerGroup
	return g, nil
}

// hasSuperblock reports whether block group n carries a superblock copy.
func (g ext4Geometry) hasSuperblock(n int64) bool {
	switch {
	case n == 0:
		return true
	case g.compat&compatSparseSuper2 != 0:
		return n == int64(g.backupBGs[0]) || n == int64(g.backupBGs[1])
	case g.roCompat&roCompatSparseSuper == 0:
		return true
	case n == 1:
		return true
	}
	for _, base := range []int64{3, 5, 7} {
		p := base
		for p < n {
			p *= base
		}
		if p == n {
			return true
		}
	}
	return false
}

// superblockOffset is the byte offset of group n's superblock copy.
func (g ext4Geometry) superblockOffset(n int64) int64 {
	if n == 0 {
		return ext4SuperblockOffset
	}
	return (n*g.blocksPerGroup + g.firstDataBlock) * g.blockSize
}

// pinExt4 finishes a fresh go-diskfs ext4 on the partition (r and w
// address the same bytes):
//
//   - Reproducibility. go-diskfs v1.9.4 sets the superblock times (mount
//     time included) and the times of the inodes it creates to time.Now(),
//     and draws the htree hash seed from crypto/rand, with no parameter for
//     either. This sets those times to epoch in every superblock copy and
//     in the in-use inodes of group 0 (the only inodes mkfs creates), and
//     sets the hash seed (no directory is indexed yet, so nothing hashed
//     with the old seed exists).
//   - Completeness. go-diskfs marks the superblock as holding a backup of
//     the journal inode's block map but leaves the backup empty (e2fsck -p
//     fills it in and exits 1), and leaves s_block_group_nr 0 in backup
//     superblocks. This fills both in as mke2fs does.
//
// The inode and superblock checksums the changes invalidate are recomputed.
func pinExt4(r io.ReaderAt, w io.WriterAt, epoch time.Time, seed [16]byte) error {
	primary := make([]byte, ext4SuperblockSize)
	if _, err := r.ReadAt(primary, ext4SuperblockOffset); err != nil {
		return fmt.Errorf("read ext4 superblock: %w", err)
	}
	g, err := parseExt4Superblock(primary)
	if err != nil {
		return err
	}
	table, err := inodeTableOfGroup0(r, g)
	if err != nil {
		return err
	}
	if err := pinInodes(r, w, g, table, primary, epoch); err != nil {
		return err
	}
	fix := superblockFix{epoch: epoch, hashSeed: seed}
	if fix.journalBackup, err = journalBackup(r, g, table, primary); err != nil {
		return err
	}
	sb := make([]byte, ext4SuperblockSize)
	for n := int64(0); n < g.groups; n++ {
		if !g.hasSuperblock(n) {
			continue
		}
		off := g.superblockOffset(n)
		if _, err := r.ReadAt(sb, off); err != nil {
			return fmt.Errorf("read superblock copy of group %d: %w", n, err)
		}
		// go-diskfs leaves s_block_group_nr 0 in backups, so the copy is
		// recognised by its magic and the filesystem's UUID.
		if binary.LittleEndian.Uint16(sb[sbMagic:]) != ext4Magic || !bytes.Equal(sb[sbUUID:sbUUID+16], primary[sbUUID:sbUUID+16]) {
			return fmt.Errorf("group %d has no superblock copy at byte %d", n, off)
		}
		fix.apply(sb, g, n)
		if _, err := w.WriteAt(sb, off); err != nil {
			return fmt.Errorf("write superblock copy of group %d: %w", n, err)
		}
	}
	return nil
}

// superblockFix is what pinExt4 writes into every superblock copy.
type superblockFix struct {
	epoch         time.Time
	hashSeed      [16]byte
	journalBackup []byte // s_jnl_blocks; nil when there is no internal journal
}

// apply fixes sb, the superblock copy of group n.
func (f superblockFix) apply(sb []byte, g ext4Geometry, n int64) {
	sec := f.epoch.Unix()
	for _, t := range []struct {
		lo, hi int
		t      int64
	}{
		// 0 is "never mounted", as mke2fs writes; go-diskfs claims a mount
		// at creation time.
		{sbMountTime, sbMountTimeHi, 0},
		{sbWriteTime, sbWriteTimeHi, sec},
		{sbLastCheck, sbLastCheckHi, sec},
		{sbMkfsTime, sbMkfsTimeHi, sec},
	} {
		binary.LittleEndian.PutUint32(sb[t.lo:], uint32(t.t))
		sb[t.hi] = byte(t.t >> 32)
	}
	copy(sb[sbHashSeed:sbHashSeed+16], f.hashSeed[:])
	// Without a hint the first kernel to mount the filesystem records its
	// own char signedness (e2fsck -p adds it too); x86 mke2fs writes
	// "signed". Pinned so every reader hashes names the same way.
	if g.compat&compatDirIndex != 0 {
		binary.LittleEndian.PutUint32(sb[sbFlags:], binary.LittleEndian.Uint32(sb[sbFlags:])|flagSignedHash)
	}
	// go-diskfs records a mount on "/" that never happened; mke2fs leaves
	// the field empty.
	clear(sb[sbLastMounted : sbLastMounted+64])
	// Tools that fall back to a backup superblock (e2fsck -b) expect it
	// to name its own group.
	binary.LittleEndian.PutUint16(sb[sbBlockGroupNr:], uint16(n))
	if f.journalBackup != nil {
		copy(sb[sbJnlBlocks:sbJnlBlocks+jnlBackupSize], f.journalBackup)
		sb[sbJnlBackupType] = jnlBackupBlocks
	}
	if g.roCompat&roCompatMetadataCsum != 0 {
		binary.LittleEndian.PutUint32(sb[sbChecksum:], crc32c(^uint32(0), sb[:sbChecksum]))
	}
}

// inodeTableOfGroup0 returns the first block of group 0's inode table.
func inodeTableOfGroup0(r io.ReaderAt, g ext4Geometry) (int64, error) {
	gd := make([]byte, g.descSize)
	if _, err := r.ReadAt(gd, (g.firstDataBlock+1)*g.blockSize); err != nil {
		return 0, fmt.Errorf("read group descriptor 0: %w", err)
	}
	table := int64(binary.LittleEndian.Uint32(gd[gdInodeTableLo:]))
	if g.descSize >= 64 {
		table |= int64(binary.LittleEndian.Uint32(gd[gdInodeTableHi:])) << 32
	}
	return table, nil
}

// journalBackup returns the superblock's copy of the journal inode's block
// map (s_jnl_blocks): i_block in words 0..14, then i_size_high and i_size.
// e2fsck uses it to find the journal when the inode is damaged. It returns
// nil when the filesystem has no journal inode.
func journalBackup(r io.ReaderAt, g ext4Geometry, table int64, sb []byte) ([]byte, error) {
	n := int64(binary.LittleEndian.Uint32(sb[sbJournalInum:]))
	if g.compat&compatHasJournal == 0 || n == 0 {
		return nil, nil
	}
	if n > g.inodesPerGroup {
		return nil, fmt.Errorf("journal inode %d is not in group 0, where mkfs puts it", n)
	}
	ino := make([]byte, g.inodeSize)
	if _, err := r.ReadAt(ino, table*g.blockSize+(n-1)*g.inodeSize); err != nil {
		return nil, fmt.Errorf("read journal inode %d: %w", n, err)
	}
	b := make([]byte, jnlBackupSize)
	copy(b, ino[inodeBlock:inodeBlock+inodeBlockSize])
	copy(b[inodeBlockSize:], ino[inodeSizeHigh:inodeSizeHigh+4])
	copy(b[inodeBlockSize+4:], ino[inodeSizeLo:inodeSizeLo+4])
	return b, nil
}

// pinInodes rewrites the times of in-use inodes 1..first_ino (the reserved
// inodes and lost+found, all in group 0).
func pinInodes(r io.ReaderAt, w io.WriterAt, g ext4Geometry, table int64, sb []byte, epoch time.Time) error {
	csumSeed := crc32c(^uint32(0), sb[sbUUID:sbUUID+16])
	if g.incompat&incompatCsumSeed != 0 {
		csumSeed = binary.LittleEndian.Uint32(sb[sbChecksumSeed:])
	}
	ino := make([]byte, g.inodeSize)
	for n := int64(1); n <= g.firstIno; n++ {
		off := table*g.blockSize + (n-1)*g.inodeSize
		if _, err := r.ReadAt(ino, off); err != nil {
			return fmt.Errorf("read inode %d: %w", n, err)
		}
		if binary.LittleEndian.Uint16(ino[inodeMode:]) == 0 && binary.LittleEndian.Uint16(ino[inodeLinks:]) == 0 {
			continue // never allocated
		}
		pinInodeTimes(ino, epoch)
		setInodeChecksum(ino, uint32(n), csumSeed)
		if _, err := w.WriteAt(ino, off); err != nil {
			return fmt.Errorf("write inode %d: %w", n, err)
		}
	}
	return nil
}

// inodeExtra returns i_extra_isize, or 0 for 128-byte inodes.
func inodeExtra(ino []byte) int {
	if len(ino) <= inodeGoodOldSize {
		return 0
	}
	return int(binary.LittleEndian.Uint16(ino[inodeExtraIsize:]))
}

// hasExtraField reports whether the field at off (4 bytes) is inside the
// extra inode space.
func hasExtraField(ino []byte, off int) bool {
	return off+4 <= inodeGoodOldSize+inodeExtra(ino) && off+4 <= len(ino)
}

func pinInodeTimes(ino []byte, epoch time.Time) {
	sec := epoch.Unix()
	// The extra word holds 2 bits extending the seconds past 2038 and the
	// nanoseconds in the upper 30.
	extra := uint32(epoch.Nanosecond())<<2 | uint32((sec-int64(int32(sec)))>>32)&3
	for _, off := range []int{inodeAtime, inodeCtime, inodeMtime} {
		binary.LittleEndian.PutUint32(ino[off:], uint32(sec))
	}
	for _, off := range []int{inodeCtimeExtra, inodeMtimeExtra, inodeAtimeExtra, inodeCrtimeExtra} {
		if hasExtraField(ino, off) {
			binary.LittleEndian.PutUint32(ino[off:], extra)
		}
	}
	if hasExtraField(ino, inodeCrtime) {
		binary.LittleEndian.PutUint32(ino[inodeCrtime:], uint32(sec))
	}
}

// inodeChecksum is ext4's inode checksum with the checksum fields zeroed.
func inodeChecksum(ino []byte, number, csumSeed uint32) uint32 {
	b := append([]byte(nil), ino...)
	b[inodeChecksumLo], b[inodeChecksumLo+1] = 0, 0
	hasHi := len(b) > inodeGoodOldSize && inodeExtra(b) >= 4
	if hasHi {
		b[inodeChecksumHi], b[inodeChecksumHi+1] = 0, 0
	}
	var le [4]byte
	binary.LittleEndian.PutUint32(le[:], number)
	c := crc32c(csumSeed, le[:])
	c = crc32c(c, b[inodeGeneration:inodeGeneration+4])
	return crc32c(c, b)
}

func setInodeChecksum(ino []byte, number, csumSeed uint32) {
	c := inodeChecksum(ino, number, csumSeed)
	binary.LittleEndian.PutUint16(ino[inodeChecksumLo:], uint16(c))
	if len(ino) > inodeGoodOldSize && inodeExtra(ino) >= 4 {
		binary.LittleEndian.PutUint16(ino[inodeChecksumHi:], uint16(c>>16))
	}
}
