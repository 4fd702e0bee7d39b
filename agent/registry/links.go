package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobLinks records which repositories hold which blobs. ggcr keeps one
// blob store for all repositories, so without links anyone allowed to
// pull some repository could read any blob by digest through it: with
// them, a blob is served for a repository only if it was uploaded to it,
// mounted into it from a repository the caller may read, or fetched for it
// from a peer that had it linked. A manifest push links nothing, so naming
// another tenant's layer digests in a manifest gains nothing.
//
//	links/<sha256(repo)>/<digest hex>   empty files
type blobLinks struct{ dir string }

func (l *blobLinks) path(repo, digest string) string {
	sum := sha256.Sum256([]byte(repo))
	return filepath.Join(l.dir, hex.EncodeToString(sum[:]), strings.TrimPrefix(digest, "sha256:"))
}

func (l *blobLinks) has(repo, digest string) bool {
	_, err := os.Stat(l.path(repo, digest))
	return err == nil
}

func (l *blobLinks) add(repo, digest string) error {
	if !digestPattern.MatchString(digest) {
		return fmt.Errorf("link blob: bad digest %q", digest)
	}
	p := l.path(repo, digest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("link blob %s to %s: %w", digest, repo, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("link blob %s to %s: %w", digest, repo, err)
	}
	return f.Close()
}

// linkedElsewhere says whether a repository other than repo holds digest.
func (l *blobLinks) linkedElsewhere(repo, digest string) (bool, error) {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return false, fmt.Errorf("list blob links: %w", err)
	}
	own := filepath.Base(filepath.Dir(l.path(repo, digest)))
	hexDigest := strings.TrimPrefix(digest, "sha256:")
	for _, e := range entries {
		if !e.IsDir() || e.Name() == own {
			continue
		}
		if _, err := os.Stat(filepath.Join(l.dir, e.Name(), hexDigest)); err == nil {
			return true, nil
		}
	}
	return false, nil
}

func (l *blobLinks) remove(repo, digest string) error {
	if err := os.Remove(l.path(repo, digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unlink blob %s from %s: %w", digest, repo, err)
	}
	return nil
}

// linkPersisted links the blobs of every persisted manifest to its
// repository: the one-time migration of a store written before links
// existed (only then: later, a manifest push must not link).
func (l *blobLinks) linkPersisted(recs []manifestRecord, bodies map[string][]byte) error {
	for _, rec := range recs {
		m, err := v1.ParseManifest(strings.NewReader(string(bodies[rec.Digest])))
		if err != nil || m.Config.Digest.Hex == "" {
			continue // an index: its children are records of their own
		}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if err := l.add(rec.Repo, d.Digest.String()); err != nil {
				return err
			}
		}
	}
	return nil
}

// statusWriter remembers the status an inner handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// serveUpload passes a blob upload request to ggcr and links the blob to
// the repository once it is complete. A mount from a repository that does
// not hold the blob becomes a plain upload, as the distribution spec allows.
func (s *server) serveUpload(w http.ResponseWriter, r *http.Request, repo string) {
	q := r.URL.Query()
	digest := q.Get("digest")
	if mount := q.Get("mount"); mount != "" && r.Method == http.MethodPost {
		if !s.links.has(q.Get("from"), mount) {
			q.Del("mount")
			q.Del("from")
			r.URL.RawQuery = q.Encode()
		} else {
			digest = mount
		}
	}
	sw := &statusWriter{ResponseWriter: w}
	s.blobMu.RLock()
	defer s.blobMu.RUnlock()
	s.inner.ServeHTTP(sw, r)
	if sw.status == http.StatusCreated && digest != "" {
		if err := s.links.add(repo, digest); err != nil {
			s.log.Error("registry: link uploaded blob", "repo", repo, "err", err)
		}
	}
}

// serveBlobLinked enforces links on a blob request: a read of a blob not
// linked to the repository is first tried at the peers (which check their
// own links), then refused as unknown; a delete only unlinks, since the
// bytes may belong to other repositories too. It reports whether the
// request goes on to ggcr.
func (s *server) serveBlobLinked(w http.ResponseWriter, r *http.Request, t target) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if s.links.has(t.repo, t.ref) {
			return true
		}
		if s.peers != nil && r.Header.Get(PeerHeader) == "" {
			err := s.inflight.do("blob "+t.repo+"@"+t.ref, func() error {
				if s.links.has(t.repo, t.ref) {
					return nil
				}
				return s.fetchBlob(r.Context(), t.repo, t.ref)
			})
			if err == nil && s.links.has(t.repo, t.ref) {
				return true
			}
		}
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to repository "+t.repo+": "+t.ref)
		return false
	case http.MethodDelete:
		if !s.links.has(t.repo, t.ref) {
			writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to repository "+t.repo+": "+t.ref)
			return false
		}
		if err := s.links.remove(t.repo, t.ref); err != nil {
			writeError(w, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", err.Error())
			return false
		}
		w.WriteHeader(http.StatusAccepted)
		return false
	}
	return true
}
