package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Platform is the only platform berth nodes run.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// layerParallelism bounds concurrent layer downloads of one pull.
const layerParallelism = 3

// Pull fetches ref (by tag or @sha256 digest) into the store and returns its
// record. Every manifest, config and layer is checked against its digest and
// every layer's uncompressed content against its diffID before it is kept.
func (s *Store) Pull(ctx context.Context, ref string) (Image, error) {
	return s.PullWithAuth(ctx, ref, nil)
}

// PullWithAuth is Pull with credentials for the registry (nil = anonymous).
func (s *Store) PullWithAuth(ctx context.Context, ref string, auth authn.Authenticator) (Image, error) {
	r, err := s.parseRef(ref)
	if err != nil {
		return Image{}, err
	}
	s.gcLock.RLock()
	defer s.gcLock.RUnlock()

	opts := s.remoteOptions(ctx)
	if auth != nil {
		opts = append(opts, remote.WithAuth(auth))
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return Image{}, s.registryError(r, err)
	}
	if d, ok := r.(name.Digest); ok && desc.Digest.String() != d.DigestStr() {
		return Image{}, fmt.Errorf("image %s: digest mismatch: registry served manifest %s", ref, desc.Digest)
	}
	img, err := desc.Image()
	if err != nil {
		if strings.Contains(err.Error(), "no child with platform") {
			return Image{}, fmt.Errorf("image %s has no %s/%s variant", ref, Platform.OS, Platform.Architecture)
		}
		return Image{}, s.registryError(r, err)
	}
	rec, err := s.storeImage(ctx, img, []string{r.Name()}, true)
	if err != nil {
		return Image{}, s.registryError(r, err)
	}
	return rec, nil
}

func (s *Store) parseRef(ref string) (name.Reference, error) {
	var opts []name.Option
	if s.opts.Insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("bad image reference %q: %w", ref, err)
	}
	return r, nil
}

func (s *Store) remoteOptions(ctx context.Context) []remote.Option {
	rt := s.opts.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	if !s.opts.Insecure {
		rt = httpsOnly{rt}
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(rt),
		remote.WithPlatform(Platform),
	}
}

// httpsOnly upgrades every request to https. go-containerregistry talks
// plain http to private (RFC 1918) and loopback addresses, but berth
// registries on node addresses speak TLS, and without Insecure nothing may
// travel in clear.
type httpsOnly struct{ next http.RoundTripper }

func (h httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	return h.next.RoundTrip(req)
}

var servedDigest = regexp.MustCompile(`manifest digest: "(sha256:[a-f0-9]{64})"`)

// registryError turns go-containerregistry's errors into one clear line.
func (s *Store) registryError(r name.Reference, err error) error {
	reg := r.Context().RegistryStr()
	var te *transport.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("pull %s: %w", r, err)
	case errors.Is(err, ErrNotFound), strings.Contains(err.Error(), "digest mismatch"):
		return err
	case errors.As(err, &te):
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				return &notFoundError{fmt.Sprintf("image %s not found in %s", r, reg)}
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("registry %s refused access to %s: %s", reg, r, d.Message)
			}
		}
		if te.StatusCode == http.StatusNotFound {
			return &notFoundError{fmt.Sprintf("image %s not found in %s", r, reg)}
		}
		return fmt.Errorf("pull %s from %s: %w", r, reg, err)
	case strings.Contains(err.Error(), "does not match requested digest"):
		served := "another digest"
		if m := servedDigest.FindStringSubmatch(err.Error()); m != nil {
			served = m[1]
		}
		return fmt.Errorf("image %s: digest mismatch: registry served manifest %s", r, served)
	// Not net.Error: syscall.Errno satisfies it, and a full disk is no
	// network problem.
	case errors.As(err, &opErr), errors.As(err, &dnsErr):
		return fmt.Errorf("registry %s unreachable: %w", reg, err)
	}
	return fmt.Errorf("pull %s from %s: %w", r, reg, err)
}

