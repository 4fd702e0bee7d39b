package payload

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// layoutWith writes one payload into a fresh OCI layout.
func layoutWith(t *testing.T, version string) (dir string, m Manifest, tp testParts, pub ed25519.PublicKey) {
	t.Helper()
	priv, pub := memKey(t)
	img, m, tp := createPayload(t, priv, version)
	dir = filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, img, version); err != nil {
		t.Fatal(err)
	}
	return dir, m, tp, pub
}

func TestOpenLayout(t *testing.T) {
	dir, m, tp, pub := layoutWith(t, "0.2.0")
	raw, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	var index v1.IndexManifest
	if err := json.Unmarshal(raw, &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations[RefAnnotation] != "0.2.0" {
		t.Fatalf("index.json: %s", raw)
	}
	digest := index.Manifests[0].Digest.String()
	for _, source := range []string{dir, dir + ":0.2.0", dir + "@" + digest, PrefixLayout + dir + ":0.2.0"} {
		p, err := Open(bg(), source, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("Open(%s): %v", source, err)
		}
		if !reflect.DeepEqual(p.Manifest, m) {
			t.Fatalf("Open(%s).Manifest = %+v, want %+v", source, p.Manifest, m)
		}
		checkAllParts(t, p, tp)
	}
	for _, source := range []string{dir + ":0.3.0", dir + "@sha256:" + strings.Repeat("0", 64)} {
		if _, err := Open(bg(), source, []ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "no manifest") {
			t.Errorf("Open(%s): %v, want no manifest", source, err)
		}
	}
}

func TestOpenLayoutSeveralVersions(t *testing.T) {
	priv, pub := memKey(t)
	dir := filepath.Join(t.TempDir(), "layout")
	parts := map[string]testParts{}
	for _, v := range []string{"0.1.0", "0.2.0"} {
		img, _, tp := createPayload(t, priv, v)
		if err := WriteLayout(dir, img, v); err != nil {
			t.Fatal(err)
		}
		parts[v] = tp
	}
	keys := []ed25519.PublicKey{pub}
	if _, err := Open(bg(), dir, keys); err == nil || !strings.Contains(err.Error(), "0.1.0, 0.2.0") {
		t.Fatalf("Open of a layout with two payloads and no tag: %v", err)
	}
	for v, tp := range parts {
		p, err := Open(bg(), dir+":"+v, keys)
		if err != nil {
			t.Fatal(err)
		}
		if p.Manifest.Version != v {
			t.Fatalf("%s:%s holds version %s", dir, v, p.Manifest.Version)
		}
		checkAllParts(t, p, tp)
	}
	// Writing a tag again replaces it rather than adding an ambiguous twin.
	img, _, tp := createPayload(t, priv, "0.2.0")
	if err := WriteLayout(dir, img, "0.2.0"); err != nil {
		t.Fatal(err)
	}
	p, err := Open(bg(), dir+":0.2.0", keys)
	if err != nil {
		t.Fatal(err)
	}
	checkAllParts(t, p, tp)
}

func TestOpenTarball(t *testing.T) {
	priv, pub := memKey(t)
	img, m, tp := createPayload(t, priv, "0.2.0")
	path := filepath.Join(t.TempDir(), "berth-0.2.0.tar")
	if err := WriteTarball(path, img, "0.2.0"); err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{path, path + ":0.2.0", PrefixArchive + path} {
		p, err := Open(bg(), source, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("Open(%s): %v", source, err)
		}
		if !reflect.DeepEqual(p.Manifest, m) {
			t.Fatalf("manifest %+v, want %+v", p.Manifest, m)
		}
		checkAllParts(t, p, tp)
	}
	if _, err := Open(bg(), path+":0.1.0", []ed25519.PublicKey{pub}); err == nil {
		t.Error("Open of a tag the tarball does not hold succeeded")
	}
}

func TestOpenTarballTampered(t *testing.T) {
	priv, pub := memKey(t)
	img, m, _ := createPayload(t, priv, "0.2.0")
	path := filepath.Join(t.TempDir(), "p.tar")
	if err := WriteTarball(path, img, "0.2.0"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	// The slot is the largest entry: flip a byte in the middle of the file.
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Open(bg(), path, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	got, err := readPart(t, p.Slot)
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("reading a tampered slot: %v", err)
	}
	if int64(len(got)) != m.Slot.Size {
		t.Fatalf("read %d bytes, want all %d before the error", len(got), m.Slot.Size)
	}
}

func TestOpenRegistry(t *testing.T) {
	reg := startRegistry(t)
	priv, pub := memKey(t)
	img, m, tp := createPayload(t, priv, "0.2.0")
	ref := reg.host + "/berth/os:0.2.0"
	if err := Push(bg(), ref, img); err != nil {
		t.Fatal(err)
	}
	layers := []string{m.Slot.SHA256, m.Kernel.SHA256, m.Initrd.SHA256}
	gets := func() (n int) {
		for _, h := range layers {
			n += reg.blobGets(h)
		}
		return n
	}
	if gets() != 0 {
		t.Fatalf("push downloaded %d layer blobs", gets())
	}

	// An untrusted key: refused, and no layer was downloaded to find out.
	_, other := memKey(t)
	_, err := Open(bg(), ref, []ed25519.PublicKey{other})
	if err == nil || !strings.Contains(err.Error(), "payload signature: not signed by a trusted key") {
		t.Fatalf("Open with an untrusted key: %v", err)
	}
	if gets() != 0 {
		t.Fatalf("Open fetched %d layer blobs before refusing the signature", gets())
	}

	for _, source := range []string{ref, PrefixRegistry + ref} {
		p, err := Open(bg(), source, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("Open(%s): %v", source, err)
		}
		if !reflect.DeepEqual(p.Manifest, m) {
			t.Fatalf("manifest %+v, want %+v", p.Manifest, m)
		}
		if gets() != 0 {
			t.Fatalf("Open fetched %d layer blobs; parts must only be fetched when read", gets())
		}
		checkAllParts(t, p, tp)
		if gets() != 3 {
			t.Fatalf("reading the three parts fetched %d layer blobs, want 3", gets())
		}
		reg.reset()
	}
	if _, err := Open(bg(), reg.host+"/berth/os:0.9.9", []ed25519.PublicKey{pub}); err == nil {
		t.Error("Open of a missing tag succeeded")
	}
	// A registry reference needs an explicit tag or digest.
	if _, err := Open(bg(), reg.host+"/berth/os", []ed25519.PublicKey{pub}); err == nil {
		t.Error("Open of a reference without a tag succeeded")
	}
}

// An ordinary container image is not a payload.
func TestOpenRefusesOtherImages(t *testing.T) {
	_, pub := memKey(t)
	reg := startRegistry(t)
	rnd, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	oci := mutate.MediaType(rnd, types.OCIManifestSchema1)
	for name, img := range map[string]v1.Image{"docker": rnd, "oci": oci} {
		ref := reg.host + "/other/" + name + ":1"
		if err := Push(bg(), ref, img); err != nil {
			t.Fatal(err)
		}
		_, err := Open(bg(), ref, []ed25519.PublicKey{pub})
		if err == nil || !(strings.Contains(err.Error(), "not a berth payload") || strings.Contains(err.Error(), "want an OCI image manifest")) {
			t.Errorf("%s image: Open = %v", name, err)
		}
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: oci})
	ref := reg.host + "/other/index:1"
	if err := remote.WriteIndex(mustRef(t, ref), idx); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bg(), ref, []ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "want an OCI image manifest") {
		t.Errorf("index: Open = %v", err)
	}
}

