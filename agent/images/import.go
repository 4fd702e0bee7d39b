package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Annotations naming an image inside an OCI layout.
const (
	ociRefName       = "org.opencontainers.image.ref.name"
	containerdImgRef = "io.containerd.image.name"
)

// Import stores the images of a docker-archive (docker save, crane export)
// or oci-archive (a tar of an OCI image layout) tarball, for nodes that
// cannot reach a registry. Tagged images are reachable by their tags.
func (s *Store) Import(ctx context.Context, tarballPath string) ([]Image, error) {
	kind, err := archiveKind(tarballPath)
	if err != nil {
		return nil, err
	}
	s.gcLock.RLock()
	defer s.gcLock.RUnlock()
	switch kind {
	case "docker":
		return s.importDocker(ctx, tarballPath)
	default:
		return s.importOCI(ctx, tarballPath)
	}
}

// archiveKind tells a docker-archive (manifest.json) from an oci-archive
// (oci-layout). Newer docker saves carry both; the docker manifest names
// the tags, so it wins.
func archiveKind(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	oci := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("import %s: not a tar archive: %w", path, err)
		}
		switch strings.TrimPrefix(hdr.Name, "./") {
		case "manifest.json":
			return "docker", nil
		case "oci-layout":
			oci = true
		}
	}
	if oci {
		return "oci", nil
	}
	return "", fmt.Errorf("import %s: neither a docker-archive (no manifest.json) nor an oci-archive (no oci-layout)", path)
}

func (s *Store) importDocker(ctx context.Context, path string) ([]Image, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	manifest, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	var out []Image
	for i, d := range manifest {
		var tag *name.Tag
		var refs []string
		for _, t := range d.RepoTags {
			parsed, err := name.NewTag(t)
			if err != nil {
				return out, fmt.Errorf("import %s: image %d: bad tag %q: %w", path, i, t, err)
			}
			if tag == nil {
				tag = &parsed
			}
			refs = append(refs, parsed.Name())
		}
		if tag == nil && len(manifest) > 1 {
			return out, fmt.Errorf("import %s: image %d has no tag and the archive holds %d images; tag it", path, i, len(manifest))
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return out, fmt.Errorf("import %s: image %d: %w", path, i, err)
		}
		rec, err := s.storeImage(ctx, img, refs, false)
		if err != nil {
			return out, fmt.Errorf("import %s: image %d: %w", path, i, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

func (s *Store) importOCI(ctx context.Context, path string) ([]Image, error) {
	dir, err := os.MkdirTemp(s.path("tmp"), "import-")
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	if err := extractLayout(path, dir); err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	var out []Image
	for _, desc := range im.Manifests {
		img, err := platformImage(idx, desc)
		if err != nil {
			return out, fmt.Errorf("import %s: %s: %w", path, desc.Digest, err)
		}
		if img == nil {
			continue // not an image (e.g. an attestation)
		}
		var refs []string
		if r := layoutRefName(desc); r != "" {
			refs = append(refs, r)
		}
		rec, err := s.storeImage(ctx, img, refs, true)
		if err != nil {
			return out, fmt.Errorf("import %s: %s: %w", path, desc.Digest, err)
		}
		out = append(out, rec)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("import %s: the layout holds no %s/%s image", path, Platform.OS, Platform.Architecture)
	}
	return out, nil
}

// platformImage opens desc as an image, picking linux/amd64 from an index;
// nil when desc is neither.
func platformImage(idx v1.ImageIndex, desc v1.Descriptor) (v1.Image, error) {
	switch {
	case desc.MediaType.IsImage():
		return idx.Image(desc.Digest)
	case desc.MediaType.IsIndex():
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return nil, err
		}
		cm, err := child.IndexManifest()
		if err != nil {
			return nil, err
		}
		for _, d := range cm.Manifests {
			if d.MediaType.IsImage() && d.Platform != nil && d.Platform.OS == Platform.OS && d.Platform.Architecture == Platform.Architecture {
				return child.Image(d.Digest)
			}
		}
		return nil, fmt.Errorf("no %s/%s image in the index", Platform.OS, Platform.Architecture)
	}
	return nil, nil
}

// layoutRefName is the full reference an OCI layout gives an image, or ""
// when it only gives a bare tag (the repository is then unknown).
func layoutRefName(desc v1.Descriptor) string {
	for _, key := range []string{containerdImgRef, ociRefName} {
		v := desc.Annotations[key]
		if v == "" || !strings.ContainsAny(v, "/:@") {
			continue
		}
		if r, err := name.ParseReference(v); err == nil {
			return r.Name()
		}
	}
	return ""
}

// extractLayout unpacks an OCI layout tar into dir: directories and
// regular files only, every name checked to stay inside dir.
func extractLayout(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		rel, err := entryPath(hdr.Name)
		if err != nil {
			return err
		}
		if rel == "." {
			continue
		}
		parent, err := makeParents(dir, filepath.Dir(rel))
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		target := filepath.Join(parent, filepath.Base(rel))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		case tar.TypeReg, tar.TypeRegA:
			if err := os.RemoveAll(target); err != nil {
				return err
			}
			if err := writeFile(target, tr); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
	}
}
