package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// manifestAccept is what we ask peers for; ggcr stores any type, so ask for all we know.
var manifestAccept = []string{
	string(types.OCIManifestSchema1),
	string(types.OCIImageIndex),
	string(types.DockerManifestSchema2),
	string(types.DockerManifestList),
}

// maxIndexDepth bounds index -> child manifest recursion on a peer fetch.
const maxIndexDepth = 3

// fillFromPeers makes t available locally if it is missing and a peer has it.
// Failures are only logged: the caller then serves ggcr's own 404.
func (s *server) fillFromPeers(ctx context.Context, t target, accept []string) {
	var err error
	switch t.kind {
	case "blobs":
		if s.hasBlob(t.ref) {
			return
		}
		err = s.inflight.do("blob "+t.ref, func() error {
			if s.hasBlob(t.ref) {
				return nil
			}
			return s.fetchBlob(ctx, t.repo, t.ref)
		})
	case "manifests":
		if s.hasManifest(ctx, t.repo, t.ref) {
			return
		}
		err = s.inflight.do("manifest "+t.repo+":"+t.ref, func() error {
			if s.hasManifest(ctx, t.repo, t.ref) {
				return nil
			}
			return s.fetchManifest(ctx, t.repo, t.ref, accept, 0)
		})
	}
	if err != nil {
		s.log.Info("registry: not found locally or at peers", "repo", t.repo, "kind", t.kind, "ref", t.ref, "err", err)
	}
}

// peerGet asks one peer; the caller must close the body of a 200 answer.
func (s *server) peerGet(ctx context.Context, peer, path string, accept []string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(peer, "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", peer, err)
	}
	req.Header.Set(PeerHeader, "1")
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", peer, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("peer %s: %s", peer, resp.Status)
	}
	return resp, nil
}

// fetchBlob streams the blob from the first peer that has it into a temp file,
// checks its digest and hands it to the disk blob handler.
func (s *server) fetchBlob(ctx context.Context, repo, digest string) error {
	h, err := v1.NewHash(digest)
	if err != nil {
		return fmt.Errorf("blob %s: %w", digest, err)
	}
	var errs []error
	for _, peer := range s.peers() {
		s.blobMu.RLock()
		err := s.fetchBlobFrom(ctx, peer, repo, h)
		if err == nil && s.links != nil {
			err = s.links.add(repo, digest) // the peer held it for repo
		}
		s.blobMu.RUnlock()
		if err == nil {
			s.log.Info("registry: blob fetched from peer", "peer", peer, "digest", digest)
			return nil
		}
		s.log.Warn("registry: peer blob fetch failed", "peer", peer, "digest", digest, "err", err)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

func (s *server) fetchBlobFrom(ctx context.Context, peer, repo string, h v1.Hash) error {
	resp, err := s.peerGet(ctx, peer, "/v2/"+repo+"/blobs/"+h.String(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := s.blobs.putVerified(h, resp.Body); err != nil {
		return fmt.Errorf("peer %s: %w", peer, err)
	}
	return nil
}

// fetchManifest gets repo:ref from the first peer that has a manifest whose
// digest checks out, fetches an index's child manifests, and stores it.
func (s *server) fetchManifest(ctx context.Context, repo, ref string, accept []string, depth int) error {
	var errs []error
	for _, peer := range s.peers() {
		err := s.fetchManifestFrom(ctx, peer, repo, ref, accept, depth)
		if err == nil {
			s.log.Info("registry: manifest fetched from peer", "peer", peer, "repo", repo, "ref", ref)
			return nil
		}
		s.log.Warn("registry: peer manifest fetch failed", "peer", peer, "repo", repo, "ref", ref, "err", err)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

func (s *server) fetchManifestFrom(ctx context.Context, peer, repo, ref string, accept []string, depth int) error {
	resp, err := s.peerGet(ctx, peer, "/v2/"+repo+"/manifests/"+ref, slices.Concat(accept, manifestAccept))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestBytes+1))
	if err != nil {
		return fmt.Errorf("peer %s: read manifest: %w", peer, err)
	}
	if len(body) > maxManifestBytes {
		return fmt.Errorf("peer %s: manifest larger than %d bytes", peer, maxManifestBytes)
	}
	got := sha256Digest(body)
	// By digest the name is the proof; by tag the peer's own digest header must agree.
	want := resp.Header.Get("Docker-Content-Digest")
	if digestPattern.MatchString(ref) {
		want = ref
	}
	if want != "" && got != want {
		return fmt.Errorf("peer %s: manifest digest mismatch: got %s, want %s", peer, got, want)
	}
	mediaType := resp.Header.Get("Content-Type")
	if mediaType == "" {
		mediaType = mediaTypeField(body)
	}
	if types.MediaType(mediaType).IsIndex() {
		if depth >= maxIndexDepth {
			return fmt.Errorf("peer %s: indexes nested deeper than %d", peer, maxIndexDepth)
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("peer %s: parse index: %w", peer, err)
		}
		for _, d := range idx.Manifests {
			if !(d.MediaType.IsImage() || d.MediaType.IsIndex()) || s.hasManifest(ctx, repo, d.Digest.String()) {
				continue
			}
			if err := s.fetchManifest(ctx, repo, d.Digest.String(), nil, depth+1); err != nil {
				return fmt.Errorf("index child %s: %w", d.Digest, err)
			}
		}
	}
	code, msg, err := s.putManifest(repo, ref, mediaType, body)
	if err != nil {
		return err
	}
	if code != http.StatusCreated {
		return fmt.Errorf("store manifest from peer %s: status %d: %s", peer, code, msg)
	}
	return nil
}

// mediaTypeField reads the optional "mediaType" of a manifest body.
func mediaTypeField(body []byte) string {
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return ""
	}
	return string(m.MediaType)
}

// flight runs one fetch per key at a time; concurrent callers wait for it and
// share its result.
type flight struct {
	mu    sync.Mutex
	calls map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	err  error
}

func (f *flight) do(key string, fn func() error) error {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]*flightCall{}
	}
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		<-c.done
		return c.err
	}
	c := &flightCall{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()

	c.err = fn()
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
	return c.err
}
