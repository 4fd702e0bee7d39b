package payload

import (
	"archive/tar"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// OCI image layout files.
const (
	ociLayoutFile    = "oci-layout"
	ociLayoutContent = `{"imageLayoutVersion":"1.0.0"}`
	indexFile        = "index.json"
)

// Source prefixes that say what a source is when guessing would be wrong
// (the same spellings as skopeo).
const (
	PrefixLayout   = "oci:"
	PrefixArchive  = "oci-archive:"
	PrefixRegistry = "docker://"
)

// Option changes how Open reaches a source.
type Option func(*openOptions)

type openOptions struct {
	insecure  bool
	transport http.RoundTripper
}

// WithInsecure allows plain HTTP to a registry that is not on loopback
// (loopback registries always get plain HTTP). The signature still
// protects the content; this only gives up the transport's privacy.
func WithInsecure() Option { return func(o *openOptions) { o.insecure = true } }

// WithTransport carries a registry source's requests (the agent's TLS
// set-up, or its in-process registry); the default is
// http.DefaultTransport. Registries are read anonymously.
func WithTransport(rt http.RoundTripper) Option {
	return func(o *openOptions) { o.transport = rt }
}

// Payload is an opened payload whose manifest has been verified. Its parts
// are fetched only when read, and checked while they are.
type Payload struct {
	Manifest Manifest
	// Source describes where the payload was read from, for messages.
	Source string

	store  blobStore
	layers [3]v1.Descriptor
}

// blobStore reads blobs from wherever a payload lives.
type blobStore interface {
	blob(d v1.Descriptor) (io.ReadCloser, error)
}

// Open finds the payload at source, verifies the signature of its
// manifest with keys, and checks that its three layers are exactly the
// signed ones. Only the OCI manifest and the envelope are read: no part is
// fetched before all of that has succeeded.
//
// source is an OCI layout directory ("DIR", "DIR:TAG", "DIR@sha256:..."),
// a file written by WriteTarball ("FILE", "FILE:TAG"), or a registry
// reference ("127.0.0.1:5000/berth/os:0.2.0"). The prefixes oci:,
// oci-archive: and docker:// force one kind. For a registry, ctx also
// bounds the later reads of the parts.
func Open(ctx context.Context, source string, keys []ed25519.PublicKey, opts ...Option) (*Payload, error) {
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(keys) == 0 {
		return nil, errors.New("open payload: no trusted keys given")
	}
	store, rawManifest, err := resolve(ctx, source, &o)
	if err != nil {
		return nil, fmt.Errorf("open payload %s: %w", source, err)
	}
	p, err := verifyPayload(store, rawManifest, keys)
	if err != nil {
		return nil, fmt.Errorf("open payload %s: %w", source, err)
	}
	p.Source = source
	return p, nil
}

// verifyPayload checks an OCI manifest, reads and verifies its envelope,
// and matches the layers against the signed manifest.
func verifyPayload(store blobStore, rawManifest []byte, keys []ed25519.PublicKey) (*Payload, error) {
	c, err := checkPayload(store, rawManifest, func(env *Envelope) (Manifest, error) { return env.Verify(keys) })
	if err != nil {
		return nil, err
	}
	p := &Payload{Manifest: c.manifest, store: store}
	copy(p.layers[:], c.oci.Layers)
	return p, nil
}

// checkedPayload is a payload's OCI manifest whose form, envelope and
// layers were checked against the signed manifest in the envelope.
type checkedPayload struct {
	oci      v1.Manifest
	envelope []byte
	manifest Manifest
}

// checkPayload checks an OCI manifest, reads its envelope, takes the
// signed manifest out of it with manifestOf (which verifies the signature,
// or, for `berthctl os push` without keys, only parses it) and matches the
// layers against it.
func checkPayload(store blobStore, rawManifest []byte, manifestOf func(*Envelope) (Manifest, error)) (checkedPayload, error) {
	var c checkedPayload
	om := &c.oci
	if err := json.Unmarshal(rawManifest, om); err != nil {
		return c, fmt.Errorf("OCI manifest: %w", err)
	}
	if om.SchemaVersion != 2 || om.MediaType != types.OCIManifestSchema1 {
		return c, fmt.Errorf("not an OCI image manifest (schemaVersion %d, mediaType %q)", om.SchemaVersion, truncate(string(om.MediaType)))
	}
	if om.Config.MediaType != EnvelopeType {
		return c, fmt.Errorf("not a berth payload: config media type is %q, want %s", truncate(string(om.Config.MediaType)), EnvelopeType)
	}
	if om.ArtifactType != "" && om.ArtifactType != ArtifactType {
		return c, fmt.Errorf("not a berth payload: artifact type is %q, want %s", truncate(om.ArtifactType), ArtifactType)
	}
	if om.Config.Size <= 0 || om.Config.Size > maxEnvelope {
		return c, fmt.Errorf("payload envelope: size %d is outside 1..%d", om.Config.Size, maxEnvelope)
	}
	var err error
	if c.envelope, err = readBlob(store, om.Config); err != nil {
		return c, fmt.Errorf("payload envelope: %w", err)
	}
	env, err := ParseEnvelope(c.envelope)
	if err != nil {
		return c, err
	}
	if c.manifest, err = manifestOf(env); err != nil {
		return c, err
	}
	if len(om.Layers) != len(payloadParts) {
		return c, fmt.Errorf("OCI manifest has %d layers, want %d (slot, kernel, initrd)", len(om.Layers), len(payloadParts))
	}
	for i, b := range c.manifest.blobs() {
		d, want := om.Layers[i], payloadParts[i]
		if string(d.MediaType) != want.mediaType {
			return c, fmt.Errorf("layer %d has media type %q, want %s", i+1, truncate(string(d.MediaType)), want.mediaType)
		}
		if d.Digest.Algorithm != "sha256" || d.Digest.Hex != b.SHA256 || d.Size != b.Size {
			return c, fmt.Errorf("%s layer is %s (%d bytes), but the signed manifest says sha256:%s (%d bytes)",
				want.name, d.Digest, d.Size, b.SHA256, b.Size)
		}
	}
	return c, nil
}

// readBlob reads a small blob whole and checks it against its descriptor.
func readBlob(store blobStore, d v1.Descriptor) ([]byte, error) {
	rc, err := store.blob(d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := readLimited(rc, d.Size)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(data)) != d.Size {
		return nil, fmt.Errorf("blob %s: %d bytes, want %d", d.Digest, len(data), d.Size)
	}
	if got := sha256Hash(data); got != d.Digest {
		return nil, fmt.Errorf("blob %s: content has digest %s", d.Digest, got)
	}
	return data, nil
}

func (p *Payload) open(i int) (io.ReadCloser, error) {
	rc, err := p.raw(i)
	if err != nil {
		return nil, err
	}
	return newVerifyingReader(payloadParts[i].name, *p.Manifest.blobs()[i], rc), nil
}

func (p *Payload) raw(i int) (io.ReadCloser, error) {
	rc, err := p.store.blob(p.layers[i])
	if err != nil {
		return nil, fmt.Errorf("payload %s: %w", payloadParts[i].name, err)
	}
	return rc, nil
}

// Part names one of a payload's three parts.
type Part int

const (
	PartSlot Part = iota
	PartKernel
	PartInitrd
)

// Unchecked streams a part as stored, without checking it. It is only
// for a reader that checks size and sha256 against p.Manifest itself as
// it reads (the slot writer hashes alongside its writes and refuses a
// mismatch before anything points at the new slot): so each byte is
// hashed once on its way to the disk. Everything else reads Slot, Kernel
// and Initrd.
func (p *Payload) Unchecked(part Part) (io.ReadCloser, error) {
	if part < PartSlot || part > PartInitrd {
		return nil, fmt.Errorf("payload: no part %d", part)
	}
	return p.raw(int(part))
}

// Slot streams the slot filesystem. The reader returns io.EOF only after
// the size and sha256 matched the signed manifest: read until io.EOF, and
// treat any other error (including one at the very end) as tampering.
func (p *Payload) Slot() (io.ReadCloser, error) { return p.open(0) }

// Kernel streams the kernel, checked like Slot.
func (p *Payload) Kernel() (io.ReadCloser, error) { return p.open(1) }

// Initrd streams the initrd, checked like Slot.
func (p *Payload) Initrd() (io.ReadCloser, error) { return p.open(2) }

// resolve works out what kind of source this is and reads its OCI manifest.
func resolve(ctx context.Context, source string, o *openOptions) (blobStore, []byte, error) {
	switch {
	case strings.HasPrefix(source, PrefixLayout):
		return openLayoutSource(strings.TrimPrefix(source, PrefixLayout), false)
	case strings.HasPrefix(source, PrefixArchive):
		return openLayoutSource(strings.TrimPrefix(source, PrefixArchive), true)
	case strings.HasPrefix(source, PrefixRegistry):
		return openRegistry(ctx, strings.TrimPrefix(source, PrefixRegistry), o)
	}
	if st, err := os.Stat(source); err == nil {
		return openLayoutSource(source, !st.IsDir())
	}
	if p, _, ok := splitRef(source); ok {
		if st, err := os.Stat(p); err == nil {
			return openLayoutSource(source, !st.IsDir())
		}
	}
	if strings.HasPrefix(source, "/") || strings.HasPrefix(source, "./") || strings.HasPrefix(source, "../") {
		return nil, nil, fmt.Errorf("%s: no such file or directory", source)
	}
	return openRegistry(ctx, source, o)
}

// splitRef splits "PATH:TAG" or "PATH@sha256:HEX" at the last separator.
func splitRef(s string) (p, ref string, ok bool) {
	if i := strings.LastIndexByte(s, '@'); i > 0 {
		return s[:i], s[i:], true
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 && !strings.ContainsRune(s[i:], '/') {
		return s[:i], s[i:], true
	}
	return "", "", false
}

func openRegistry(ctx context.Context, ref string, o *openOptions) (blobStore, []byte, error) {
	nameOpts := []name.Option{name.StrictValidation}
	if o.insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, nil, fmt.Errorf("registry reference: %w", err)
	}
	rt := o.transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithTransport(rt))
	if err != nil {
		return nil, nil, err
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		return nil, nil, fmt.Errorf("%s is a %s, want an OCI image manifest", ref, truncate(string(desc.MediaType)))
	}
	// The same round trip go-containerregistry uses (scheme, anonymous
	// token if the registry asks for one), for blobs read as stored.
	pull, err := transport.NewWithContext(ctx, r.Context().Registry, authn.Anonymous, rt, []string{r.Context().Scope(transport.PullScope)})
	if err != nil {
		return nil, nil, err
	}
	return registryStore{ctx: ctx, repo: r.Context(), client: &http.Client{Transport: pull}}, desc.Manifest, nil
}

