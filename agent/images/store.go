// Package images keeps container images on a node: it pulls them from OCI
// registries (or imports archives), verifies every byte against its digest,
// unpacks each layer once into a content-addressed store and gives each
// container an overlay root whose writes stay in its own directory.
//
// Layout under the store directory:
//
//	layers/<diffid-hex>/          an unpacked layer (OCI whiteouts as overlay whiteouts)
//	images/<manifest-hex>.json    an Image record
//	refs.json                     reference -> manifest digest
//	containers/<id>/{upper,work,merged,image}
//	tmp/                          work in progress; emptied by Open
//
// Everything that must look complete (a layer, a record, refs.json) is made
// beside its final name and renamed into place, so a crash never leaves half
// of it under the final name.
package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/berth-os/berth/internal/atomicfile"
)

// DefaultDir is where a node keeps its images.
const DefaultDir = "/var/lib/berth/images"

// Options tune how a Store talks to registries.
type Options struct {
	// Transport carries registry requests (TLS to the cluster CA). Nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Insecure allows plain http (loopback tests). Without it every request
	// goes over https, even to private addresses that go-containerregistry
	// would otherwise reach over http.
	Insecure bool
	Log      *slog.Logger
}

// Image is what the store knows about one pulled image.
type Image struct {
	Ref        string   `json:"ref"`    // the reference it was first stored under ("" when imported without a tag)
	Digest     string   `json:"digest"` // sha256:... of the (platform) manifest
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Layers     []string `json:"layers"` // diffIDs (sha256:...), bottom first
	Size       int64    `json:"size"`   // sum of the compressed layer sizes from the manifest
}

// ErrNotFound is wrapped by every "image not found" error, from the store
// (Get, Mount) and from registries (Pull).
var ErrNotFound = errors.New("image not found")

type notFoundError struct{ msg string }

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }

// Store is a node's image store. One Store per directory: Open empties tmp/.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	// gcLock: pulls, imports and mounts share it; GC takes it alone so it
	// never deletes a layer that a pull has unpacked but not yet recorded.
	gcLock sync.RWMutex
	refsMu sync.Mutex // refs.json read-modify-write

	layerLocks     keyedMutex // per diffID: one unpack at a time
	containerLocks keyedMutex // per container id: Mount/Unmount
}

// Open creates (if needed) and opens the store at dir ("" = DefaultDir).
func Open(dir string, o Options) (*Store, error) {
	if dir == "" {
		dir = DefaultDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	s := &Store{dir: abs, opts: o, log: o.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// 0700: tenants on the host have no business reading other tenants'
	// layers; containers reach them through their overlay mount.
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("image store %s: %w", abs, err)
	}
	// Leftovers of a crashed pull or GC are garbage by construction.
	if err := os.RemoveAll(s.path("tmp")); err != nil {
		return nil, fmt.Errorf("image store %s: clean tmp: %w", abs, err)
	}
	for _, sub := range []string{"layers", "images", "containers", "tmp"} {
		if err := os.MkdirAll(s.path(sub), 0o700); err != nil {
			return nil, fmt.Errorf("image store %s: %w", abs, err)
		}
	}
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) layerDir(diffID string) string {
	return s.path("layers", strings.TrimPrefix(diffID, "sha256:"))
}

func (s *Store) recordPath(digest string) string {
	return s.path("images", strings.TrimPrefix(digest, "sha256:")+".json")
}

var sha256Hex = regexp.MustCompile(`^[a-f0-9]{64}$`)

// Get finds a stored image by manifest digest ("sha256:..." or the bare
// hex), by reference ("host/repo:tag", "host/repo@sha256:..."), or by the
// short form the reference was pulled with.
func (s *Store) Get(refOrDigest string) (Image, error) {
	digest, err := s.resolve(refOrDigest)
	if err != nil {
		return Image{}, err
	}
	return s.readRecord(digest, refOrDigest)
}

func (s *Store) resolve(refOrDigest string) (string, error) {
	if strings.HasPrefix(refOrDigest, "sha256:") {
		if !sha256Hex.MatchString(strings.TrimPrefix(refOrDigest, "sha256:")) {
			return "", fmt.Errorf("%q is not a sha256 digest", refOrDigest)
		}
		return refOrDigest, nil
	}
	if sha256Hex.MatchString(refOrDigest) {
		return "sha256:" + refOrDigest, nil
	}
	refs, err := s.readRefs()
	if err != nil {
		return "", err
	}
	if d, ok := refs[refOrDigest]; ok {
		return d, nil
	}
	r, err := name.ParseReference(refOrDigest)
	if err != nil {
		return "", fmt.Errorf("bad image reference %q: %w", refOrDigest, err)
	}
	if d, ok := r.(name.Digest); ok {
		return d.DigestStr(), nil
	}
	if d, ok := refs[r.Name()]; ok {
		return d, nil
	}
	return "", &notFoundError{fmt.Sprintf("image %s is not in the store; pull it first", refOrDigest)}
}

func (s *Store) readRecord(digest, asked string) (Image, error) {
	data, err := os.ReadFile(s.recordPath(digest))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, &notFoundError{fmt.Sprintf("image %s is not in the store; pull it first", asked)}
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", asked, err)
	}
	var img Image
	if err := json.Unmarshal(data, &img); err != nil {
		return Image{}, fmt.Errorf("image %s: record %s is corrupt: %w", asked, s.recordPath(digest), err)
	}
	return img, nil
}

// List returns every stored image, sorted by digest.
func (s *Store) List() ([]Image, error) {
	entries, err := os.ReadDir(s.path("images"))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range entries {
		hex, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !sha256Hex.MatchString(hex) {
			continue
		}
		img, err := s.readRecord("sha256:"+hex, "sha256:"+hex)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

func (s *Store) writeRecord(img Image) error {
	data, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Digest, err)
	}
	return atomicfile.WriteFile(s.recordPath(img.Digest), append(data, '\n'), 0o600)
}

func (s *Store) readRefs() (map[string]string, error) {
	data, err := os.ReadFile(s.path("refs.json"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read refs: %w", err)
	}
	refs := map[string]string{}
	if err := json.Unmarshal(data, &refs); err != nil {
		return nil, fmt.Errorf("read refs: %s is corrupt: %w", s.path("refs.json"), err)
	}
	return refs, nil
}

// updateRefs applies change to refs.json under refsMu and writes it atomically.
func (s *Store) updateRefs(change func(map[string]string)) error {
	s.refsMu.Lock()
	defer s.refsMu.Unlock()
	refs, err := s.readRefs()
	if err != nil {
		return err
	}
	change(refs)
	data, err := json.MarshalIndent(refs, "", "  ")
	if err != nil {
		return fmt.Errorf("write refs: %w", err)
	}
	return atomicfile.WriteFile(s.path("refs.json"), append(data, '\n'), 0o600)
}

// keyedMutex serialises work per key (a diffID, a container id) and lets a
// waiter give up when its context ends.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{}
	refs int
}

func (k *keyedMutex) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
