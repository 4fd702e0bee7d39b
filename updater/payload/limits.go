package payload

import (
	"fmt"
	"io"
)

// Size limits for the small documents of a payload, so a hostile source
// cannot make the updater read unbounded data before anything is verified.
const (
	maxEnvelope    = 1 << 20 // the signed manifest and its signatures
	maxOCIManifest = 4 << 20 // the OCI image manifest (and index.json)
	maxSignatures  = 16
)

// readLimited reads all of r, failing if it holds more than limit bytes.
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than the limit of %d bytes", limit)
	}
	return data, nil
}