// registryStore reads blobs as the registry serves them. It does not
// hash them: every reader of a part checks size and sha256 against the
// signed manifest (verifyingReader, or the slot writer for Unchecked),
// and a second hash here would cost a full pass over 100 MB.
type registryStore struct {
	ctx    context.Context
	repo   name.Repository
	client *http.Client
}

func (s registryStore) blob(d v1.Descriptor) (io.ReadCloser, error) {
	u := url.URL{Scheme: s.repo.Scheme(), Host: s.repo.RegistryStr(), Path: "/v2/" + s.repo.RepositoryStr() + "/blobs/" + d.Digest.String()}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return resp.Body, nil
}

// fileStore opens the files of an OCI layout: a directory, or a tar of one.
type fileStore interface {
	open(name string) (io.ReadCloser, error)
}

type dirStore string

func (d dirStore) open(name string) (io.ReadCloser, error) {
	return os.Open(filepath.Join(string(d), filepath.FromSlash(name)))
}

// layoutStore reads blobs by digest from an OCI layout.
type layoutStore struct{ files fileStore }

func (s layoutStore) blob(d v1.Descriptor) (io.ReadCloser, error) {
	// v1.Hash only holds a valid algorithm and hex digits: no path tricks.
	if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
		return nil, fmt.Errorf("unsupported digest %q", d.Digest)
	}
	return s.files.open("blobs/sha256/" + d.Digest.Hex)
}

