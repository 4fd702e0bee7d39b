package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// localIdentityKey carries the identity of an in-process request; only this
// package can set it, so no remote client can claim one.
type localIdentityKey struct{}

// LocalTransport serves requests with this registry's handler in process,
// as identity id (the node itself, for the agent's rollout driver): the
// agent reading its own registry then pays for no TLS, no socket and no
// second copy. Access rules apply as to any client; a miss is fetched from
// the peers as usual. The request's host is ignored.
func (r *Registry) LocalTransport(id Identity) http.RoundTripper {
	return localTransport{h: r.s, id: id}
}

type localTransport struct {
	h  http.Handler
	id Identity
}

func (t localTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := context.WithValue(req.Context(), localIdentityKey{}, t.id)
	in := req.Clone(ctx)
	in.RequestURI = in.URL.RequestURI()
	in.RemoteAddr = "in-process"
	if in.Body == nil {
		in.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &pipeResponse{header: http.Header{}, body: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			if p := recover(); p != nil {
				pw.CloseWithError(fmt.Errorf("registry handler panicked: %v", p))
			}
			w.WriteHeader(http.StatusOK) // a handler that wrote nothing
			pw.Close()
		}()
		t.h.ServeHTTP(w, in)
	}()
	select {
	case <-w.ready:
	case <-ctx.Done():
		pr.CloseWithError(ctx.Err())
		return nil, ctx.Err()
	}
	resp := &http.Response{
		Status:        fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.sent,
		Body:          pr,
		ContentLength: -1,
		Request:       req,
	}
	if n, err := strconv.ParseInt(w.sent.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = n
	}
	if req.Method == http.MethodHead {
		pr.Close()
		resp.Body = http.NoBody
	}
	return resp, nil
}

// pipeResponse is the handler's side of an in-process response: the status
// and headers are handed over once, the body streams through a pipe.
type pipeResponse struct {
	header http.Header
	body   *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
	status int
	sent   http.Header
}

func (w *pipeResponse) Header() http.Header { return w.header }

func (w *pipeResponse) WriteHeader(code int) {
	w.once.Do(func() {
		w.status, w.sent = code, w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// localIdentity returns the identity of an in-process request.
func localIdentity(r *http.Request) (Identity, bool) {
	id, ok := r.Context().Value(localIdentityKey{}).(Identity)
	return id, ok
}