func TestOpenSourceErrors(t *testing.T) {
	_, pub := memKey(t)
	keys := []ed25519.PublicKey{pub}
	dir := t.TempDir()
	notLayout := filepath.Join(dir, "plain")
	if err := os.Mkdir(notLayout, 0o755); err != nil {
		t.Fatal(err)
	}
	notTar := filepath.Join(dir, "file.txt")
	if err := os.WriteFile(notTar, []byte("hello, not a tar file at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	for source, want := range map[string]string{
		filepath.Join(dir, "missing"):   "no such file",
		"./missing-payload":             "no such file",
		notLayout:                       "not an OCI layout",
		notTar:                          "payload archive",
		"UPPER/case:tag":                "registry reference",
		PrefixLayout + dir + "/nothing": "no such file",
	} {
		_, err := Open(bg(), source, keys)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), source) {
			t.Errorf("Open(%s) = %v, want an error naming the source and saying %q", source, err, want)
		}
	}
	layoutDir, _, _, _ := layoutWith(t, "0.2.0")
	if _, err := Open(bg(), layoutDir, nil); err == nil || !strings.Contains(err.Error(), "no trusted keys") {
		t.Errorf("Open without keys: %v", err)
	}
}

// Open reads no layer: with every layer blob gone it still verifies the
// payload, or refuses it on its signature alone.
func TestOpenReadsNoLayer(t *testing.T) {
	dir, m, _, pub := layoutWith(t, "0.2.0")
	for _, b := range []Blob{m.Slot, m.Kernel, m.Initrd} {
		if err := os.Remove(blobPath(dir, partHash(b))); err != nil {
			t.Fatal(err)
		}
	}
	p, err := Open(bg(), dir, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatalf("Open needs a layer blob: %v", err)
	}
	if _, err := p.Slot(); err == nil {
		t.Fatal("Slot() of a deleted blob succeeded")
	}
	_, other := memKey(t)
	if _, err := Open(bg(), dir, []ed25519.PublicKey{other}); err == nil || !strings.Contains(err.Error(), "not signed by a trusted key") {
		t.Fatalf("Open with the wrong key: %v, want a signature error", err)
	}
}

