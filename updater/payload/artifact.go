package payload

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Parts names the files of one OS version.
type Parts struct{ Slot, Kernel, Initrd string }

// titleAnnotation names each layer's file, so generic OCI artifact tools
// (oras pull) write the parts under useful names.
const titleAnnotation = "org.opencontainers.image.title"

// part is one layer of the payload, in the fixed order Create writes them.
type part struct {
	name, mediaType, title string
}

var payloadParts = [3]part{
	{"slot", SlotType, "slot.squashfs"},
	{"kernel", KernelType, "vmlinuz"},
	{"initrd", InitrdType, "initrd.img"},
}

// blobs returns a manifest's blobs in payloadParts order.
func (m *Manifest) blobs() [3]*Blob {
	return [3]*Blob{&m.Slot, &m.Kernel, &m.Initrd}
}

// Create hashes the parts, fills in m's sizes, digests and schema, signs
// m, and returns the payload as an OCI image. Its layers are the files
// themselves, uncompressed (a squashfs is already compressed), so each
// layer's OCI digest is the sha256 in the signed manifest; they are read
// from disk only when the image is written, and checked again then.
func Create(m Manifest, parts Parts, key ed25519.PrivateKey) (v1.Image, Manifest, error) {
	paths := [3]string{parts.Slot, parts.Kernel, parts.Initrd}
	for i, b := range m.blobs() {
		if paths[i] == "" {
			return nil, Manifest{}, fmt.Errorf("create payload: no %s file given", payloadParts[i].name)
		}
		blob, err := hashFile(paths[i])
		if err != nil {
			return nil, Manifest{}, fmt.Errorf("create payload: %s: %w", payloadParts[i].name, err)
		}
		*b = blob
	}
	m.Schema = Schema
	if m.SlotFSType == "" {
		m.SlotFSType = SlotFSType
	}
	env, err := Sign(m, key)
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("create payload: %w", err)
	}
	img := &artifactImage{envelope: env, layers: map[v1.Hash]*fileLayer{}}
	manifest := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config: v1.Descriptor{
			MediaType: EnvelopeType,
			Size:      int64(len(env)),
			Digest:    sha256Hash(env),
		},
		Annotations: map[string]string{
			"org.opencontainers.image.version": m.Version,
			"org.opencontainers.image.title":   m.OS,
		},
	}
	for i, b := range m.blobs() {
		l := &fileLayer{path: paths[i], part: payloadParts[i], blob: *b}
		h := l.hash()
		manifest.Layers = append(manifest.Layers, v1.Descriptor{
			MediaType:   types.MediaType(l.part.mediaType),
			Size:        b.Size,
			Digest:      h,
			Annotations: map[string]string{titleAnnotation: l.part.title},
		})
		if _, dup := img.layers[h]; !dup {
			img.layers[h] = l
		}
	}
	if img.manifest, err = json.Marshal(manifest); err != nil {
		return nil, Manifest{}, fmt.Errorf("create payload: encode OCI manifest: %w", err)
	}
	out, err := partial.CompressedToImage(img)
	if err != nil {
		return nil, Manifest{}, fmt.Errorf("create payload: %w", err)
	}
	return out, m, nil
}

// hashFile streams a regular file through sha256.
func hashFile(path string) (Blob, error) {
	f, err := os.Open(path)
	if err != nil {
		return Blob{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Blob{}, err
	}
	if !st.Mode().IsRegular() {
		return Blob{}, fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Blob{}, fmt.Errorf("read %s: %w", path, err)
	}
	if n == 0 {
		return Blob{}, fmt.Errorf("%s is empty", path)
	}
	return Blob{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func sha256Hash(data []byte) v1.Hash {
	sum := sha256.Sum256(data)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// artifactImage is the payload as go-containerregistry sees it: a raw OCI
// manifest of our own making (the library's mutate helpers would treat the
// envelope as an image config), the envelope as config, and file layers.
type artifactImage struct {
	manifest []byte
	envelope []byte
	layers   map[v1.Hash]*fileLayer
}

func (a *artifactImage) RawManifest() ([]byte, error)        { return a.manifest, nil }
func (a *artifactImage) RawConfigFile() ([]byte, error)      { return a.envelope, nil }
func (a *artifactImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *artifactImage) ArtifactType() (string, error)       { return ArtifactType, nil }

func (a *artifactImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	l, ok := a.layers[h]
	if !ok {
		return nil, fmt.Errorf("payload has no layer %s", h)
	}
	return l, nil
}

// fileLayer is a layer backed by a file that Create has hashed.
type fileLayer struct {
	path string
	part part
	blob Blob
}

func (l *fileLayer) hash() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: l.blob.SHA256}
}

func (l *fileLayer) Digest() (v1.Hash, error) { return l.hash(), nil }
func (l *fileLayer) DiffID() (v1.Hash, error) { return l.hash(), nil } // uncompressed: same bytes
func (l *fileLayer) Size() (int64, error)     { return l.blob.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.part.mediaType), nil
}

// Compressed reads the file again, checked against what was signed: a file
// changed after Create fails the write instead of publishing bad content.
func (l *fileLayer) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("payload %s: %w", l.part.name, err)
	}
	return newVerifyingReader(l.part.name, l.blob, f), nil
}