// openLayoutSource reads index.json of a layout directory or archive, picks
// the manifest that source names and reads it.
func openLayoutSource(source string, archive bool) (blobStore, []byte, error) {
	p, ref := source, ""
	if _, err := os.Stat(source); err != nil {
		var ok bool
		if p, ref, ok = splitRef(source); !ok {
			return nil, nil, err
		}
	}
	var files fileStore = dirStore(p)
	if archive {
		a, err := indexArchive(p)
		if err != nil {
			return nil, nil, err
		}
		files = a
	}
	store := layoutStore{files}
	desc, err := pickManifest(files, ref)
	if err != nil {
		return nil, nil, err
	}
	if desc.Size <= 0 || desc.Size > maxOCIManifest {
		return nil, nil, fmt.Errorf("OCI manifest %s: size %d is outside 1..%d", desc.Digest, desc.Size, maxOCIManifest)
	}
	raw, err := readBlob(store, desc)
	if err != nil {
		return nil, nil, fmt.Errorf("OCI manifest: %w", err)
	}
	return store, raw, nil
}

// pickManifest finds the manifest descriptor for ref ("", ":TAG" or
// "@sha256:HEX") in the layout's index.json.
func pickManifest(files fileStore, ref string) (v1.Descriptor, error) {
	rc, err := files.open(indexFile)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("not an OCI layout: %w", err)
	}
	defer rc.Close()
	data, err := readLimited(rc, maxOCIManifest)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", indexFile, err)
	}
	var index v1.IndexManifest
	if err := json.Unmarshal(data, &index); err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", indexFile, err)
	}
	var found []v1.Descriptor
	var tags []string
	for _, d := range index.Manifests {
		tag := d.Annotations[RefAnnotation]
		if tag != "" {
			tags = append(tags, tag)
		}
		switch {
		case ref == "":
			found = append(found, d)
		case strings.HasPrefix(ref, ":") && tag == ref[1:]:
			found = append(found, d)
		case strings.HasPrefix(ref, "@") && d.Digest.String() == ref[1:]:
			found = append(found, d)
		}
	}
	available := "none"
	if len(tags) > 0 {
		available = strings.Join(tags, ", ")
	}
	switch {
	case len(found) == 0 && ref == "":
		return v1.Descriptor{}, errors.New("the OCI layout holds no manifest")
	case len(found) == 0:
		return v1.Descriptor{}, fmt.Errorf("no manifest %s in the OCI layout (tags: %s)", ref[1:], available)
	case len(found) > 1 && ref == "":
		return v1.Descriptor{}, fmt.Errorf("the OCI layout holds %d manifests: name one as PATH:TAG (tags: %s)", len(found), available)
	case len(found) > 1:
		return v1.Descriptor{}, fmt.Errorf("%d manifests are named %s in the OCI layout", len(found), ref[1:])
	}
	if found[0].MediaType != types.OCIManifestSchema1 {
		return v1.Descriptor{}, fmt.Errorf("%s is a %s, want an OCI image manifest", found[0].Digest, truncate(string(found[0].MediaType)))
	}
	return found[0], nil
}