func TestSlotTamperedInLayout(t *testing.T) {
	for name, tamper := range map[string]struct {
		edit func([]byte) []byte
		want string
	}{
		"flipped byte": {func(b []byte) []byte { b[len(b)/3] ^= 1; return b }, "sha256"},
		"last byte":    {func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, "sha256"},
		"extra byte":   {func(b []byte) []byte { return append(b, 0) }, "more than"},
		"truncated":    {func(b []byte) []byte { return b[:len(b)-1] }, "bytes, but the signed manifest says"},
	} {
		t.Run(name, func(t *testing.T) {
			dir, m, tp, pub := layoutWith(t, "0.2.0")
			path := blobPath(dir, partHash(m.Slot))
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tamper.edit(data), 0o644); err != nil {
				t.Fatal(err)
			}
			p, err := Open(bg(), dir, []ed25519.PublicKey{pub})
			if err != nil {
				t.Fatal(err)
			}
			got, err := readPart(t, p.Slot)
			if err == nil || !strings.Contains(err.Error(), tamper.want) || !strings.Contains(err.Error(), "slot") {
				t.Fatalf("reading the tampered slot: %v, want an error about %q", err, tamper.want)
			}
			if int64(len(got)) > m.Slot.Size {
				t.Fatalf("the reader handed out %d bytes, more than the signed %d", len(got), m.Slot.Size)
			}
			// The error is sticky, and the other parts are intact.
			if got, err := readPart(t, p.Kernel); err != nil || string(got) != string(tp.kernel) {
				t.Fatalf("kernel after slot tampering: %v", err)
			}
		})
	}
}

// The verifying reader's error does not go away when read again.
func TestVerifyingReaderErrorIsSticky(t *testing.T) {
	want := Blob{Size: 3, SHA256: strings.Repeat("0", 64)}
	r := newVerifyingReader("slot", want, io.NopCloser(strings.NewReader("abc")))
	if _, err := io.ReadAll(r); err == nil {
		t.Fatal("wrong digest not reported")
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("second read = %d, %v; want the same error", n, err)
	}
}

