// Package gpt reads a GUID Partition Table and grows its last partition to
// the end of an enlarged disk. It works on any io.ReaderAt/io.WriterAt, so
// the same code runs on /dev/vda in the initrd and on image files in tests.
package gpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

const (
	signature      = "EFI PART"
	headerSize     = 92
	minEntrySize   = 128
	maxEntries     = 1024 // far above the usual 128; bounds allocations on garbage
	mbrTypeGPTProt = 0xEE
)

// Header is the part of a GPT header this package uses.
type Header struct {
	MyLBA, AlternateLBA           uint64
	FirstUsableLBA, LastUsableLBA uint64
	DiskGUID                      string
	EntriesLBA                    uint64
	NumEntries, EntrySize         uint32
	raw                           []byte // the whole sector, to keep unknown fields when rewriting
}

// Partition is one used GPT entry.
type Partition struct {
	Number            int // 1-based, as the kernel names it (vda2 is Number 2)
	TypeGUID, GUID    string
	FirstLBA, LastLBA uint64
	Attributes        uint64
	Name              string
}

// Table is a validated GPT.
type Table struct {
	SectorSize int
	Sectors    uint64 // disk size in sectors
	Primary    Header
	Partitions []Partition
	entries    []byte // raw entry array
	fromBackup bool   // the primary was damaged: Grow rewrites it
}

// ErrNoGPT reports a disk whose primary and backup headers both lack the
// GPT signature, e.g. an unpartitioned or MBR disk.
var ErrNoGPT = errors.New("no GPT signature")

// Read reads and checks the primary GPT (header and entry-array CRCs). If
// the primary is damaged it falls back to the backup in the last sector.
func Read(r io.ReaderAt, size int64, sectorSize int) (*Table, error) {
	if sectorSize < 512 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("sector size %d: want a power of two >= 512", sectorSize)
	}
	sectors := uint64(size) / uint64(sectorSize)
	if sectors < 3 {
		return nil, fmt.Errorf("disk of %d bytes is too small for a GPT", size)
	}
	t, errPrimary := readAt(r, 1, sectors, sectorSize)
	if errPrimary == nil {
		return t, nil
	}
	t, errBackup := readAt(r, sectors-1, sectors, sectorSize)
	if errBackup == nil {
		return t, nil
	}
	if errors.Is(errPrimary, ErrNoGPT) && errors.Is(errBackup, ErrNoGPT) {
		return nil, ErrNoGPT
	}
	return nil, fmt.Errorf("primary GPT: %w; backup GPT: %v", errPrimary, errBackup)
}

func readAt(r io.ReaderAt, lba, sectors uint64, sectorSize int) (*Table, error) {
	sec := make([]byte, sectorSize)
	if _, err := r.ReadAt(sec, int64(lba)*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
	}
	h, err := parseHeader(sec, lba, sectors)
	if err != nil {
		return nil, err
	}
	arr := make([]byte, int(h.NumEntries)*int(h.EntrySize))
	if _, err := r.ReadAt(arr, int64(h.EntriesLBA)*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("read GPT entries at LBA %d: %w", h.EntriesLBA, err)
	}
	if got, want := crc32.ChecksumIEEE(arr), binary.LittleEndian.Uint32(sec[88:]); got != want {
		return nil, fmt.Errorf("GPT entry array CRC %08x, header says %08x", got, want)
	}
	t := &Table{SectorSize: sectorSize, Sectors: sectors, Primary: h, entries: arr}
	for i := 0; i < int(h.NumEntries); i++ {
		e := arr[i*int(h.EntrySize):]
		p := Partition{
			Number:     i + 1,
			TypeGUID:   guidString(e[0:16]),
			GUID:       guidString(e[16:32]),
			FirstLBA:   binary.LittleEndian.Uint64(e[32:]),
			LastLBA:    binary.LittleEndian.Uint64(e[40:]),
			Attributes: binary.LittleEndian.Uint64(e[48:]),
			Name:       decodeName(e[56:128]),
		}
		if isZero(e[0:16]) {
			continue
		}
		if p.FirstLBA > p.LastLBA || p.FirstLBA < h.FirstUsableLBA || p.LastLBA > h.LastUsableLBA {
			return nil, fmt.Errorf("GPT partition %d spans LBA %d-%d, outside the usable %d-%d", p.Number, p.FirstLBA, p.LastLBA, h.FirstUsableLBA, h.LastUsableLBA)
		}
		t.Partitions = append(t.Partitions, p)
	}
	if lba != 1 {
		// Read from the backup: describe it as a primary so a rewrite
		// restores a proper primary.
		t.Primary.MyLBA, t.Primary.AlternateLBA = 1, lba
		t.Primary.EntriesLBA = 2
		t.fromBackup = true
	}
	return t, nil
}

