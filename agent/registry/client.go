package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Client talks to cluster registries (the agents' /v2/ API) for berthctl
// and for the agent itself. Its Transport carries the caller's TLS set-up:
// berthctl's admin or tenant certificate, the node's certificate.
type Client struct {
	// Transport is used for every request; nil is http.DefaultTransport.
	Transport http.RoundTripper
}

func (c *Client) transport() http.RoundTripper {
	if c.Transport == nil {
		return http.DefaultTransport
	}
	return c.Transport
}

// options are the go-containerregistry options of one call.
func (c *Client) options(ctx context.Context, more ...remote.Option) []remote.Option {
	return append([]remote.Option{remote.WithContext(ctx), remote.WithTransport(c.transport())}, more...)
}

// Push uploads img to ref (HOST/REPO:TAG). progress, when not nil, is
// called with the bytes done and the total known so far (the total grows
// as blobs are looked at; a retried upload makes done go back).
func (c *Client) Push(ctx context.Context, ref name.Reference, img v1.Image, progress func(done, total int64)) error {
	if progress == nil {
		if err := remote.Write(ref, img, c.options(ctx)...); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		return nil
	}
	updates := make(chan v1.Update, 64)
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for u := range updates {
			if u.Error == nil {
				progress(u.Complete, u.Total)
			}
		}
	}()
	err := remote.Write(ref, img, c.options(ctx, remote.WithProgress(updates))...)
	// remote.Write closes updates when it is done, except when it refuses
	// its options before starting; then the forwarder is left to the
	// garbage collector rather than waited for.
	select {
	case <-forwarded:
	case <-time.After(time.Second):
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// Has tells whether the registry at ref's host has ref's manifest (a tag
// or a digest). A cluster registry asks its peers before it answers that
// it has not, so its answer holds for the whole cluster.
func (c *Client) Has(ctx context.Context, ref name.Reference) (bool, error) {
	_, err := remote.Head(ref, c.options(ctx)...)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", ref, err)
	}
	return true, nil
}

// Download reads every blob of the image at ref through the registry, so
// that a cluster registry fetches what it lacks from its peers and keeps
// it: the node's own registry then holds the image and installing reads
// from local disk. It returns the bytes read (config and layers).
func (c *Client) Download(ctx context.Context, ref name.Reference) (int64, error) {
	img, err := remote.Image(ref, c.options(ctx)...)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", ref, err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return 0, fmt.Errorf("download %s: config: %w", ref, err)
	}
	total := int64(len(raw))
	layers, err := img.Layers()
	if err != nil {
		return total, fmt.Errorf("download %s: %w", ref, err)
	}
	for _, l := range layers {
		n, err := drainBlob(l)
		total += n
		if err != nil {
			return total, fmt.Errorf("download %s: %w", ref, err)
		}
	}
	return total, nil
}

// drainBlob reads a layer's compressed blob to the end; ggcr verifies it
// against its digest while it is read.
func drainBlob(l v1.Layer) (int64, error) {
	d, _ := l.Digest()
	rc, err := l.Compressed()
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", d, err)
	}
	n, err := io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("blob %s: %w", d, err)
	}
	return n, nil
}

// isNotFound tells whether err is a registry's 404.
func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