func TestOpenRefusesChangedEnvelope(t *testing.T) {
	t.Run("edited in place", func(t *testing.T) {
		dir, _, _, pub := layoutWith(t, "0.2.0")
		cfg := configBlob(t, dir)
		data, _ := os.ReadFile(cfg)
		data = []byte(strings.Replace(string(data), `"version":"0.2.0"`, `"version":"0.2.1"`, 1))
		if err := os.WriteFile(cfg, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(bg(), dir, []ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "digest") {
			t.Fatalf("Open with an edited envelope: %v", err)
		}
	})
	t.Run("consistently replaced", func(t *testing.T) {
		// An attacker re-signs a changed manifest with their own key and
		// makes the layout point at it: the signature check refuses it.
		dir, m, _, pub := layoutWith(t, "0.2.0")
		evil, _ := memKey(t)
		m.Version = "9.9.9"
		env, err := Sign(m, evil)
		if err != nil {
			t.Fatal(err)
		}
		d := writeBlob(t, dir, env)
		rewriteManifest(t, dir, func(om *v1.Manifest) { om.Config.Digest, om.Config.Size = d.Digest, d.Size })
		if _, err := Open(bg(), dir, []ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "payload signature: not signed by a trusted key") {
			t.Fatalf("Open with a re-signed envelope: %v", err)
		}
	})
	t.Run("signatures removed", func(t *testing.T) {
		dir, _, _, pub := layoutWith(t, "0.2.0")
		data, _ := os.ReadFile(configBlob(t, dir))
		e, err := ParseEnvelope(data)
		if err != nil {
			t.Fatal(err)
		}
		e.Signatures = nil
		unsigned, _ := json.Marshal(e)
		d := writeBlob(t, dir, unsigned)
		rewriteManifest(t, dir, func(om *v1.Manifest) { om.Config.Digest, om.Config.Size = d.Digest, d.Size })
		if _, err := Open(bg(), dir, []ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "not signed") {
			t.Fatalf("Open of an unsigned payload: %v", err)
		}
	})
}

func configBlob(t *testing.T, dir string) string {
	t.Helper()
	var cfg string
	rewriteManifest(t, dir, func(om *v1.Manifest) { cfg = blobPath(dir, om.Config.Digest) })
	return cfg
}

func TestOpenRefusesLayerMismatch(t *testing.T) {
	for name, c := range map[string]struct {
		edit func(om *v1.Manifest)
		want string
	}{
		"slot digest is the kernel's": {func(om *v1.Manifest) { om.Layers[0].Digest = om.Layers[1].Digest }, "slot layer"},
		"initrd size":                 {func(om *v1.Manifest) { om.Layers[2].Size++ }, "initrd layer"},
		"layers swapped":              {func(om *v1.Manifest) { om.Layers[0], om.Layers[1] = om.Layers[1], om.Layers[0] }, "media type"},
		"layer missing":               {func(om *v1.Manifest) { om.Layers = om.Layers[:2] }, "2 layers"},
		"extra layer":                 {func(om *v1.Manifest) { om.Layers = append(om.Layers, om.Layers[2]) }, "4 layers"},
		"gzip media type":             {func(om *v1.Manifest) { om.Layers[1].MediaType = types.OCILayer }, "media type"},
		"config media type":           {func(om *v1.Manifest) { om.Config.MediaType = types.OCIConfigJSON }, "not a berth payload"},
		"artifact type":               {func(om *v1.Manifest) { om.ArtifactType = "application/x-other" }, "not a berth payload"},
		"docker manifest":             {func(om *v1.Manifest) { om.MediaType = types.DockerManifestSchema2 }, "not an OCI image manifest"},
		"huge config":                 {func(om *v1.Manifest) { om.Config.Size = 1 << 30 }, "size"},
	} {
		t.Run(name, func(t *testing.T) {
			dir, _, _, pub := layoutWith(t, "0.2.0")
			rewriteManifest(t, dir, c.edit)
			_, err := Open(bg(), dir, []ed25519.PublicKey{pub})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open = %v, want an error about %q", err, c.want)
			}
		})
	}
}
