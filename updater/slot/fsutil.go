package slot

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// tempSuffix ends every temporary file the updater creates. It never ends
// in ".conf", so a half-written boot entry is invisible to systemd-boot.
const tempSuffix = ".berth-tmp"

// tempName is a hidden, unique name next to final, removed or renamed by
// its writer; leftovers from a crash are swept by removeTemps.
func tempName(final string) (string, error) {
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("random temp name: %w", err)
	}
	dir, base := filepath.Split(final)
	return filepath.Join(dir, "."+base+"."+hex.EncodeToString(r[:])+tempSuffix), nil
}

// removeTemps deletes temporary files a killed updater left in dir.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), tempSuffix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// syncDir makes renames and removals in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic replaces path with data: temp file, fsync, rename, fsync
// directory, so a crash leaves either the old or the new content.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return replaceFile(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// replaceFile is writeFileAtomic for content produced by fill.
func replaceFile(path string, perm os.FileMode, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := tempName(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	crashAt("before-rename:" + filepath.Base(path))
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s into place: %w", path, err)
	}
	committed = true
	return syncDir(dir)
}
