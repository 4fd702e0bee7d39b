package payload

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzKey is fixed so that seeds signed with it stay valid across runs.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func FuzzParseManifest(f *testing.F) {
	canon, _ := canonicalJSON(sampleManifest())
	f.Add(canon)
	m := sampleManifest()
	m.VerityRoot = strings.Repeat("f", 64)
	m.Cmdline = nil
	withVerity, _ := canonicalJSON(m)
	f.Add(withVerity)
	f.Add([]byte(strings.Replace(string(canon), `"version":"0.2.0"`, `"Version":"0.2.0"`, 1)))
	f.Add([]byte(strings.Replace(string(canon), `"cmdline":[`, `"cmdline":["berth.root=x",`, 1)))
	f.Add([]byte(`{"schema":1}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"schema":1e0,"os":"\u0000"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("ParseManifest accepted a manifest Validate refuses: %v", err)
		}
		again, err := canonicalJSON(m)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted manifest is not canonical:\n%s\n%s", data, again)
		}
	})
}

func FuzzParseEnvelope(f *testing.F) {
	pub := fuzzKey.Public().(ed25519.PublicKey)
	good, err := Sign(sampleManifest(), fuzzKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	canon, _ := canonicalJSON(sampleManifest())
	twoSigs, _ := json.Marshal(Envelope{Manifest: canon, Signatures: []Signature{
		{KeyID: "0000000000000000", Sig: strings.Repeat("A", 86) + "=="},
		rawSignature(fuzzKey, canon),
	}})
	f.Add(twoSigs)
	f.Add([]byte(`{"manifest":{},"signatures":[]}`))
	f.Add([]byte(`{"manifest":{"schema":1},"signatures":[{"keyid":"","sig":""}]}`))
	f.Add([]byte(`{"manifest":[],"signatures":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnvelope(data)
		if err != nil {
			return
		}
		m, err := e.Verify([]ed25519.PublicKey{pub})
		if err != nil {
			return
		}
		// Whatever verifies was signed by the key, is valid, and is
		// exactly the canonical encoding of what Verify returned.
		if err := m.Validate(); err != nil {
			t.Fatalf("Verify returned an invalid manifest: %v", err)
		}
		again, err := canonicalJSON(m)
		if err != nil || !bytes.Equal(again, e.Manifest) {
			t.Fatalf("verified manifest bytes are not canonical:\n%s\n%s", e.Manifest, again)
		}
	})
}

// FuzzOpenArchive feeds Open arbitrary tar files: a payload tarball comes
// from anywhere, so reading it must fail cleanly, never panic or hang.
func FuzzOpenArchive(f *testing.F) {
	dir := f.TempDir()
	parts := Parts{Slot: dir + "/s", Kernel: dir + "/k", Initrd: dir + "/i"}
	for i, p := range []string{parts.Slot, parts.Kernel, parts.Initrd} {
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte('a' + i)}, 100+i), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	img, _, err := Create(sampleManifest(), parts, fuzzKey)
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "seed.tar")
	if err := WriteTarball(path, img, "seed"); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(path)
	f.Add(seed)
	f.Add([]byte{})
	f.Add(seed[:1024])
	keys := []ed25519.PublicKey{fuzzKey.Public().(ed25519.PublicKey)}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "p.tar")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := Open(context.Background(), PrefixArchive+path, keys)
		if err != nil {
			return
		}
		for _, open := range []func() (io.ReadCloser, error){p.Slot, p.Kernel, p.Initrd} {
			rc, err := open()
			if err != nil {
				continue
			}
			n, _ := io.Copy(io.Discard, rc)
			rc.Close()
			if n > p.Manifest.Slot.Size && n > p.Manifest.Kernel.Size && n > p.Manifest.Initrd.Size {
				t.Fatalf("read %d bytes, more than any signed part", n)
			}
		}
	})
}
