package disk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// punchZeroes turns aligned all-zero blocks of f back into holes. go-diskfs
// writes zeroed inode tables, journal and FAT regions explicitly, which
// would otherwise cost disk space proportional to the partition sizes.
// The content read back is unchanged.
func punchZeroes(f *os.File) error {
	const block = 64 << 10
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat image: %w", err)
	}
	size := st.Size()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only holes from here on
		}
		if err != nil {
			return nil // no SEEK_DATA on this filesystem: leave the file as it is
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("find hole after byte %d: %w", data, err)
		}
		// Scan whole blocks; the part before data is a hole already.
		for pos := data - data%block; pos < hole; pos += int64(len(buf)) {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read image at byte %d: %w", pos, err)
			}
			for i := 0; i+block <= n; i += block {
				if !allZero(buf[i : i+block]) {
					continue
				}
				err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, pos+int64(i), block)
				if errors.Is(err, unix.EOPNOTSUPP) {
					return nil // the filesystem cannot punch holes: the image is still correct
				}
				if err != nil {
					return fmt.Errorf("punch hole at byte %d: %w", pos+int64(i), err)
				}
			}
		}
		off = hole
	}
	return nil
}
