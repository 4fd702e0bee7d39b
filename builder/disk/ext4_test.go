package disk

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/google/uuid"
)

// freshExt4 returns the bytes of an ext4 made by go-diskfs, untouched.
func freshExt4(t *testing.T, size int64) (*os.File, ext4Geometry, []byte) {
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
	id := uuid.MustParse("3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b")
	if _, err := ext4.Create(file.New(f, false), size, 0, sectorSize, &ext4.Params{UUID: &id}); err != nil {
		t.Fatal(err)
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

// Our inode checksum must match what go-diskfs writes, or the repaired
// inodes would carry checksums no reader agrees with.
func TestInodeChecksumMatchesGoDiskfs(t *testing.T) {
	for _, size := range []int64{32 * MiB, 256 * MiB} {
		f, g, sb := freshExt4(t, size)
		gd := make([]byte, g.descSize)
		if _, err := f.ReadAt(gd, (g.firstDataBlock+1)*g.blockSize); err != nil {
			t.Fatal(err)
		}
		table := int64(binary.LittleEndian.Uint32(gd[gdInodeTableLo:]))
		seed := crc32c(^uint32(0), sb[sbUUID:sbUUID+16])
		ino := make([]byte, g.inodeSize)
		if _, err := f.ReadAt(ino, table*g.blockSize+g.inodeSize); err != nil { // inode 2, the root
			t.Fatal(err)
		}
		stored := uint32(binary.LittleEndian.Uint16(ino[inodeChecksumLo:])) | uint32(binary.LittleEndian.Uint16(ino[inodeChecksumHi:]))<<16
		if got := inodeChecksum(ino, 2, seed); got != stored {
			t.Errorf("%d MiB: root inode checksum %08x, go-diskfs stored %08x", size/MiB, got, stored)
		}
	}
}

func TestPinExt4SetsEveryCopy(t *testing.T) {
	f, g, _ := freshExt4(t, 256*MiB)
	epoch := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	seed := hashSeed(uuid.MustParse("3f1e2d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"))
	if err := pinExt4(f, f, epoch, seed); err != nil {
		t.Fatal(err)
	}
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
			if v := binary.LittleEndian.Uint32(sb[off:]); int64(v) != epoch.Unix() {
				t.Errorf("group %d: time at %#x is %d, want %d", n, off, v, epoch.Unix())
			}
		}
		if string(sb[sbHashSeed:sbHashSeed+16]) != string(seed[:]) {
			t.Errorf("group %d: hash seed not set", n)
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
