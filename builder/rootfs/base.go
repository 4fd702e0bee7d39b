// Package rootfs produces the OS root tree of an image: it fetches the base
// root (mmdebstrap, or an OCI image through go-containerregistry), caches it
// by a hash of what defines it, applies extra layers and files, enables
// units, trims what a read-only container host does not need, and prepares
// the tree for a read-only slot with persistent /var, /etc, /home and /root.
package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/berth-os/berth/builder/spec"
)

// DefaultCacheDir keeps base roots outside any checkout, so that CI runs
// and fresh clones on the same machine reuse them.
const DefaultCacheDir = "/var/cache/berth"

// BaseTar returns the path of a tar holding the flattened base root of s,
// building and caching it when needed. cached reports a cache hit.
func BaseTar(ctx context.Context, s *spec.Spec, cacheDir string, log *slog.Logger) (tarPath string, cached bool, err error) {
	dir := filepath.Join(cacheDir, "base")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, fmt.Errorf("cache directory %s: %w (choose another with --cache)", dir, err)
	}
	// OCI layouts and docker archives are local already: flatten them each
	// time rather than keep a second copy.
	if s.Base.OCI != "" && isLocalOCI(s.Base.OCI) {
		tmp, err := os.CreateTemp(dir, ".flatten-*.tar")
		if err != nil {
			return "", false, err
		}
		tmp.Close()
		if err := flattenOCI(ctx, s.Base.OCI, s.Dir, tmp.Name()); err != nil {
			os.Remove(tmp.Name())
			return "", false, err
		}
		return tmp.Name(), false, nil
	}

	key := s.BaseKey()
	final := filepath.Join(dir, key+".tar")
	if _, err := os.Stat(final); err == nil {
		return final, true, nil
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp.tar", key, os.Getpid()))
	defer os.Remove(tmp)
	if s.Base.Debian != nil {
		err = mmdebstrap(ctx, s, tmp, log)
	} else {
		log.Info("pulling base image", "ref", s.Base.OCI)
		err = flattenOCI(ctx, s.Base.OCI, s.Dir, tmp)
	}
	if err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", false, fmt.Errorf("cache base root: %w", err)
	}
	return final, false, nil
}

// IsTemporary reports whether a path returned by BaseTar is a one-off file
// the caller should remove after use.
func IsTemporary(p string) bool { return strings.HasPrefix(filepath.Base(p), ".flatten-") }

var (
	aptNotFound   = regexp.MustCompile(`Unable to locate package (\S+)`)
	aptNoCand     = regexp.MustCompile(`Package '?([^' ]+)'? has no installation candidate`)
	mmdebstrapErr = regexp.MustCompile(`^E: (.*)$`)
)

func mmdebstrap(ctx context.Context, s *spec.Spec, out string, log *slog.Logger) error {
	d := s.Base.Debian
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return errors.New("mmdebstrap not found: install the mmdebstrap package (make deps)")
	}
	args := []string{
		"--mode=root", "--format=tar", "--arch=amd64",
		"--variant=" + d.Variant,
	}
	if len(d.Packages) > 0 {
		args = append(args, "--include="+strings.Join(d.Packages, ","))
	}
	args = append(args, d.Suite, out, d.Mirror)
	log.Info("building base root with mmdebstrap (first build only; cached afterwards)", "suite", d.Suite, "packages", len(d.Packages))
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", s.Epoch), "LC_ALL=C.UTF-8")
	var stderr bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = io.MultiWriter(&stderr, pw)
	done := make(chan struct{})
	go func() {
		// mmdebstrap's "I: ..." lines are its progress.
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "I: ") {
				log.Info("mmdebstrap", "step", strings.TrimPrefix(line, "I: "))
			}
		}
		close(done)
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err == nil {
		return nil
	}
	text := stderr.String()
	if m := aptNotFound.FindStringSubmatch(text); m != nil {
		return fmt.Errorf("%s: base.debian.packages: package %q does not exist in Debian %s; check its name (apt-cache search)", s.Path, m[1], d.Suite)
	}
	if m := aptNoCand.FindStringSubmatch(text); m != nil {
		return fmt.Errorf("%s: base.debian.packages: package %q has no installable version in Debian %s", s.Path, m[1], d.Suite)
	}
	last := ""
	for _, line := range strings.Split(text, "\n") {
		if m := mmdebstrapErr.FindStringSubmatch(line); m != nil {
			last = m[1]
		}
	}
	if last == "" {
		last = err.Error()
	}
	return fmt.Errorf("mmdebstrap failed building the %s base root: %s", d.Suite, last)
}

func isLocalOCI(ref string) bool {
	return strings.HasPrefix(ref, "oci-layout:") || strings.HasPrefix(ref, "docker-archive:")
}

// OpenImage resolves an image reference of the spec: "oci-layout:DIR[:TAG|@DIGEST]",
// "docker-archive:FILE" or a registry reference. Relative paths are taken
// from specDir.
func OpenImage(ctx context.Context, ref, specDir string) (v1.Image, error) {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(specDir, p)
	}
	switch {
	case strings.HasPrefix(ref, "docker-archive:"):
		file := abs(strings.TrimPrefix(ref, "docker-archive:"))
		img, err := tarball.ImageFromPath(file, nil)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		return img, nil
	case strings.HasPrefix(ref, "oci-layout:"):
		return openLayout(abs, strings.TrimPrefix(ref, "oci-layout:"), ref)
	default:
		r, err := name.ParseReference(ref)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		return img, nil
	}
}

func openLayout(abs func(string) string, rest, ref string) (v1.Image, error) {
	dir, sel := rest, ""
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		dir, sel = rest[:i], rest[i:]
	} else if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		dir, sel = rest[:i], rest[i+1:]
	}
	p, err := layout.FromPath(abs(dir))
	if err != nil {
		return nil, fmt.Errorf("image %s: not an OCI layout: %w", ref, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	var picks []v1.Descriptor
	for _, d := range im.Manifests {
		switch {
		case sel == "":
			picks = append(picks, d)
		case strings.HasPrefix(sel, "@"):
			if d.Digest.String() == sel[1:] {
				picks = append(picks, d)
			}
		default:
			if d.Annotations["org.opencontainers.image.ref.name"] == sel {
				picks = append(picks, d)
			}
		}
	}
	if len(picks) != 1 {
		return nil, fmt.Errorf("image %s: %d images match in the layout; name one with :TAG or @sha256:DIGEST", ref, len(picks))
	}
	img, err := idx.Image(picks[0].Digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// flattenOCI writes the image's merged filesystem (whiteouts applied by
// go-containerregistry) as one tar.
func flattenOCI(ctx context.Context, ref, specDir, out string) error {
	img, err := OpenImage(ctx, ref, specDir)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return fmt.Errorf("flatten %s: %w", ref, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ApplyImageLayers applies every layer of an OCI image onto root in order.
func ApplyImageLayers(ctx context.Context, root, ref, specDir string) error {
	img, err := OpenImage(ctx, ref, specDir)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers of %s: %w", ref, err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %d of %s: %w", i, ref, err)
		}
		err = ApplyLayer(root, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d of %s: %w", i, ref, err)
		}
	}
	return nil
}
