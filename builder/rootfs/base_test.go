package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/berth-os/berth/builder/spec"
)

func TestFindKernel(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"lib":                                     "->usr/lib", // merged /usr: both paths name one directory
		"usr/lib/modules/6.1.0-28-cloud-amd64/x":  "",
		"usr/lib/modules/modules.stray-file":      "",
		"boot/vmlinuz-6.1.0-28-cloud-amd64":       "kernel",
		"boot/vmlinuz-6.1.0-27-cloud-amd64.stale": "old",
	})
	k, err := FindKernel(root)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "6.1.0-28-cloud-amd64" || k.Image != filepath.Join(root, "boot/vmlinuz-6.1.0-28-cloud-amd64") {
		t.Errorf("FindKernel = %+v", k)
	}
}

func TestFindKernelErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  []string
	}{
		"none":    {map[string]string{"etc/": ""}, []string{"no kernel", "linux-image"}},
		"no dirs": {map[string]string{"lib/modules/README": ""}, []string{"no kernel"}},
		"several": {map[string]string{
			"lib/modules/6.1.0-1-amd64/": "", "lib/modules/6.1.0-2-amd64/": "",
			"boot/vmlinuz-6.1.0-1-amd64": "k", "boot/vmlinuz-6.1.0-2-amd64": "k",
		}, []string{"2 kernels", "6.1.0-1-amd64", "6.1.0-2-amd64"}},
		"modules without vmlinuz": {map[string]string{"lib/modules/6.1.0-3-amd64/": ""}, []string{"6.1.0-3-amd64", "vmlinuz"}},
	} {
		root := t.TempDir()
		writeTree(t, root, tc.files)
		k, err := FindKernel(root)
		if err == nil {
			t.Errorf("%s: FindKernel = %+v, want an error", name, k)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", name, err, w)
			}
		}
	}
}

func TestReadBootLoader(t *testing.T) {
	root := t.TempDir()
	if _, err := ReadBootLoader(root); err == nil || !strings.Contains(err.Error(), "systemd-boot") {
		t.Errorf("missing boot loader: error %v", err)
	}
	writeTree(t, root, map[string]string{SystemdBootPath: "MZ efi"})
	data, err := ReadBootLoader(root)
	if err != nil || string(data) != "MZ efi" {
		t.Errorf("ReadBootLoader = %q, %v", data, err)
	}
}

func tarLayer(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	data := layerBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage has two layers: the second deletes and overrides files of the
// first, so applying them in order is observable.
func testImage(t *testing.T, marker string) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		tarLayer(t, dirE("etc/", 0o755), fileE("etc/old", "old", 0o644), fileE("etc/version", "1", 0o644),
			fileE("usr/bin/su", "su", 0o4755)),
		tarLayer(t, whiteoutE("etc/.wh.old"), fileE("etc/version", marker, 0o644)),
	)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// ociLayout writes a layout holding one image per tag.
func ociLayout(t *testing.T, dir string, tags ...string) map[string]v1.Hash {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]v1.Hash{}
	for _, tag := range tags {
		img := testImage(t, tag)
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
			t.Fatal(err)
		}
		if digests[tag], err = img.Digest(); err != nil {
			t.Fatal(err)
		}
	}
	return digests
}

func checkApplied(t *testing.T, root, marker string) {
	t.Helper()
	if exists(filepath.Join(root, "etc/old")) {
		t.Error("etc/old survived the second layer's whiteout")
	}
	if got := readString(t, filepath.Join(root, "etc/version")); got != marker {
		t.Errorf("etc/version = %q, want %q from the chosen image's top layer", got, marker)
	}
	if st := lstat(t, filepath.Join(root, "usr/bin/su")); st.Mode&0o7777 != 0o4755 {
		t.Errorf("usr/bin/su mode %o, want 4755", st.Mode&0o7777)
	}
}

