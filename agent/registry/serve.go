package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
)

// authChallenge is the WWW-Authenticate value of a 401: the registry
// authenticates by TLS client certificate, which no token or password
// replaces; the realm says so to a human reading a client's error.
const authChallenge = `Basic realm="berth cluster registry: present a client certificate of the cluster CA"`

// authenticate finds the caller's identity or answers 401.
func (s *server) authenticate(w http.ResponseWriter, r *http.Request) (Identity, bool) {
	if id, ok := localIdentity(r); ok {
		return id, true // LocalTransport: this process, as the identity it named
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		w.Header().Set("WWW-Authenticate", authChallenge)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "a client certificate of the cluster CA is required")
		return Identity{}, false
	}
	id := IdentityFromCert(r.TLS.VerifiedChains[0][0])
	if id.Role == RoleNone {
		w.Header().Set("WWW-Authenticate", authChallenge)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED",
			"certificate CN "+strconv.Quote(id.Name)+" is no registry identity (want admin, ops, tenant:NAME or a node)")
		return Identity{}, false
	}
	return id, true
}

// authorized applies Authorize to the request's repository and action and
// answers 403 DENIED when it refuses. The base endpoint and the catalog
// (filtered later) need only an identity.
func (s *server) authorized(w http.ResponseWriter, r *http.Request, id Identity) bool {
	repo, ok := repoOfPath(r.URL.Path)
	if !ok || repo == "" {
		return true // /v2/, /v2/_catalog, or no registry route (ggcr's 404)
	}
	action := requestAction(r.Method)
	checks := []struct {
		repo   string
		action Action
	}{{repo, action}}
	// A cross-repository mount reads the source repository.
	if from := r.URL.Query().Get("from"); from != "" && r.Method == http.MethodPost {
		checks = append(checks, struct {
			repo   string
			action Action
		}{from, ActionPull})
	}
	for _, c := range checks {
		d := Authorize(id, c.repo, c.action)
		if !d.Allow {
			s.log.Info("registry: refused", "identity", id.String(), "repo", c.repo, "action", string(c.action), "reason", d.Reason)
			writeError(w, http.StatusForbidden, "DENIED", d.Reason)
			return false
		}
	}
	return true
}

// serveCatalog lists the repositories the caller may pull, from the tag
// store when there is one (so every node answers the same), with the
// distribution spec's n/last pagination.
func (s *server) serveCatalog(w http.ResponseWriter, r *http.Request, id Identity) {
	var repos []string
	if s.tags != nil {
		entries, err := s.tags.List(r.Context(), "")
		if err != nil {
			s.unavailable(w, err)
			return
		}
		for _, e := range entries {
			repos = append(repos, e.Repo)
		}
	} else {
		req := httptest.NewRequestWithContext(r.Context(), http.MethodGet, "/v2/_catalog", nil)
		rec := httptest.NewRecorder()
		s.inner.ServeHTTP(rec, req)
		var body struct {
			Repositories []string `json:"repositories"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			writeError(w, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", "catalog: "+err.Error())
			return
		}
		repos = body.Repositories
	}
	repos = slices.DeleteFunc(repos, func(repo string) bool { return !Authorize(id, repo, ActionPull).Allow })
	slices.Sort(repos)
	repos = slices.Compact(repos)
	page, more := paginate(repos, r)
	if more {
		w.Header().Set("Link", `</v2/_catalog?last=`+page[len(page)-1]+`&n=`+r.URL.Query().Get("n")+`>; rel="next"`)
	}
	writeJSON(w, struct {
		Repositories []string `json:"repositories"`
	}{append([]string{}, page...)})
}

// serveTagList answers /v2/REPO/tags/list from the tag store.
func (s *server) serveTagList(w http.ResponseWriter, r *http.Request, repo string) {
	if !repoPattern.MatchString(repo) {
		writeError(w, http.StatusBadRequest, "NAME_INVALID", "invalid repository name "+strconv.Quote(repo))
		return
	}
	entries, err := s.tags.List(r.Context(), repo)
	if err != nil {
		s.unavailable(w, err)
		return
	}
	var tags []string
	for _, e := range entries {
		if e.Repo == repo {
			tags = append(tags, e.Name)
		}
	}
	if len(tags) == 0 {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository "+repo+" has no tags")
		return
	}
	slices.Sort(tags)
	page, more := paginate(tags, r)
	if more {
		w.Header().Set("Link", `</v2/`+repo+`/tags/list?last=`+page[len(page)-1]+`&n=`+r.URL.Query().Get("n")+`>; rel="next"`)
	}
	writeJSON(w, struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{repo, append([]string{}, page...)})
}

// paginate applies ?last=X&n=N to a sorted list.
func paginate(list []string, r *http.Request) (page []string, more bool) {
	if last := r.URL.Query().Get("last"); last != "" {
		i, _ := slices.BinarySearch(list, last)
		for i < len(list) && list[i] <= last {
			i++
		}
		list = list[i:]
	}
	if n, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && n >= 0 && n < len(list) {
		return list[:n], n > 0
	}
	return list, false
}

// serveTag handles a manifest request by tag against the tag store. A read
// is turned into a read by digest (t and r are rewritten) and goes on;
// a delete is answered here. It reports whether the caller should go on.
func (s *server) serveTag(w http.ResponseWriter, r *http.Request, t *target, id Identity) bool {
	switch r.Method {
	case http.MethodPut:
		return true
	case http.MethodGet, http.MethodHead:
		tag, ok, err := s.tags.Get(r.Context(), t.repo, t.ref)
		if err != nil {
			s.unavailable(w, err)
			return false
		}
		if !ok {
			writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown: "+t.repo+":"+t.ref)
			return false
		}
		t.ref = tag.Digest
		r.URL.Path = "/v2/" + t.repo + "/manifests/" + tag.Digest
		r.URL.RawPath = ""
		return true
	case http.MethodDelete:
		deleted, err := s.tags.Delete(r.Context(), t.repo, t.ref)
		if err != nil {
			s.unavailable(w, err)
			return false
		}
		if !deleted {
			writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown: "+t.repo+":"+t.ref)
			return false
		}
		s.log.Info("registry: tag deleted", "repo", t.repo, "tag", t.ref, "identity", id.String())
		w.WriteHeader(http.StatusAccepted)
		return false
	}
	return true
}

// untagDigest removes the tags of t.repo that point at the digest being
// deleted, as the distribution spec has it (a deleted manifest's tags go too).
func (s *server) untagDigest(w http.ResponseWriter, r *http.Request, t target) bool {
	entries, err := s.tags.List(r.Context(), t.repo)
	if err != nil {
		s.unavailable(w, err)
		return false
	}
	var errs []error
	for _, e := range entries {
		if e.Repo == t.repo && e.Digest == t.ref {
			if _, err := s.tags.Delete(r.Context(), e.Repo, e.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.unavailable(w, err)
		return false
	}
	return true
}

func (s *server) unavailable(w http.ResponseWriter, err error) {
	s.log.Warn("registry: tag store", "err", err)
	writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "tag store unavailable: "+err.Error())
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v) //nolint:errcheck // client went away
}
