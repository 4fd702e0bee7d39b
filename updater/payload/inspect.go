package payload

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Local is a payload read from a file or directory in order to publish it
// (berthctl os push): its manifest and the OCI image to upload.
type Local struct {
	Manifest Manifest
	// Verified tells whether the manifest's signature was checked. An
	// unverified payload is only published: every node that installs it
	// verifies the signature itself.
	Verified bool
	// Image is the payload as stored, byte for byte: pushing it gives the
	// same OCI manifest digest as Digest.
	Image  v1.Image
	Digest v1.Hash
	// Size is the number of bytes of the OCI manifest, the envelope and
	// the three parts.
	Size   int64
	Source string
}

// OpenLocal reads the payload at source, an OCI layout directory
// ("DIR", "DIR:TAG", "DIR@sha256:...") or an OCI archive file, with or
// without the oci: and oci-archive: prefixes; registry references are
// refused. With keys the signature is verified as Open does. Without keys
// the signed manifest is read but its signature is not checked; the form
// of everything and the match of the three parts with the manifest are
// checked either way, and the parts are checked again while they are read.
func OpenLocal(source string, keys []ed25519.PublicKey) (*Local, error) {
	store, raw, err := resolveLocal(source)
	if err != nil {
		return nil, fmt.Errorf("open payload %s: %w", source, err)
	}
	l := &Local{Source: source, Digest: sha256Hash(raw), Verified: len(keys) > 0}
	manifestOf := func(env *Envelope) (Manifest, error) { return ParseManifest(env.Manifest) }
	if l.Verified {
		manifestOf = func(env *Envelope) (Manifest, error) { return env.Verify(keys) }
	}
	c, err := checkPayload(store, raw, manifestOf)
	if err != nil {
		return nil, fmt.Errorf("open payload %s: %w", source, err)
	}
	l.Manifest = c.manifest
	img := &storedImage{raw: raw, manifest: c.oci, envelope: c.envelope, store: store, parts: map[v1.Hash]storedPart{}}
	l.Size = int64(len(raw)) + img.manifest.Config.Size
	for i, b := range l.Manifest.blobs() {
		d := img.manifest.Layers[i]
		l.Size += d.Size
		img.parts[d.Digest] = storedPart{desc: d, name: payloadParts[i].name, blob: *b, store: store}
	}
	if l.Image, err = partial.CompressedToImage(img); err != nil {
		return nil, fmt.Errorf("open payload %s: %w", source, err)
	}
	return l, nil
}

// resolveLocal finds the layout directory or archive that source names
// and reads its OCI manifest.
func resolveLocal(source string) (blobStore, []byte, error) {
	switch {
	case strings.HasPrefix(source, PrefixLayout):
		return openLayoutSource(strings.TrimPrefix(source, PrefixLayout), false)
	case strings.HasPrefix(source, PrefixArchive):
		return openLayoutSource(strings.TrimPrefix(source, PrefixArchive), true)
	case strings.HasPrefix(source, PrefixRegistry):
		return nil, nil, errors.New("a registry reference, not a file: give the OCI layout directory or archive that berth-build wrote")
	}
	p := source
	st, err := os.Stat(p)
	if err != nil {
		if q, _, ok := splitRef(source); ok {
			p = q
			st, err = os.Stat(p)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: no such file or directory", p)
	}
	return openLayoutSource(source, !st.IsDir())
}

// storedImage is a payload in a layout as go-containerregistry sees it:
// the OCI manifest and envelope exactly as stored, and the parts read from
// the store when they are uploaded.
type storedImage struct {
	raw      []byte
	manifest v1.Manifest
	envelope []byte
	store    blobStore
	parts    map[v1.Hash]storedPart
}

func (s *storedImage) RawManifest() ([]byte, error)        { return s.raw, nil }
func (s *storedImage) RawConfigFile() ([]byte, error)      { return s.envelope, nil }
func (s *storedImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (s *storedImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	p, ok := s.parts[h]
	if !ok {
		return nil, fmt.Errorf("payload has no layer %s", h)
	}
	return p, nil
}

// storedPart is one part of a stored payload.
type storedPart struct {
	desc  v1.Descriptor
	name  string
	blob  Blob
	store blobStore
}

func (p storedPart) Digest() (v1.Hash, error)            { return p.desc.Digest, nil }
func (p storedPart) Size() (int64, error)                { return p.desc.Size, nil }
func (p storedPart) MediaType() (types.MediaType, error) { return p.desc.MediaType, nil }

// Compressed streams the part, checked against the signed manifest, so a
// file changed since OpenLocal fails the upload.
func (p storedPart) Compressed() (io.ReadCloser, error) {
	rc, err := p.store.blob(p.desc)
	if err != nil {
		return nil, fmt.Errorf("payload %s: %w", p.name, err)
	}
	return newVerifyingReader(p.name, p.blob, rc), nil
}