func parseHeader(sec []byte, lba, sectors uint64) (Header, error) {
	if string(sec[0:8]) != signature {
		return Header{}, fmt.Errorf("LBA %d: %w", lba, ErrNoGPT)
	}
	hs := binary.LittleEndian.Uint32(sec[12:])
	if hs < headerSize || int(hs) > len(sec) {
		return Header{}, fmt.Errorf("GPT header at LBA %d: size %d is invalid", lba, hs)
	}
	hdr := append([]byte(nil), sec[:hs]...)
	want := binary.LittleEndian.Uint32(hdr[16:])
	binary.LittleEndian.PutUint32(hdr[16:], 0)
	if got := crc32.ChecksumIEEE(hdr); got != want {
		return Header{}, fmt.Errorf("GPT header at LBA %d: CRC %08x, header says %08x", lba, got, want)
	}
	h := Header{
		MyLBA:          binary.LittleEndian.Uint64(sec[24:]),
		AlternateLBA:   binary.LittleEndian.Uint64(sec[32:]),
		FirstUsableLBA: binary.LittleEndian.Uint64(sec[40:]),
		LastUsableLBA:  binary.LittleEndian.Uint64(sec[48:]),
		DiskGUID:       guidString(sec[56:72]),
		EntriesLBA:     binary.LittleEndian.Uint64(sec[72:]),
		NumEntries:     binary.LittleEndian.Uint32(sec[80:]),
		EntrySize:      binary.LittleEndian.Uint32(sec[84:]),
		raw:            append([]byte(nil), sec...),
	}
	switch {
	case h.MyLBA != lba:
		return Header{}, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, h.MyLBA)
	case h.EntrySize < minEntrySize || h.EntrySize%8 != 0 || h.NumEntries == 0 || h.NumEntries > maxEntries:
		return Header{}, fmt.Errorf("GPT header at LBA %d: %d entries of %d bytes is invalid", lba, h.NumEntries, h.EntrySize)
	case h.FirstUsableLBA > h.LastUsableLBA || h.LastUsableLBA >= sectors || h.EntriesLBA >= sectors:
		return Header{}, fmt.Errorf("GPT header at LBA %d: usable LBA %d-%d or entries at %d do not fit a disk of %d sectors", lba, h.FirstUsableLBA, h.LastUsableLBA, h.EntriesLBA, sectors)
	}
	return h, nil
}

// Partition returns the entry with the given 1-based number.
func (t *Table) Partition(number int) (Partition, bool) {
	for _, p := range t.Partitions {
		if p.Number == number {
			return p, true
		}
	}
	return Partition{}, false
}

// ByGUID returns the partition whose unique GUID is guid (any case).
func (t *Table) ByGUID(guid string) (Partition, bool) {
	for _, p := range t.Partitions {
		if strings.EqualFold(p.GUID, guid) {
			return p, true
		}
	}
	return Partition{}, false
}

// entrySectors is how many sectors the entry array takes.
func (t *Table) entrySectors() uint64 {
	n := uint64(len(t.entries))
	s := uint64(t.SectorSize)
	return (n + s - 1) / s
}

// Growth describes what Grow did or would do.
type Growth struct {
	Number                 int
	OldLastLBA, NewLastLBA uint64
	BackupMoved            bool // the backup header was not in the last sector
}

// Changed reports whether anything was written.
func (g Growth) Changed() bool { return g.BackupMoved || g.NewLastLBA != g.OldLastLBA }

