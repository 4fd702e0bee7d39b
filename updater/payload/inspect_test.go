package payload

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestOpenLocalLayoutAndArchive(t *testing.T) {
	priv, pub := memKey(t)
	img, m, tp := createPayload(t, priv, "0.4.0")
	want, err := partial.Digest(img)
	if err != nil {
		t.Fatal(err)
	}
	wantSize := int64(len(tp.slot) + len(tp.kernel) + len(tp.initrd))
	dir := filepath.Join(t.TempDir(), "berth-minimal-0.4.0.oci")
	if err := WriteLayout(dir, img, "0.4.0"); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "p.tar")
	if err := WriteTarball(archive, img, "0.4.0"); err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{dir, dir + ":0.4.0", PrefixLayout + dir, archive, PrefixArchive + archive + ":0.4.0"} {
		for _, keys := range [][]ed25519.PublicKey{nil, {pub}} {
			l, err := OpenLocal(source, keys)
			if err != nil {
				t.Fatalf("OpenLocal(%s, %d keys): %v", source, len(keys), err)
			}
			if !reflect.DeepEqual(l.Manifest, m) || l.Verified != (keys != nil) || l.Digest != want {
				t.Fatalf("OpenLocal(%s, %d keys) = manifest %+v verified %v digest %s; want %+v, %v, %s",
					source, len(keys), l.Manifest, l.Verified, l.Digest, m, keys != nil, want)
			}
			if l.Size <= wantSize || l.Size > wantSize+8192 {
				t.Errorf("Size = %d, want the parts (%d) plus manifest and envelope", l.Size, wantSize)
			}
			if got, err := partial.Digest(l.Image); err != nil || got != want {
				t.Errorf("image digest %s (%v), want %s", got, err, want)
			}
		}
	}
}

// A payload pushed from a layout opened without keys is the same payload:
// it opens and verifies from the registry and its parts read intact.
func TestOpenLocalImagePushesTheSamePayload(t *testing.T) {
	reg := startRegistry(t)
	priv, pub := memKey(t)
	img, m, tp := createPayload(t, priv, "0.4.0")
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, img, "0.4.0"); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/berth/os:0.4.0"
	if err := remote.Write(mustRef(t, ref), l.Image); err != nil {
		t.Fatal(err)
	}
	p, err := Open(bg(), ref, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.Manifest, m) {
		t.Fatalf("manifest from the registry %+v, want %+v", p.Manifest, m)
	}
	checkAllParts(t, p, tp)
	desc, err := remote.Head(mustRef(t, ref))
	if err != nil || desc.Digest != l.Digest {
		t.Fatalf("registry digest %v (%v), want %s", desc, err, l.Digest)
	}
}

func TestOpenLocalRefuses(t *testing.T) {
	_, otherKey := memKey(t)
	dir, _, _, _ := layoutWith(t, "0.4.0")
	for name, c := range map[string]struct {
		source string
		keys   []ed25519.PublicKey
		want   string
	}{
		"wrong key":          {dir, []ed25519.PublicKey{otherKey}, "not signed by a trusted key"},
		"registry reference": {PrefixRegistry + "127.0.0.1:5000/berth/os:0.4.0", nil, "registry reference"},
		"missing path":       {filepath.Join(t.TempDir(), "nope.oci"), nil, "no such file"},
		"missing tag":        {dir + ":0.5.0", nil, "no manifest 0.5.0"},
		"not a layout":       {t.TempDir(), nil, "not an OCI layout"},
	} {
		if _, err := OpenLocal(c.source, c.keys); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: OpenLocal = %v, want an error about %q", name, err, c.want)
		}
	}
	// Without keys the form is still checked.
	for name, c := range map[string]struct {
		edit func(om *v1.Manifest)
		want string
	}{
		"initrd size":       {func(om *v1.Manifest) { om.Layers[2].Size++ }, "initrd layer"},
		"layer missing":     {func(om *v1.Manifest) { om.Layers = om.Layers[:2] }, "2 layers"},
		"config media type": {func(om *v1.Manifest) { om.Config.MediaType = "application/json" }, "not a berth payload"},
	} {
		dir, _, _, _ := layoutWith(t, "0.4.0")
		rewriteManifest(t, dir, c.edit)
		if _, err := OpenLocal(dir, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: OpenLocal without keys = %v, want an error about %q", name, err, c.want)
		}
	}
}

// A part changed after OpenLocal fails the upload instead of publishing it.
func TestOpenLocalImageRefusesChangedPart(t *testing.T) {
	reg := startRegistry(t)
	dir, m, _, _ := layoutWith(t, "0.4.0")
	l, err := OpenLocal(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := blobPath(dir, partHash(m.Slot))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	err = remote.Write(mustRef(t, reg.host+"/berth/os:0.4.0"), l.Image)
	// The error is the payload's own check (naming the part), not only the
	// registry's digest check after the upload.
	if err == nil || !strings.Contains(err.Error(), "payload slot: sha256") {
		t.Fatalf("push of a changed slot: %v, want the slot's sha256 check", err)
	}
}
