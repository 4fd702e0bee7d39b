package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PruneLocal removes from this node's storage the manifests of repo other
// than the kept ones, and the blobs only they use; it returns the bytes
// freed. keep names tags or digests; a kept index keeps its child
// manifests. A blob stays while a remaining manifest of any repository
// uses it (blobs are shared by digest) or another repository holds it (it
// may be in the middle of a push).
//
// It is the node tidying its own disk (the rollout driver makes room for
// the next OS payload), so it goes through no HTTP request and no access
// rule, and it never changes tags: with a cluster tag store a tag stays
// for the whole cluster, and a later pull of a pruned image here fetches
// it again from a peer that still holds it. A tag of keep that the
// cluster tag store cannot resolve is an error and nothing is removed.
func (r *Registry) PruneLocal(ctx context.Context, repo string, keep ...string) (int64, error) {
	s := r.s
	if !repoPattern.MatchString(repo) {
		return 0, fmt.Errorf("prune %s: invalid repository name", repo)
	}
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	s.putMu.Lock()
	defer s.putMu.Unlock()

	recs, bodies, skipped := s.store.load()
	for _, err := range skipped {
		s.log.Warn("registry: prune: skipping persisted manifest", "err", err)
	}
	kept, err := s.keptDigests(ctx, repo, keep, recs, bodies)
	if err != nil {
		return 0, fmt.Errorf("prune %s: %w", repo, err)
	}

	var doomed []manifestRecord
	liveDigests := map[string]bool{}
	usedBlobs := map[string]bool{}
	for _, rec := range recs {
		if rec.Repo == repo && !kept[rec.Digest] {
			doomed = append(doomed, rec)
			continue
		}
		liveDigests[rec.Digest] = true
		blobs, _ := references(bodies[rec.Digest])
		for _, b := range blobs {
			usedBlobs[b] = true
		}
	}
	if len(doomed) == 0 {
		return 0, nil
	}

	// Records and ggcr's memory first, so nothing resolves to an image
	// whose blobs are going.
	var freed int64
	gone := map[string]bool{}
	for _, rec := range doomed {
		for _, ref := range uniq(rec.Reference, rec.Digest) {
			s.innerDelete(ctx, repo, ref)
		}
		if err := s.store.remove(repo, rec.Reference); err != nil {
			return freed, fmt.Errorf("prune %s: %w", repo, err)
		}
		if gone[rec.Digest] || liveDigests[rec.Digest] {
			continue
		}
		gone[rec.Digest] = true
		freed += int64(len(bodies[rec.Digest]))
		if err := s.store.removeContent(rec.Digest); err != nil {
			return freed, fmt.Errorf("prune %s: %w", repo, err)
		}
		s.log.Info("registry: manifest pruned from local storage", "repo", repo, "digest", rec.Digest)
	}

	var errs []error
	done := map[string]bool{}
	for digest := range gone {
		blobs, _ := references(bodies[digest])
		for _, b := range blobs {
			if usedBlobs[b] || done[b] {
				continue
			}
			done[b] = true
			n, err := s.pruneBlob(repo, b)
			freed += n
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return freed, fmt.Errorf("prune %s: %w", repo, err)
	}
	return freed, nil
}

// keptDigests resolves keep to manifest digests, with the children of
// kept indexes that are stored here. Without a cluster tag store a tag is
// one of this node's records; a tag that is not here keeps nothing.
func (s *server) keptDigests(ctx context.Context, repo string, keep []string, recs []manifestRecord, bodies map[string][]byte) (map[string]bool, error) {
	kept := map[string]bool{}
	var queue []string
	for _, ref := range keep {
		switch {
		case digestPattern.MatchString(ref):
			queue = append(queue, ref)
		case !tagPattern.MatchString(ref):
			return nil, fmt.Errorf("keep %q: not a tag or digest", ref)
		case s.tags != nil:
			t, ok, err := s.tags.Get(ctx, repo, ref)
			if err != nil {
				return nil, fmt.Errorf("resolve kept tag %s:%s: %w", repo, ref, err)
			}
			if !ok {
				return nil, fmt.Errorf("kept tag %s:%s does not exist", repo, ref)
			}
			queue = append(queue, t.Digest)
		default:
			for _, rec := range recs {
				if rec.Repo == repo && rec.Reference == ref {
					queue = append(queue, rec.Digest)
				}
			}
		}
	}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if kept[d] {
			continue
		}
		kept[d] = true
		_, children := references(bodies[d])
		queue = append(queue, children...)
	}
	return kept, nil
}

// references lists what a manifest body points at: the blobs (config,
// layers, non-manifest entries of an index) and the child manifests of an
// index. Bytes that are no manifest point at nothing.
func references(body []byte) (blobs, children []string) {
	var m struct {
		Config    *v1.Descriptor  `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if len(body) == 0 || json.Unmarshal(body, &m) != nil {
		return nil, nil
	}
	if m.Config != nil && m.Config.Digest.Hex != "" {
		blobs = append(blobs, m.Config.Digest.String())
	}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest.String())
	}
	for _, d := range m.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			children = append(children, d.Digest.String())
		} else {
			blobs = append(blobs, d.Digest.String())
		}
	}
	return blobs, children
}

// pruneBlob deletes a blob of repo unless another repository holds it,
// and unlinks it from repo; it returns the bytes freed.
func (s *server) pruneBlob(repo, digest string) (int64, error) {
	h, err := v1.NewHash(digest)
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", digest, err)
	}
	if s.links != nil {
		elsewhere, err := s.links.linkedElsewhere(repo, digest)
		if err != nil {
			return 0, err
		}
		if elsewhere {
			return 0, nil
		}
	}
	var size int64
	if fi, err := os.Stat(s.blobs.path(h)); err == nil {
		size = fi.Size()
		if err := os.Remove(s.blobs.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("remove blob %s: %w", digest, err)
		}
	}
	if s.links != nil {
		if err := s.links.remove(repo, digest); err != nil {
			return size, err
		}
	}
	return size, nil
}

// innerDelete forgets repo:ref in ggcr's memory; unknown is fine.
func (s *server) innerDelete(ctx context.Context, repo, ref string) {
	req := httptest.NewRequestWithContext(ctx, http.MethodDelete, "/v2/"+repo+"/manifests/"+ref, nil)
	s.inner.ServeHTTP(httptest.NewRecorder(), req)
}