// archiveStore reads files of an OCI layout tar in place: the tar is
// uncompressed, so each file is a byte range of it.
type archiveStore struct {
	path    string
	entries map[string]archiveEntry
}

type archiveEntry struct{ offset, size int64 }

// maxArchiveEntries bounds the index kept of a (possibly hostile) tar.
const maxArchiveEntries = 4096

func indexArchive(p string) (*archiveStore, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &archiveStore{path: p, entries: map[string]archiveEntry{}}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("payload archive %s: %w", p, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue // directories; links are not followed
		}
		if isSparse(hdr) {
			return nil, fmt.Errorf("payload archive %s: %s is a sparse file, which cannot be read in place", p, hdr.Name)
		}
		// archive/tar reads headers without buffering ahead and seeks over
		// file data, so the file's position is where this entry's data starts.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, fmt.Errorf("payload archive %s: %w", p, err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if _, dup := a.entries[name]; dup {
			return nil, fmt.Errorf("payload archive %s: %s appears twice", p, name)
		}
		if len(a.entries) >= maxArchiveEntries {
			return nil, fmt.Errorf("payload archive %s: more than %d files", p, maxArchiveEntries)
		}
		a.entries[name] = archiveEntry{offset: off, size: hdr.Size}
	}
	return a, nil
}

func (a *archiveStore) open(name string) (io.ReadCloser, error) {
	e, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("payload archive %s: no %s in it", a.path, name)
	}
	f, err := os.Open(a.path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, e.offset, e.size), f}, nil
}

// isSparse reports a PAX sparse entry, whose data is not one plain byte range.
func isSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
