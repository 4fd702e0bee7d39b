package images_test

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/images/imagetest"
)

func TestGCFreesUnusedAndKeepsShared(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	bContent := strings.Repeat("b", 300_000)
	cContent := strings.Repeat("c", 500_000)
	a := pullImage(t, s, "a:v1", imagetest.BusyboxImage(t, map[string]string{"a": "a"}))
	b := pullImage(t, s, "b:v1", imagetest.BusyboxImage(t, map[string]string{"b": bContent}))
	c := pullImage(t, s, "c:v1", imagetest.Image(t, imagetest.FilesLayer(t, map[string]string{"c": cContent})))
	busyboxSize := func() int64 {
		fi, err := os.Stat(imagetest.BusyboxPath)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}()

	freed, err := s.GC(ctx, func(d string) bool { return d == a.Digest })
	if err != nil {
		t.Fatal(err)
	}
	// b's own layer and c's layer go; the busybox layer b shared with a stays.
	if min := int64(len(bContent) + len(cContent)); freed < min || freed >= min+busyboxSize {
		t.Fatalf("freed %d bytes, want at least %d and less than that plus busybox (%d)", freed, min, busyboxSize)
	}
	if layers := dirNames(t, filepath.Join(s.Dir(), "layers")); len(layers) != 2 {
		t.Fatalf("layers after GC: %v, want busybox and a", layers)
	}
	for _, l := range a.Layers {
		if _, err := os.Stat(filepath.Join(s.Dir(), "layers", strings.TrimPrefix(l, "sha256:"))); err != nil {
			t.Fatalf("layer %s of the kept image is gone: %v", l, err)
		}
	}
	for _, gone := range []images.Image{b, c} {
		if _, err := s.Get(gone.Ref); !errors.Is(err, images.ErrNotFound) {
			t.Fatalf("Get(%s) after GC: %v", gone.Ref, err)
		}
		if _, err := s.Get(gone.Digest); !errors.Is(err, images.ErrNotFound) {
			t.Fatalf("Get(%s) after GC: %v", gone.Digest, err)
		}
	}
	if _, err := s.Get(a.Ref); err != nil {
		t.Fatalf("kept image: %v", err)
	}

	// A mounted image is kept even when the caller says it is unused.
	if _, err := s.Mount(ctx, a.Digest, "user"); err != nil {
		t.Fatal(err)
	}
	if freed, err := s.GC(ctx, nil); err != nil || freed != 0 {
		t.Fatalf("GC with a mounted image freed %d, %v", freed, err)
	}
	if err := s.Unmount("user"); err != nil {
		t.Fatal(err)
	}
	freed, err = s.GC(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if freed < busyboxSize {
		t.Fatalf("freeing everything freed %d bytes, less than busybox alone (%d)", freed, busyboxSize)
	}
	for _, sub := range []string{"layers", "images", "tmp"} {
		if names := dirNames(t, filepath.Join(s.Dir(), sub)); len(names) != 0 {
			t.Errorf("%s/ not empty after a full GC: %v", sub, names)
		}
	}
	if refs, err := os.ReadFile(filepath.Join(s.Dir(), "refs.json")); err != nil || strings.TrimSpace(string(refs)) != "{}" {
		t.Fatalf("refs.json after a full GC: %s, %v", refs, err)
	}
}

func TestImportDockerArchive(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	img := imagetest.BusyboxImage(t, map[string]string{"etc/motd": "offline\n"})
	path := filepath.Join(t.TempDir(), "bb.tar")
	imagetest.WriteTarball(t, img, path, "registry.example/team/bb:v1")

	recs, err := s.Import(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Ref != "registry.example/team/bb:v1" || len(recs[0].Layers) != 2 {
		t.Fatalf("imported %+v", recs)
	}
	got, err := s.Get("registry.example/team/bb:v1")
	if err != nil || got.Digest != recs[0].Digest {
		t.Fatalf("Get after import: %v", err)
	}
	root, err := s.Mount(ctx, got.Digest, "imported")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unmount("imported") })
	if out, err := inRoot(t, root, "cat", "/etc/motd"); err != nil || out != "offline\n" {
		t.Fatalf("imported rootfs: %q, %v", out, err)
	}
}

func TestImportOCIArchive(t *testing.T) {
	s := openStore(t)
	ctx := testContext(t)
	img := imagetest.BusyboxImage(t, map[string]string{"oci": "yes"})
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference("registry.example/oci/bb:v2")
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref.Name()})); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "oci.tar")
	tarDir(t, dir, archive)

	recs, err := s.Import(ctx, archive)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Digest != imageDigest(t, img) || recs[0].Ref != ref.Name() {
		t.Fatalf("imported %+v", recs)
	}
	if _, err := s.Get("registry.example/oci/bb:v2"); err != nil {
		t.Fatal(err)
	}
}

func TestImportRefusesEscapingLayer(t *testing.T) {
	s := openStore(t)
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "../../escaped", Body: "x"}))
	path := filepath.Join(t.TempDir(), "evil.tar")
	imagetest.WriteTarball(t, img, path, "registry.example/evil:v1")
	_, err := s.Import(testContext(t), path)
	if err == nil || !strings.Contains(err.Error(), "escapes the layer root") {
		t.Fatalf("import of an escaping layer: %v", err)
	}
	if names := dirNames(t, filepath.Join(s.Dir(), "layers")); len(names) != 0 {
		t.Fatalf("layers/ not empty: %v", names)
	}
	notTar := filepath.Join(t.TempDir(), "x.tar")
	os.WriteFile(notTar, []byte("hello"), 0o644)
	if _, err := s.Import(testContext(t), notTar); err == nil {
		t.Fatal("imported a file that is no archive")
	}
}

// tarDir writes dir's regular files and directories as a tar at out.
func tarDir(t *testing.T, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}
