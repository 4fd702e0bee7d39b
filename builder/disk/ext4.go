package disk

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

// mke2fsConf replaces the build host's /etc/mke2fs.conf, so that the
// filesystem depends on the spec and the e2fsprogs version only. It is
// Debian 12's ext4 except for the inode ratio and the reserved blocks, and
// has no size-dependent types (the "small" type would pick 1 KiB blocks).
//
//   - 4 KiB blocks: the block size stays when the initrd grows the
//     filesystem to the disk (terabytes on bare metal).
//   - resize_inode: the GDT blocks it reserves let the kernel grow the
//     mounted filesystem (EXT4_IOC_RESIZE_FS) at first boot.
//   - metadata_csum: with group checksums the groups added by a resize
//     stay uninitialised until used, so growing to a big disk writes
//     little.
//   - one inode per 8 KiB and no blocks reserved for root: what the state
//     partition had before (container layers are many small files; every
//     writer of /var is root).
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 8192
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// writeState makes the empty ext4 of the state partition with mke2fs in a
// file of its own, then copies it into the partition at start.
func writeState(work string, img io.WriterAt, start, size int64, s Spec) error {
	id, err := uuid.Parse(s.StateUUID)
	if err != nil {
		return fmt.Errorf("state filesystem UUID %q: %w", s.StateUUID, err)
	}
	conf := filepath.Join(work, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return fmt.Errorf("write mke2fs.conf: %w", err)
	}
	fs := filepath.Join(work, "state.img")
	if err := newFile(fs, size); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	env := []string{
		"MKE2FS_CONFIG=" + conf,
		// Every time mke2fs writes (superblock, root, lost+found).
		"E2FSPROGS_FAKE_TIME=" + strconv.FormatInt(s.Epoch.Unix(), 10),
	}
	// -T ext4: the only usage type the configuration defines.
	// hash_seed: random otherwise. nodiscard, assume_storage_prezeroed:
	// the file is a fresh hole, so mke2fs neither discards nor zeroes it
	// and marks the inode tables zeroed; what it writes (and counts in
	// "Lifetime writes") does not depend on the build host's filesystem.
	if err := runTool(env, "mke2fs", "-q", "-F", "-t", "ext4", "-T", "ext4",
		"-L", layout.LabelState, "-U", id.String(),
		"-E", "hash_seed="+hashSeed(id).String()+",root_owner=0:0,nodiscard,assume_storage_prezeroed=1",
		fs); err != nil {
		return err
	}
	return copyInto(img, start, fs, size)
}

// hashSeed derives the htree hash seed from the filesystem UUID: stable
// across builds, different between filesystems.
func hashSeed(id uuid.UUID) uuid.UUID {
	h := sha256.Sum256(append([]byte("berth ext4 hash seed\x00"), id[:]...))
	var seed uuid.UUID
	copy(seed[:], h[:16])
	return seed
}