// storeImage unpacks img's layers (each once per diffID), then writes its
// record and points refs at it. fromRegistry layers are streamed compressed
// and checked against both their digest and diffID; imported ones are read
// uncompressed and checked against their diffID.
func (s *Store) storeImage(ctx context.Context, img v1.Image, refs []string, fromRegistry bool) (Image, error) {
	digest, err := img.Digest()
	if err != nil {
		return Image{}, fmt.Errorf("manifest digest: %w", err)
	}
	manifest, err := img.Manifest()
	if err != nil {
		return Image{}, fmt.Errorf("manifest: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("image config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return Image{}, fmt.Errorf("image layers: %w", err)
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) || len(layers) != len(manifest.Layers) {
		return Image{}, fmt.Errorf("image %s: manifest has %d layers but config lists %d diffIDs", digest, len(manifest.Layers), len(cfg.RootFS.DiffIDs))
	}
	rec := Image{
		Digest:     digest.String(),
		Entrypoint: cfg.Config.Entrypoint,
		Cmd:        cfg.Config.Cmd,
		Env:        cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir,
		User:       cfg.Config.User,
	}
	if len(refs) > 0 {
		rec.Ref = refs[0]
	}
	for i, l := range manifest.Layers {
		if !isLayerMediaType(l.MediaType) {
			return Image{}, fmt.Errorf("image %s: layer %d has media type %q, not a filesystem layer", digest, i, l.MediaType)
		}
		rec.Layers = append(rec.Layers, cfg.RootFS.DiffIDs[i].String())
		rec.Size += l.Size
	}

	if err := s.ensureLayers(ctx, layers, cfg.RootFS.DiffIDs, fromRegistry); err != nil {
		return Image{}, err
	}
	if old, err := s.readRecord(rec.Digest, rec.Digest); err == nil && old.Ref != "" {
		rec.Ref = old.Ref // the first name stays; refs.json has all of them
	}
	if err := s.writeRecord(rec); err != nil {
		return Image{}, err
	}
	if err := s.updateRefs(func(m map[string]string) {
		for _, r := range refs {
			m[r] = rec.Digest
		}
	}); err != nil {
		return Image{}, err
	}
	return rec, nil
}

func isLayerMediaType(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.DockerForeignLayer,
		types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
		return true
	}
	return false
}

// ensureLayers unpacks the missing layers, a few at a time.
func (s *Store) ensureLayers(ctx context.Context, layers []v1.Layer, diffIDs []v1.Hash, fromRegistry bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, layerParallelism)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for i := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := s.ensureLayer(ctx, layers[i], diffIDs[i], fromRegistry); err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// ensureLayer makes layers/<diffid> exist, doing the work at most once per
// diffID however many pulls ask for it at the same time.
func (s *Store) ensureLayer(ctx context.Context, l v1.Layer, diffID v1.Hash, fromRegistry bool) error {
	if diffID.Algorithm != "sha256" || !sha256Hex.MatchString(diffID.Hex) {
		return fmt.Errorf("layer diffID %q is not a sha256 digest", diffID)
	}
	unlock, err := s.layerLocks.lock(ctx, diffID.Hex)
	if err != nil {
		return err
	}
	defer unlock()
	final := s.layerDir(diffID.String())
	if _, err := os.Lstat(final); err == nil {
		return nil
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(s.path("tmp"), "layer-"+diffID.Hex[:12]+"-")
	if err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	defer os.RemoveAll(tmp) // gone after a successful rename
	// The layer root becomes a lower directory's root; "./" in the tar may
	// still change it.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	if fromRegistry {
		err = unpackCompressed(ctx, l, diffID, tmp)
	} else {
		err = unpackUncompressed(ctx, l, diffID, tmp)
	}
	if err != nil {
		return err
	}
	if err := commitDir(tmp, final); err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	s.log.Info("layer unpacked", "diffid", diffID.String(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}
