// Package thinpool keeps a node's volume copies in one device-mapper thin
// pool whose data and metadata are two sparse files on the state
// partition.
//
// Why a thin pool and not a sparse file per volume: a snapshot of a thin
// device is copy-on-write and takes a metadata write, not a copy, so
// issue 17's "snapshot in under a second" holds for any size; deleting a
// volume gives its blocks back to the pool. Why device-mapper directly
// (dmsetup) and not LVM: berth keeps the few facts LVM would store (which
// thin id is which volume, its size) in one small JSON file, the image
// gains dmsetup (a quarter MiB) instead of lvm2 and its daemons, and the
// kernel's thin-pool metadata stays the only metadata.
//
// The decisions (tables, id allocation, status parsing) are pure functions
// here; pool.go runs dmsetup and losetup around them.
package thinpool

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
)

const (
	sector = 512
	// BlockSize is the pool's allocation unit: 64 KiB, the smallest the
	// kernel allows, so that a snapshot's first write to a block copies
	// little.
	BlockSize = 64 << 10
	// maxMetadata is the kernel's limit for thin-pool metadata (about 16 GiB).
	maxMetadata = 16 << 30
	minMetadata = 16 << 20
	// maxThinID is the kernel's limit for thin device ids (24 bits).
	maxThinID = 1<<24 - 1
	// PoolName is the device-mapper name of the node's pool.
	PoolName = "berth-pool"
)

// MetadataSize is the size of the metadata file for a pool of data bytes:
// twice the 64 bytes per block that LVM's estimate uses, at least 16 MiB
// (the file is sparse, so a generous size costs nothing until used).
func MetadataSize(data int64) int64 {
	m := data / BlockSize * 64 * 2
	m = (m + sector - 1) / sector * sector
	return min(max(m, minMetadata), maxMetadata)
}

// PoolTable is the device-mapper table of the pool over the metadata and
// data devices. Blocks are zeroed when first written (the kernel's
// default, no skip_block_zeroing): a block freed by one tenant's removed
// volume must never be read back by another's new one.
func PoolTable(meta, data string, dataBytes int64) string {
	return fmt.Sprintf("0 %d thin-pool %s %s %d 0", dataBytes/sector, meta, data, BlockSize/sector)
}

// ThinTable is the table of thin device id of size bytes in the pool.
func ThinTable(pool string, id int, size int64) string {
	return fmt.Sprintf("0 %d thin %s %d", size/sector, pool, id)
}

// ThinName is the device-mapper name of a thin device.
func ThinName(name string) string { return "berth-v-" + name }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// CheckName refuses names that cannot be a device-mapper name or a file.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("volume device name %q: use 1 to 63 lower-case letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// Status is the pool's usage from `dmsetup status`.
type Status struct {
	UsedData, TotalData         int64 // bytes
	UsedMetadata, TotalMetadata int64 // bytes
	ReadOnly, NeedsCheck        bool
}

// ParseStatus reads a thin-pool status line:
//
//	0 2097152 thin-pool 1 10/4096 3/16384 - rw discard_passdown queue_if_no_space - 1024
//
// (transaction id, used/total metadata blocks of 4 KiB, used/total data
// blocks, held root, mode, ...).
func ParseStatus(line string) (Status, error) {
	f := strings.Fields(line)
	if len(f) < 4 || f[2] != "thin-pool" {
		return Status{}, fmt.Errorf("thin-pool status %q: not a thin-pool status line", line)
	}
	if f[3] == "Fail" {
		return Status{}, fmt.Errorf("thin-pool status %q: the pool has failed (check the state partition's disk)", line)
	}
	if len(f) < 8 {
		return Status{}, fmt.Errorf("thin-pool status %q: not used/total counts", line)
	}
	pair := func(s string) (int64, int64, error) {
		a, b, ok := strings.Cut(s, "/")
		if !ok {
			return 0, 0, fmt.Errorf("thin-pool status %q: %q is not used/total", line, s)
		}
		x, err1 := strconv.ParseInt(a, 10, 64)
		y, err2 := strconv.ParseInt(b, 10, 64)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("thin-pool status %q: %q is not used/total", line, s)
		}
		return x, y, nil
	}
	um, tm, err := pair(f[4])
	if err != nil {
		return Status{}, err
	}
	ud, td, err := pair(f[5])
	if err != nil {
		return Status{}, err
	}
	s := Status{UsedMetadata: um * 4096, TotalMetadata: tm * 4096, UsedData: ud * BlockSize, TotalData: td * BlockSize}
	s.ReadOnly = f[7] != "rw"
	s.NeedsCheck = strings.Contains(line, "needs_check")
	return s, nil
}

// Device is one thin device of the pool, as the state file records it.
type Device struct {
	ID     int    `json:"id"`
	Size   int64  `json:"size"`
	Origin string `json:"origin,omitempty"` // the device it is a snapshot of
}

// State is what the pool's state file holds besides the kernel's metadata.
type State struct {
	DataSize int64             `json:"data_size"`
	Devices  map[string]Device `json:"devices"`
}

// Committed is the total size promised to devices that are not snapshots:
// a volume is refused when it would promise more than the pool holds.
// (Snapshots share blocks with their origin until written.)
func (s State) Committed() int64 {
	var n int64
	for _, d := range s.Devices {
		if d.Origin == "" {
			n += d.Size
		}
	}
	return n
}

// NextID is the lowest thin id not in use (ids are the kernel's, 0 up).
func (s State) NextID() (int, error) {
	used := map[int]bool{}
	for _, d := range s.Devices {
		used[d.ID] = true
	}
	for id := 0; id <= maxThinID; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("thin pool: all %d device ids in use: remove volumes or snapshots", maxThinID+1)
}

// Fit says why a new device of size cannot be created, or nil.
func (s State) Fit(name string, size int64) error {
	if size <= 0 || size%sector != 0 {
		return fmt.Errorf("volume %s: size %d is not a positive multiple of 512 bytes", name, size)
	}
	if free := s.DataSize - s.Committed(); size > free {
		return fmt.Errorf("volume %s: %s does not fit: the node's volume pool has %s of %s left (remove volumes, or give the node a bigger disk)",
			name, jobs.FormatMemory(size), jobs.FormatMemory(max(free, 0)), jobs.FormatMemory(s.DataSize))
	}
	return nil
}
