package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
)

// API paths served on the agent's HTTPS API listener.
const (
	ContainersPath = "/v1/containers"  // GET: containers on this node, with stats
	LogsPathPrefix = "/v1/containers/" // GET /v1/containers/ID/logs[?follow=1&tail=N]
	logsSuffix     = "/logs"
)

// Routes adds the node API to mux. Every request needs a client
// certificate of the cluster CA; a tenant's certificate (CN tenant:NAME)
// sees only that tenant's containers.
func (m *Manager) Routes(mux *http.ServeMux) {
	mux.HandleFunc(ContainersPath, m.serveContainers)
	mux.HandleFunc(LogsPathPrefix, m.serveLogs)
}

// caller returns the tenant the caller is limited to ("" for the cluster's
// own identities: nodes, admin, ops) or ok=false without a verified
// certificate.
func caller(r *http.Request) (tenant string, ok bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", false
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	if t, found := jobs.TenantFromCN(cn); found {
		return t, t != ""
	}
	return "", true
}

func httpError(w http.ResponseWriter, code int, msg string) {
	http.Error(w, msg, code)
}

func (m *Manager) serveContainers(w http.ResponseWriter, r *http.Request) {
	tenant, ok := caller(r)
	if !ok {
		httpError(w, http.StatusUnauthorized, "a client certificate of the cluster CA is required")
		return
	}
	if r.Method != http.MethodGet {
		httpError(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	if want := r.URL.Query().Get("tenant"); want != "" {
		if tenant != "" && want != tenant {
			httpError(w, http.StatusForbidden, "tenant "+tenant+" may not read tenant "+want)
			return
		}
		tenant = want
	}
	cs, err := m.Containers(r.Context())
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := []ContainerInfo{}
	for _, c := range cs {
		if tenant != "" && c.Tenant != tenant {
			continue
		}
		if c.State.Status == runtime.StatusRunning {
			if st, err := m.o.Runtime.Stats(r.Context(), c.ID); err == nil {
				c.Stats = &st
			}
		}
		out = append(out, c)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (m *Manager) serveLogs(w http.ResponseWriter, r *http.Request) {
	tenant, ok := caller(r)
	if !ok {
		httpError(w, http.StatusUnauthorized, "a client certificate of the cluster CA is required")
		return
	}
	id, found := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, LogsPathPrefix), logsSuffix)
	if !found || id == "" || strings.Contains(id, "/") {
		http.NotFound(w, r)
		return
	}
	st, err := m.o.Runtime.Get(r.Context(), id)
	if errors.Is(err, runtime.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no container "+id+" on this node")
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if tenant != "" && st.Labels[labelTenant] != tenant {
		// Not 403: a tenant learns nothing about other tenants' containers.
		httpError(w, http.StatusNotFound, "no container "+id+" on this node")
		return
	}
	tail, _ := strconv.Atoi(r.URL.Query().Get("tail"))
	follow := r.URL.Query().Get("follow") == "1"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	logPath := m.o.Runtime.LogPath(id)
	if err := writeLog(w, logPath, tail); err != nil && !errors.Is(err, os.ErrNotExist) {
		return
	}
	if follow {
		m.followLog(r.Context(), w, id, logPath)
	}
}

// writeLog writes the rotated file and the current one (the last tail
// lines when tail > 0).
func writeLog(w io.Writer, logPath string, tail int) error {
	var lines []string
	for _, p := range []string{logPath + ".1", logPath} {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if tail > 0 && len(lines) > 4*tail {
				lines = lines[len(lines)-tail:]
			}
		}
		f.Close()
	}
	if tail > 0 && len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	for _, l := range lines {
		if _, err := io.WriteString(w, l+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// followLog streams lines appended to the log until the container ends or
// the caller goes away.
func (m *Manager) followLog(ctx context.Context, w http.ResponseWriter, id, logPath string) {
	f, err := os.Open(logPath)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return
	}
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for ctx.Err() == nil {
		n, _ := f.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			continue
		}
		st, err := m.o.Runtime.Get(ctx, id)
		if err != nil || st.Status == runtime.StatusExited {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
