// Package registry is the cluster-local OCI registry every agent serves. It
// wraps go-containerregistry's registry handler: blobs live on disk, manifests
// (kept in memory by ggcr) are persisted and replayed at start, and a pull of
// something missing here is fetched from peer agents, verified and kept.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PeerHeader marks requests one agent makes to another. A registry never asks
// its own peers on behalf of such a request, so fallbacks cannot loop.
const PeerHeader = "X-Berth-Registry-Peer"

// maxManifestBytes bounds manifest bodies, as other registries do (4 MiB).
const maxManifestBytes = 4 << 20

// Options configures New.
type Options struct {
	Dir        string          // blobs under Dir/blobs, manifests under Dir/manifests
	Peers      func() []string // base URLs of other agents, e.g. https://10.0.0.2:7480; nil = no fallback
	PeerClient *http.Client    // for peer requests; default: a client with header timeouts
	Log        *slog.Logger
	// Authorize turns on the access policy (Authorize): every request needs
	// a verified client certificate naming a known identity, and is allowed
	// or refused per repository and action. Off only for tests of the
	// storage itself.
	Authorize bool
	// Tags, when set, is the single truth for tags (etcd in the agent): a
	// tag push writes there, a tag read resolves there and the manifest is
	// then served by digest. Nil keeps tags in this registry only.
	Tags Tags
}

var (
	// Distribution-spec grammar for repository names, tags and digests.
	repoPattern   = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	digestPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

type server struct {
	inner    http.Handler
	blobDir  string
	tmpDir   string
	blobs    *diskBlobs
	store    *manifestStore
	peers    func() []string
	client   *http.Client
	log      *slog.Logger
	putMu    sync.Mutex // keeps the in-memory and persisted manifest order the same
	inflight flight
	authz    bool
	tags     Tags
	links    *blobLinks // with authz: which repositories hold which blobs
	// blobMu is held for reading while a blob is stored and linked, and
	// for writing by PruneLocal, so a prune never removes a blob another
	// repository is just taking.
	blobMu sync.RWMutex
}

// Registry is one node's cluster registry: the handler serving /v2/...,
// and PruneLocal for the node's own storage.
type Registry struct{ s *server }

func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.s.ServeHTTP(w, req) }

// New returns the registry, serving /v2/....
func New(o Options) (*Registry, error) {
	if o.Dir == "" {
		return nil, errors.New("registry: Options.Dir is required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.PeerClient == nil {
		o.PeerClient = &http.Client{Transport: &http.Transport{
			Proxy:                 nil, // peers are cluster-internal
			ResponseHeaderTimeout: 15 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
		}}
	}
	s := &server{
		blobDir: filepath.Join(o.Dir, "blobs"),
		tmpDir:  filepath.Join(o.Dir, "tmp"),
		peers:   o.Peers,
		client:  o.PeerClient,
		log:     o.Log,
		authz:   o.Authorize,
		tags:    o.Tags,
	}
	for _, d := range []string{s.blobDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("registry: create %s: %w", d, err)
		}
	}
	s.blobs = &diskBlobs{dir: s.blobDir, tmpDir: s.tmpDir}
	var err error
	if s.store, err = newManifestStore(filepath.Join(o.Dir, "manifests")); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	s.inner = ggcr.New(
		ggcr.WithBlobHandler(s.blobs),
		ggcr.Logger(slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug)),
	)
	if err := s.replay(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if s.authz {
		s.links = &blobLinks{dir: filepath.Join(o.Dir, "links")}
		if _, err := os.Stat(s.links.dir); errors.Is(err, os.ErrNotExist) {
			recs, bodies, _ := s.store.load()
			if err := s.links.linkPersisted(recs, bodies); err != nil {
				return nil, fmt.Errorf("registry: %w", err)
			}
			if err := os.MkdirAll(s.links.dir, 0o755); err != nil {
				return nil, fmt.Errorf("registry: %w", err)
			}
		}
	}
	return &Registry{s: s}, nil
}

// replay loads persisted manifests into ggcr's memory. Images go before
// indexes because ggcr refuses an index whose children it does not know.
func (s *server) replay() error {
	recs, bodies, skipped := s.store.load()
	for _, err := range skipped {
		s.log.Warn("registry: skipping persisted manifest", "err", err)
	}
	pending := recs
	for len(pending) > 0 {
		var retry []manifestRecord
		for _, rec := range pending {
			code, msg := s.innerPut(rec.Repo, rec.Reference, rec.MediaType, bodies[rec.Digest])
			switch {
			case code == http.StatusCreated:
			case types.MediaType(rec.MediaType).IsIndex():
				retry = append(retry, rec) // a child may come later in this pass
			default:
				s.log.Warn("registry: persisted manifest rejected", "repo", rec.Repo, "ref", rec.Reference, "status", code, "msg", msg)
			}
		}
		if len(retry) == len(pending) {
			for _, rec := range retry {
				s.log.Warn("registry: persisted index has missing children", "repo", rec.Repo, "ref", rec.Reference)
			}
			break
		}
		pending = retry
	}
	s.log.Debug("registry: manifests loaded", "records", len(recs))
	return nil
}

// innerPut stores a manifest in ggcr's memory only.
func (s *server) innerPut(repo, ref, mediaType string, body []byte) (int, string) {
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	return rec.Code, strings.TrimSpace(rec.Body.String())
}

