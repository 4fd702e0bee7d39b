package disk

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/berth-os/berth/updater/layout"
)

// writeESP makes the FAT32 of the ESP in a file of its own with mkfs.vfat
// and mtools, then copies it into the partition at start.
func writeESP(work string, img io.WriterAt, start, size int64, files []File, s Spec) error {
	fs := filepath.Join(work, "esp.img")
	if err := newFile(fs, size); err != nil {
		return fmt.Errorf("ESP file: %w", err)
	}
	env := mtoolsEnv(s.Epoch)
	// --invariant pins what mkfs.vfat takes from the clock; the -i after
	// it replaces its fixed serial with one derived from the partition.
	// 512-byte sectors: the image's, whatever the build host's disk has.
	if err := runTool(env, "mkfs.vfat", "-F", "32", "-S", "512", "--mbr=n", "--invariant",
		"-i", fmt.Sprintf("%08X", volumeID(s.PartGUIDs[0])), fs); err != nil {
		return err
	}
	// mlabel rather than mkfs.vfat -n: mkfs.vfat --invariant dates the
	// label's directory entry 2015, mtools dates it SOURCE_DATE_EPOCH.
	if err := runTool(env, "mlabel", "-i", fs, "::"+layout.LabelESP); err != nil {
		return err
	}
	if dirs := espDirs(files); len(dirs) > 0 {
		if err := runTool(env, "mmd", append([]string{"-i", fs}, dirs...)...); err != nil {
			return err
		}
	}
	src := filepath.Join(work, "esp-file")
	for _, f := range files {
		if err := os.WriteFile(src, f.Data, 0o600); err != nil {
			return fmt.Errorf("stage %s: %w", f.Path, err)
		}
		// mcopy -m gives the entry the file's own time: the epoch.
		if err := os.Chtimes(src, s.Epoch, s.Epoch); err != nil {
			return fmt.Errorf("stage %s: %w", f.Path, err)
		}
		if err := runTool(env, "mcopy", "-i", fs, "-m", src, "::/"+f.Path); err != nil {
			return err
		}
	}
	return copyInto(img, start, fs, size)
}

// mtoolsEnv makes mtools' output depend on the spec alone: times from
// SOURCE_DATE_EPOCH (new directories, the label) and file times written
// as UTC (FAT stores local time), with no complaint that an image is not a
// whole number of floppy tracks.
func mtoolsEnv(epoch time.Time) []string {
	return []string{
		"SOURCE_DATE_EPOCH=" + strconv.FormatInt(epoch.Unix(), 10),
		"TZ=UTC",
		"MTOOLS_SKIP_CHECK=1",
	}
}

// espDirs lists the ESP's directories as mmd must create them: each once
// (FAT names ignore case), parents first, in a fixed order.
func espDirs(files []File) []string {
	seen := map[string]bool{}
	var dirs []string
	for _, f := range files {
		var chain []string
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			chain = append(chain, dir)
		}
		for i := len(chain) - 1; i >= 0; i-- {
			if key := strings.ToLower(chain[i]); !seen[key] {
				seen[key] = true
				dirs = append(dirs, "::/"+chain[i])
			}
		}
	}
	return dirs
}

// volumeID derives the FAT volume serial from the ESP's partition GUID, so
// /dev/disk/by-uuid differs between images but not between builds.
func volumeID(guid string) uint32 {
	u, _ := uuid.Parse(guid) // validated by validate
	return binary.BigEndian.Uint32(u[:4])
}
