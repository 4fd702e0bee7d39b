package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
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

// Download makes every blob of the image at ref present in the registry
// behind the transport, without reading them back: a cluster registry
// answers a blob's HEAD only after it holds the blob, fetching what it
// lacks from its peers and verifying its digest on the way. A node's own
// registry then holds the image and installing reads from local disk; a
// blob it already holds costs nothing (before, every blob was read and
// hashed again: 120 MB and minutes on an emulated node). It returns the
// image's blob bytes (config and layers).
func (c *Client) Download(ctx context.Context, ref name.Reference) (int64, error) {
	img, err := remote.Image(ref, c.options(ctx)...)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("download %s: manifest: %w", ref, err)
	}
	var total int64
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if err := c.ensureBlob(ctx, ref.Context().Digest(d.Digest.String())); err != nil {
			return total, fmt.Errorf("download %s: %w", ref, err)
		}
		total += d.Size
	}
	return total, nil
}

// ensureBlob asks the registry whether it holds the blob (a HEAD).
func (c *Client) ensureBlob(ctx context.Context, d name.Digest) error {
	l, err := remote.Layer(d, c.options(ctx)...)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.DigestStr(), err)
	}
	ok, err := partial.Exists(l)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.DigestStr(), err)
	}
	if !ok {
		return fmt.Errorf("blob %s: not in the registry nor at its peers", d.DigestStr())
	}
	return nil
}

// isNotFound tells whether err is a registry's 404.
func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