// hasManifest asks ggcr whether repo:ref is known here.
func (s *server) hasManifest(ctx context.Context, repo, ref string) bool {
	req := httptest.NewRequestWithContext(ctx, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, nil)
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

// hasBlob says whether the blob is stored here (its digest was checked
// when it was stored).
func (s *server) hasBlob(digest string) bool {
	h, err := v1.NewHash(digest)
	if err != nil {
		return false
	}
	_, err = s.blobs.Stat(context.Background(), "", h)
	return err == nil
}

// putManifest stores a manifest in memory and on disk, under ref and its digest.
func (s *server) putManifest(repo, ref, mediaType string, body []byte) (int, string, error) {
	s.putMu.Lock()
	defer s.putMu.Unlock()
	code, msg := s.innerPut(repo, ref, mediaType, body)
	if code != http.StatusCreated {
		return code, msg, nil
	}
	digest := sha256Digest(body)
	for _, r := range uniq(ref, digest) {
		if err := s.store.save(manifestRecord{Repo: repo, Reference: r, MediaType: mediaType, Digest: digest}, body); err != nil {
			return http.StatusInternalServerError, "", err
		}
	}
	return code, msg, nil
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}

// target is a parsed /v2/<repo>/{manifests,blobs}/<ref> path.
type target struct {
	repo, kind, ref string
}

func parseTarget(path string) (target, bool) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return target{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 {
		return target{}, false
	}
	kind := parts[len(parts)-2]
	if kind != "manifests" && kind != "blobs" {
		return target{}, false
	}
	return target{repo: strings.Join(parts[:len(parts)-2], "/"), kind: kind, ref: parts[len(parts)-1]}, true
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := Identity{Role: RoleAdmin, Name: "anyone"} // without authorization
	if s.authz {
		var ok bool
		if id, ok = s.authenticate(w, r); !ok {
			return
		}
		if !s.authorized(w, r, id) {
			return
		}
	}
	if r.URL.Path == "/v2/_catalog" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		s.serveCatalog(w, r, id)
		return
	}
	if repo, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/tags/list"); ok && s.tags != nil && r.Method == http.MethodGet {
		s.serveTagList(w, r, repo)
		return
	}
	t, ok := parseTarget(r.URL.Path)
	if s.authz && (strings.Contains(r.URL.Path, "/blobs/uploads/") || (ok && t.kind == "blobs" && t.ref == "uploads")) {
		repo, _ := repoOfPath(r.URL.Path)
		s.serveUpload(w, r, repo)
		return
	}
	if !ok || (t.kind == "blobs" && t.ref == "uploads") {
		s.inner.ServeHTTP(w, r)
		return
	}
	if !repoPattern.MatchString(t.repo) || len(t.repo) > 255 {
		writeError(w, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid repository name %q", t.repo))
		return
	}
	isDigest := digestPattern.MatchString(t.ref)
	if !isDigest && (t.kind == "blobs" || !tagPattern.MatchString(t.ref)) {
		code := "MANIFEST_INVALID"
		if t.kind == "blobs" {
			code = "DIGEST_INVALID"
		}
		writeError(w, http.StatusBadRequest, code, fmt.Sprintf("invalid reference %q", t.ref))
		return
	}

	if t.kind == "manifests" && s.tags != nil {
		if !isDigest && !s.serveTag(w, r, &t, id) {
			return
		}
		if isDigest && r.Method == http.MethodDelete {
			if !s.untagDigest(w, r, t) {
				return
			}
		}
	}
	if s.links != nil && t.kind == "blobs" && !s.serveBlobLinked(w, r, t) {
		return
	}
	switch {
	case t.kind == "manifests" && r.Method == http.MethodPut:
		s.servePutManifest(w, r, t, isDigest, id)
		return
	case t.kind == "manifests" && r.Method == http.MethodDelete:
		rec := httptest.NewRecorder()
		s.inner.ServeHTTP(rec, r)
		if rec.Code == http.StatusAccepted {
			if err := s.store.remove(t.repo, t.ref); err != nil {
				s.log.Error("registry: delete manifest", "err", err)
				writeError(w, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", err.Error())
				return
			}
		}
		copyRecorded(w, rec)
		return
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		if s.peers != nil && r.Header.Get(PeerHeader) == "" {
			s.fillFromPeers(r.Context(), t, r.Header.Values("Accept"))
		}
	}
	s.inner.ServeHTTP(w, r)
}

func (s *server) servePutManifest(w http.ResponseWriter, r *http.Request, t target, isDigest bool, id Identity) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxManifestBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", fmt.Sprintf("manifest larger than %d bytes or unreadable: %v", maxManifestBytes, err))
		return
	}
	digest := sha256Digest(body)
	// ggcr would store bytes under any digest it is given; refuse a lie.
	if isDigest && digest != t.ref {
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest digest is %s, not %s", digest, t.ref))
		return
	}
	// With a cluster tag store the manifest is kept here by digest only;
	// the tag goes to the store once the bytes are safe.
	ref := t.ref
	if s.tags != nil {
		ref = digest
	}
	code, msg, err := s.putManifest(t.repo, ref, r.Header.Get("Content-Type"), body)
	if err == nil && code == http.StatusCreated && s.tags != nil && !isDigest {
		err = s.tags.Put(r.Context(), t.repo, t.ref, Tag{Digest: digest, MediaType: r.Header.Get("Content-Type"), Pushed: time.Now().UTC(), By: id.String()})
	}
	if err != nil {
		s.log.Error("registry: persist manifest", "repo", t.repo, "ref", t.ref, "err", err)
		writeError(w, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", err.Error())
		return
	}
	if code != http.StatusCreated {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, msg+"\n") //nolint:errcheck // client went away
		return
	}
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Location", "/v2/"+t.repo+"/manifests/"+digest)
	w.WriteHeader(http.StatusCreated)
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes()) //nolint:errcheck // client went away
}

// writeError answers in the registry error format ({"errors":[{code,message}]}).
func writeError(w http.ResponseWriter, status int, code, msg string) {
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct { //nolint:errcheck // client went away
		Errors []item `json:"errors"`
	}{[]item{{code, msg}}})
}