// Uncompressed is the same stream: payload layers are stored as they are.
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }

// checkTag accepts an OCI/Docker tag: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
func checkTag(tag string) error {
	if tag == "" || len(tag) > 128 {
		return fmt.Errorf("tag %q must have 1 to 128 characters", truncate(tag))
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		if !(isAlnum(c) || c == '_' || i > 0 && (c == '.' || c == '-')) {
			return fmt.Errorf("tag %q: only letters, digits and _ . - are allowed (not . or - first)", truncate(tag))
		}
	}
	return nil
}

// WriteLayout stores img in the OCI image layout at dir, creating the
// layout if it does not exist, and names it tag. A payload already there
// under the same tag is replaced in index.json (its blobs stay until a
// garbage collection).
func WriteLayout(dir string, img v1.Image, tag string) error {
	if err := checkTag(tag); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	var p layout.Path
	if _, err := os.Stat(filepath.Join(dir, "index.json")); errors.Is(err, os.ErrNotExist) {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("write OCI layout: create %s: %w", dir, err)
		}
	} else if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	} else if p, err = layout.FromPath(dir); err != nil {
		return fmt.Errorf("write OCI layout: %s: %w", dir, err)
	}
	err := p.ReplaceImage(img, match.Annotation(RefAnnotation, tag), layout.WithAnnotations(map[string]string{RefAnnotation: tag}))
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	return nil
}

// WriteTarball writes img as one OCI layout in a tar file ("oci-archive",
// as skopeo and podman call it), which Open reads in place without
// unpacking. The file appears complete or not at all.
func WriteTarball(path string, img v1.Image, tag string) error {
	if err := checkTag(tag); err != nil {
		return fmt.Errorf("write payload tarball: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write payload tarball: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := writeArchive(tmp, img, tag); err != nil {
		tmp.Close()
		return fmt.Errorf("write payload tarball %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write payload tarball: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write payload tarball: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write payload tarball: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write payload tarball: %w", err)
	}
	return nil
}

// archiveTime is every entry's mtime, so the same payload gives the same tar.
var archiveTime = time.Unix(0, 0).UTC()

func writeArchive(w io.Writer, img v1.Image, tag string) error {
	rawManifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return err
	}
	desc.Annotations = map[string]string{RefAnnotation: tag}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{*desc},
	})
	if err != nil {
		return err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: archiveTime})
	}
	file := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: archiveTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	small := func(name string, data []byte) error { return file(name, int64(len(data)), bytes.NewReader(data)) }
	blobName := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

	if err := small(ociLayoutFile, []byte(ociLayoutContent)); err != nil {
		return err
	}
	if err := small(indexFile, index); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	if err := small(blobName(desc.Digest), rawManifest); err != nil {
		return err
	}
	written := map[v1.Hash]bool{desc.Digest: true}
	if !written[configName] {
		written[configName] = true
		if err := small(blobName(configName), config); err != nil {
			return err
		}
	}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return err
		}
		if written[h] {
			continue // two identical parts are one blob
		}
		written[h] = true
		size, err := l.Size()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		err = file(blobName(h), size, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// Push uploads img to a registry under ref (host/repo:tag). Loopback
// registries are spoken to over plain HTTP, others over HTTPS.
func Push(ctx context.Context, ref string, img v1.Image, opts ...remote.Option) error {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("push payload: %w", err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	if err := remote.Write(r, img, opts...); err != nil {
		return fmt.Errorf("push payload to %s: %w", ref, err)
	}
	return nil
}
