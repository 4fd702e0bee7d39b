package runtime

import (
	"encoding/json"
	"fmt"
	"github.com/berth-os/berth/internal/atomicfile"
	"os"
	"path/filepath"
)

// Files of a container's state directory ROOT/ID (the shim protocol).
const (
	SpecFile        = "spec.json"    // written by the agent before it starts the shim
	ShimPidFile     = "shim.pid"     // written by the shim first
	StateFile       = "state.json"   // written by the shim once the process runs
	ExitFile        = "exit.json"    // written by the shim when the container is gone (or never started)
	StopTimeoutFile = "stop-timeout" // written by Stop before it signals the shim: the grace period for this stop
	ShimLogFile     = "shim.log"     // the shim's own stdout/stderr
	LogFile         = "container.log"
	LibcontainerDir = "libct"
)

// WriteJSONFile writes v to path atomically and durably: temp file, fsync,
// rename, fsync of the directory. Readers never see a partial file, and the
// file survives a crash of the node once this returns.
func WriteJSONFile(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return WriteFileAtomic(path, append(data, '\n'))
}

// WriteFileAtomic writes data to path with temp file, fsync and rename.
func WriteFileAtomic(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o600)
}

// readJSONFile decodes path into v; a missing file is reported with
// os.ErrNotExist wrapped.
func readJSONFile(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// ReadSpecFile reads a container's spec.json (used by the shim).
func ReadSpecFile(dir string) (Spec, error) {
	var s Spec
	if err := readJSONFile(filepath.Join(dir, SpecFile), &s); err != nil {
		return s, fmt.Errorf("read container spec: %w", err)
	}
	return s, nil
}
