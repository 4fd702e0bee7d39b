package payload

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestCreate(t *testing.T) {
	priv, pub := memKey(t)
	tp := makeParts(t, 1<<20)
	in := sampleManifest()
	in.Schema, in.Slot, in.Kernel, in.Initrd, in.SlotFSType = 0, Blob{}, Blob{}, Blob{}, ""
	img, m, err := Create(in, tp.Parts, priv)
	if err != nil {
		t.Fatal(err)
	}
	if m.Schema != Schema || m.SlotFSType != SlotFSType || m.Version != in.Version {
		t.Fatalf("Create filled in %+v", m)
	}
	for name, c := range map[string]struct {
		got  Blob
		data []byte
	}{"slot": {m.Slot, tp.slot}, "kernel": {m.Kernel, tp.kernel}, "initrd": {m.Initrd, tp.initrd}} {
		sum := sha256.Sum256(c.data)
		if c.got.Size != int64(len(c.data)) || c.got.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: manifest says %+v, file has %d bytes, sha256 %x", name, c.got, len(c.data), sum)
		}
	}

	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Fatalf("media type %q, %v; want an OCI manifest", mt, err)
	}
	raw, _ := img.RawManifest()
	var om v1.Manifest
	if err := json.Unmarshal(raw, &om); err != nil {
		t.Fatal(err)
	}
	if om.ArtifactType != ArtifactType || om.Config.MediaType != EnvelopeType || om.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("OCI manifest: %s", raw)
	}
	config, _ := img.RawConfigFile()
	e, err := ParseEnvelope(config)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := e.Verify([]ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	if signed.Slot != m.Slot || signed.Version != m.Version {
		t.Fatalf("envelope holds %+v, Create returned %+v", signed, m)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 3 {
		t.Fatalf("Layers = %d, %v", len(layers), err)
	}
	for i, want := range []struct {
		mt   string
		blob Blob
		data []byte
	}{{SlotType, m.Slot, tp.slot}, {KernelType, m.Kernel, tp.kernel}, {InitrdType, m.Initrd, tp.initrd}} {
		d, _ := layers[i].Digest()
		lmt, _ := layers[i].MediaType()
		if string(lmt) != want.mt || d.Hex != want.blob.SHA256 || om.Layers[i].Digest != d {
			t.Errorf("layer %d: %s %s, want %s sha256:%s", i, lmt, d, want.mt, want.blob.SHA256)
		}
		rc, err := layers[i].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(rc); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		rc.Close()
		if !bytes.Equal(buf.Bytes(), want.data) {
			t.Errorf("layer %d content differs from its file", i)
		}
	}
}

func TestCreateErrors(t *testing.T) {
	priv, _ := memKey(t)
	tp := makeParts(t, 100)
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		parts Parts
		want  string
	}{
		"missing slot":  {Parts{Slot: "/nonexistent", Kernel: tp.Kernel, Initrd: tp.Initrd}, "slot"},
		"no kernel":     {Parts{Slot: tp.Slot, Initrd: tp.Initrd}, "kernel"},
		"initrd is dir": {Parts{Slot: tp.Slot, Kernel: tp.Kernel, Initrd: t.TempDir()}, "not a regular file"},
		"empty kernel":  {Parts{Slot: tp.Slot, Kernel: empty, Initrd: tp.Initrd}, "empty"},
	} {
		if _, _, err := Create(sampleManifest(), c.parts, priv); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Create = %v, want an error about %q", name, err, c.want)
		}
	}
	bad := sampleManifest()
	bad.OS = ""
	if _, _, err := Create(bad, tp.Parts, priv); err == nil {
		t.Error("Create of a manifest without an os succeeded")
	}
}

// A part changed between Create and writing is not published.
func TestWriteRefusesChangedPart(t *testing.T) {
	priv, _ := memKey(t)
	img, _, tp := createPayload(t, priv, "0.2.0")
	data := append([]byte{}, tp.kernel...)
	data[100] ^= 1
	if err := os.WriteFile(tp.Kernel, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, img, "0.2.0"); err == nil || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("WriteLayout with a changed kernel: %v", err)
	}
	if err := WriteTarball(filepath.Join(t.TempDir(), "p.tar"), img, "0.2.0"); err == nil {
		t.Fatal("WriteTarball with a changed kernel succeeded")
	}
}

func TestWriteBadTag(t *testing.T) {
	priv, _ := memKey(t)
	img, _, _ := createPayload(t, priv, "0.2.0")
	for _, tag := range []string{"", ".x", "-x", "a/b", "a:b", strings.Repeat("a", 129)} {
		if err := WriteLayout(t.TempDir(), img, tag); err == nil {
			t.Errorf("WriteLayout with tag %q succeeded", tag)
		}
		if err := WriteTarball(filepath.Join(t.TempDir(), "p.tar"), img, tag); err == nil {
			t.Errorf("WriteTarball with tag %q succeeded", tag)
		}
	}
}

func TestWriteTarballIsReproducibleAndStandard(t *testing.T) {
	priv, pub := memKey(t)
	img, _, tp := createPayload(t, priv, "0.2.0")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, p := range []string{a, b} {
		if err := WriteTarball(p, img, "0.2.0"); err != nil {
			t.Fatal(err)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Error("two tarballs of one payload differ")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files next to the tarballs, want 2 (temporary files left?)", len(entries))
	}
	// GNU tar unpacks it into an OCI layout that Open reads as a directory.
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("tar not installed")
	}
	out := filepath.Join(dir, "unpacked")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if msg, err := exec.Command("tar", "-xf", a, "-C", out).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v: %s", err, msg)
	}
	p, err := Open(bg(), out+":0.2.0", []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	checkAllParts(t, p, tp)

	// And a layout packed by GNU tar, in formats with extended headers
	// before each file, is read in place too.
	for _, format := range []string{"pax", "gnu"} {
		packed := filepath.Join(dir, format+".tar")
		if msg, err := exec.Command("tar", "--format="+format, "-cf", packed, "-C", out, ".").CombinedOutput(); err != nil {
			t.Fatalf("tar -c: %v: %s", err, msg)
		}
		p, err := Open(bg(), packed, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("%s tar: %v", format, err)
		}
		checkAllParts(t, p, tp)
	}
}