// Grow moves the backup GPT to the end of the disk and extends partition
// number to the last usable LBA, its end rounded down to align bytes. The
// partition must be the last one on the disk: growing never moves data.
// Nothing is written when the table already fits the disk.
func (t *Table) Grow(w io.WriterAt, number int, align int64) (Growth, error) {
	p, ok := t.Partition(number)
	if !ok {
		return Growth{}, fmt.Errorf("grow: no GPT partition %d", number)
	}
	for _, o := range t.Partitions {
		if o.Number != number && o.LastLBA > p.LastLBA {
			return Growth{}, fmt.Errorf("grow: partition %d is not the last one (partition %d ends later)", number, o.Number)
		}
	}
	if align < int64(t.SectorSize) || align%int64(t.SectorSize) != 0 {
		return Growth{}, fmt.Errorf("grow: alignment %d is not a multiple of the %d-byte sector", align, t.SectorSize)
	}
	last := t.Sectors - 1
	backupEntries := last - t.entrySectors()
	lastUsable := backupEntries - 1
	alignSectors := uint64(align) / uint64(t.SectorSize)
	newEnd := (lastUsable+1)/alignSectors*alignSectors - 1
	if newEnd < p.LastLBA {
		newEnd = p.LastLBA // never shrink; alignment may round below the old end
	}
	g := Growth{Number: number, OldLastLBA: p.LastLBA, NewLastLBA: newEnd, BackupMoved: t.Primary.AlternateLBA != last}
	if lastUsable < t.Primary.LastUsableLBA {
		return Growth{}, fmt.Errorf("grow: disk of %d sectors is smaller than the GPT says (last usable LBA %d)", t.Sectors, t.Primary.LastUsableLBA)
	}
	if !g.Changed() && t.Primary.LastUsableLBA == lastUsable && !t.fromBackup {
		return g, nil
	}
	oldBackup := t.Primary.AlternateLBA

	e := t.entries[(number-1)*int(t.Primary.EntrySize):]
	binary.LittleEndian.PutUint64(e[40:], newEnd)
	arrCRC := crc32.ChecksumIEEE(t.entries)

	primary := t.header(1, last, t.Primary.EntriesLBA, lastUsable, arrCRC)
	backup := t.header(last, 1, backupEntries, lastUsable, arrCRC)

	// Backup first, primary last: until the primary is rewritten the old
	// table stays valid, so a power cut leaves a bootable disk.
	ss := int64(t.SectorSize)
	if _, err := w.WriteAt(t.entries, int64(backupEntries)*ss); err != nil {
		return Growth{}, fmt.Errorf("grow: write backup GPT entries: %w", err)
	}
	if _, err := w.WriteAt(backup, int64(last)*ss); err != nil {
		return Growth{}, fmt.Errorf("grow: write backup GPT header: %w", err)
	}
	if g.BackupMoved && oldBackup > 1 && oldBackup < last {
		// A stale header inside the grown partition could be taken for a
		// GPT by tools that scan; wipe it.
		if _, err := w.WriteAt(make([]byte, t.SectorSize), int64(oldBackup)*ss); err != nil {
			return Growth{}, fmt.Errorf("grow: wipe old backup GPT header: %w", err)
		}
	}
	if _, err := w.WriteAt(t.entries, int64(t.Primary.EntriesLBA)*ss); err != nil {
		return Growth{}, fmt.Errorf("grow: write primary GPT entries: %w", err)
	}
	if _, err := w.WriteAt(primary, ss); err != nil {
		return Growth{}, fmt.Errorf("grow: write primary GPT header: %w", err)
	}
	if err := t.fixProtectiveMBR(w); err != nil {
		return Growth{}, err
	}
	t.Primary.AlternateLBA, t.Primary.LastUsableLBA = last, lastUsable
	t.fromBackup = false
	for i := range t.Partitions {
		if t.Partitions[i].Number == number {
			t.Partitions[i].LastLBA = newEnd
		}
	}
	return g, nil
}

// header renders a header sector from the one read, with new positions.
func (t *Table) header(my, alt, entriesLBA, lastUsable uint64, arrCRC uint32) []byte {
	sec := append([]byte(nil), t.Primary.raw...)
	binary.LittleEndian.PutUint64(sec[24:], my)
	binary.LittleEndian.PutUint64(sec[32:], alt)
	binary.LittleEndian.PutUint64(sec[48:], lastUsable)
	binary.LittleEndian.PutUint64(sec[72:], entriesLBA)
	binary.LittleEndian.PutUint32(sec[88:], arrCRC)
	hs := binary.LittleEndian.Uint32(sec[12:])
	binary.LittleEndian.PutUint32(sec[16:], 0)
	binary.LittleEndian.PutUint32(sec[16:], crc32.ChecksumIEEE(sec[:hs]))
	return sec
}

// fixProtectiveMBR makes the protective MBR entry cover the whole disk
// again, as the UEFI spec asks; the caller already wrote the GPT.
func (t *Table) fixProtectiveMBR(w io.WriterAt) error {
	r, ok := w.(io.ReaderAt)
	if !ok {
		return nil
	}
	mbr := make([]byte, 512)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("grow: read protective MBR: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil
	}
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		if e[4] != mbrTypeGPTProt {
			continue
		}
		if binary.LittleEndian.Uint32(e[8:]) != 1 {
			return nil // not the usual layout; leave a hybrid MBR alone
		}
		size := t.Sectors - 1
		if size > 0xFFFFFFFF {
			size = 0xFFFFFFFF
		}
		binary.LittleEndian.PutUint32(e[12:], uint32(size))
		if _, err := w.WriteAt(e, int64(446+16*i)); err != nil {
			return fmt.Errorf("grow: write protective MBR: %w", err)
		}
		return nil
	}
	return nil
}

// guidString renders GPT's mixed-endian GUID bytes as the usual text form.
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%04X-%012X",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
