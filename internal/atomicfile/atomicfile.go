// Package atomicfile replaces small files (configuration, state, keys, JSON
// records) so that readers, and a machine that loses power, see the old
// content or the new one, never half of it.
//
// WriteFile writes a temporary file beside the target, fsyncs it, renames it
// over the target and fsyncs the directory, so the rename itself is durable
// once WriteFile returns.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Stages passed to testHook, in order.
const (
	stageWritten = "written"  // data written to the temp file, not yet fsynced
	stageSynced  = "synced"   // temp file fsynced and closed, not yet renamed
	stageRenamed = "renamed"  // renamed over the target, directory not yet fsynced
	stageDirSync = "dir-sync" // directory fsynced
)

// testHook, when set by a test, is called at each stage of WriteFile.
var testHook func(stage string)

func hook(stage string) {
	if testHook != nil {
		testHook(stage)
	}
}

// WriteFile writes data to a temporary file beside path with the given mode,
// fsyncs it, renames it over path and fsyncs the directory. A missing
// directory is created with mode 0700 (callers that need another mode
// create it first). On error the temporary file is removed and path keeps
// its old content.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	hook(stageWritten)
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	hook(stageSynced)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	hook(stageRenamed)
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	hook(stageDirSync)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