func TestApplyImageLayersOCILayout(t *testing.T) {
	specDir := t.TempDir()
	dir := filepath.Join(specDir, "images", "layout")
	digests := ociLayout(t, dir, "v1", "v2")
	ctx := context.Background()

	for ref, marker := range map[string]string{
		"oci-layout:" + dir + ":v1":                        "v1",
		"oci-layout:images/layout:v2":                      "v2", // relative to the spec's directory
		"oci-layout:" + dir + "@" + digests["v1"].String(): "v1",
	} {
		root := t.TempDir()
		if err := ApplyImageLayers(ctx, root, ref, specDir); err != nil {
			t.Errorf("%s: %v", ref, err)
			continue
		}
		checkApplied(t, root, marker)
	}

	// A layout with one image needs no tag.
	single := filepath.Join(t.TempDir(), "single")
	ociLayout(t, single, "only")
	root := t.TempDir()
	if err := ApplyImageLayers(ctx, root, "oci-layout:"+single, ""); err != nil {
		t.Fatal(err)
	}
	checkApplied(t, root, "only")
}

func TestApplyImageLayersDockerArchive(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "image.tar")
	ref, err := name.ParseReference("example.test/berth/base:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(file, ref, testImage(t, "archived")); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := ApplyImageLayers(context.Background(), root, "docker-archive:image.tar", dir); err != nil {
		t.Fatal(err)
	}
	checkApplied(t, root, "archived")
}

func TestOpenImageErrors(t *testing.T) {
	specDir := t.TempDir()
	dir := filepath.Join(specDir, "layout")
	ociLayout(t, dir, "v1", "v2")
	notLayout := filepath.Join(specDir, "plain")
	os.Mkdir(notLayout, 0o755)
	ctx := context.Background()
	for ref, want := range map[string]string{
		"oci-layout:" + dir:                          "2 images match",
		"oci-layout:" + dir + ":v3":                  "0 images match",
		"oci-layout:" + dir + "@sha256:" + zeros(64): "0 images match",
		"oci-layout:" + notLayout:                    "not an OCI layout",
		"oci-layout:/nonexistent/berth/layout":       "not an OCI layout",
		"docker-archive:/nonexistent/berth/img.tar":  "docker-archive:/nonexistent/berth/img.tar",
		"Not A Valid::Reference":                     "Not A Valid::Reference",
	} {
		img, err := OpenImage(ctx, ref, specDir)
		if err == nil {
			t.Errorf("OpenImage(%q) = %v, want an error", ref, img)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("OpenImage(%q): error %q lacks %q", ref, err, want)
		}
		if !strings.Contains(err.Error(), ref) {
			t.Errorf("OpenImage(%q): error %q does not name the reference", ref, err)
		}
		if err := ApplyImageLayers(ctx, t.TempDir(), ref, specDir); err == nil {
			t.Errorf("ApplyImageLayers(%q): no error", ref)
		}
	}
}

func zeros(n int) string { return strings.Repeat("0", n) }

func TestBaseTarFlattensLocalOCI(t *testing.T) {
	specDir := t.TempDir()
	ociLayout(t, filepath.Join(specDir, "base"), "v1")
	cache := t.TempDir()
	s := &spec.Spec{Path: "img.yaml", Dir: specDir, Base: spec.Base{OCI: "oci-layout:base:v1"}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tarPath, cached, err := BaseTar(context.Background(), s, cache, log)
	if err != nil {
		t.Fatal(err)
	}
	if cached || !IsTemporary(tarPath) {
		t.Errorf("local OCI base: cached %v, temporary %v; want a fresh one-off tar", cached, IsTemporary(tarPath))
	}
	defer os.Remove(tarPath)
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		names[strings.TrimPrefix(h.Name, "./")] = string(body)
	}
	if _, ok := names["etc/old"]; ok {
		t.Error("flattened base still has etc/old, deleted by a whiteout")
	}
	if names["etc/version"] != "v1" {
		t.Errorf("flattened etc/version = %q, want the top layer's v1", names["etc/version"])
	}
	for n := range names {
		if strings.Contains(n, ".wh.") {
			t.Errorf("flattened base has whiteout %s", n)
		}
	}
	// The flattened tar unpacks like any layer.
	root := t.TempDir()
	if err := ApplyLayerFile(root, tarPath); err != nil {
		t.Fatal(err)
	}
	checkApplied(t, root, "v1")
	if IsTemporary(filepath.Join(cache, "base", "0123.tar")) {
		t.Error("a cached base tar is reported as temporary")
	}
}
