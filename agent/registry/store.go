package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-os/berth/internal/atomicfile"
)

// manifestStore persists what ggcr's registry keeps only in memory: one small
// JSON record per (repository, reference) and the manifest bytes stored once
// by digest. Layout under dir:
//
//	refs/<sha256(repo NUL ref)>.json   {"repo","reference","media_type","digest"}
//	content/sha256/<hex>               manifest bytes
type manifestStore struct {
	dir string
}

type manifestRecord struct {
	Repo      string `json:"repo"`
	Reference string `json:"reference"` // tag or digest
	MediaType string `json:"media_type"`
	Digest    string `json:"digest"` // sha256:<hex> of the bytes
}

func newManifestStore(dir string) (*manifestStore, error) {
	for _, d := range []string{filepath.Join(dir, "refs"), filepath.Join(dir, "content", "sha256")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create manifest store: %w", err)
		}
	}
	return &manifestStore{dir: dir}, nil
}

func (s *manifestStore) refPath(repo, ref string) string {
	sum := sha256.Sum256([]byte(repo + "\x00" + ref))
	return filepath.Join(s.dir, "refs", hex.EncodeToString(sum[:])+".json")
}

func (s *manifestStore) contentPath(digest string) string {
	return filepath.Join(s.dir, "content", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

// save records that repo:ref names the manifest body; the bytes go first so a
// record never points at missing content.
func (s *manifestStore) save(rec manifestRecord, body []byte) error {
	if err := atomicfile.WriteFile(s.contentPath(rec.Digest), body, 0o600); err != nil {
		return fmt.Errorf("persist manifest %s: %w", rec.Digest, err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode manifest record: %w", err)
	}
	if err := atomicfile.WriteFile(s.refPath(rec.Repo, rec.Reference), data, 0o600); err != nil {
		return fmt.Errorf("persist manifest reference %s:%s: %w", rec.Repo, rec.Reference, err)
	}
	return nil
}

// remove forgets repo:ref; the content stays (other references may share it).
func (s *manifestStore) remove(repo, ref string) error {
	if err := os.Remove(s.refPath(repo, ref)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget manifest reference %s:%s: %w", repo, ref, err)
	}
	return nil
}

// removeContent deletes the manifest bytes of digest; the caller checks
// that no record names it any more.
func (s *manifestStore) removeContent(digest string) error {
	if err := os.Remove(s.contentPath(digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove manifest %s: %w", digest, err)
	}
	return nil
}

// load returns every record with its verified bytes. Unreadable or corrupt
// entries are reported in skipped and left out rather than failing start-up.
func (s *manifestStore) load() (recs []manifestRecord, bodies map[string][]byte, skipped []error) {
	bodies = map[string][]byte{}
	entries, err := os.ReadDir(filepath.Join(s.dir, "refs"))
	if err != nil {
		return nil, bodies, []error{fmt.Errorf("list manifest records: %w", err)}
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue // temp files of an interrupted write
		}
		p := filepath.Join(s.dir, "refs", e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("read %s: %w", p, err))
			continue
		}
		var rec manifestRecord
		if err := json.Unmarshal(data, &rec); err != nil {
			skipped = append(skipped, fmt.Errorf("parse %s: %w", p, err))
			continue
		}
		if !digestPattern.MatchString(rec.Digest) {
			skipped = append(skipped, fmt.Errorf("%s: bad digest %q", p, rec.Digest))
			continue
		}
		if _, ok := bodies[rec.Digest]; !ok {
			body, err := os.ReadFile(s.contentPath(rec.Digest))
			if err != nil {
				skipped = append(skipped, fmt.Errorf("manifest %s: %w", rec.Digest, err))
				continue
			}
			if got := sha256Digest(body); got != rec.Digest {
				skipped = append(skipped, fmt.Errorf("manifest %s on disk: digest mismatch (got %s)", rec.Digest, got))
				continue
			}
			bodies[rec.Digest] = body
		}
		recs = append(recs, rec)
	}
	return recs, bodies, skipped
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
