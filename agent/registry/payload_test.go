package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/berth-os/berth/updater/payload"
)

// TestPayloadThroughLocalTransport is the rollout's read path: a signed
// OS payload pushed by the admin is opened by a node through its own
// registry in process (payload.WithTransport), and both the checked and
// the unchecked readers give the signed bytes.
func TestPayloadThroughLocalTransport(t *testing.T) {
	reg, err := New(Options{Dir: t.TempDir(), Authorize: true, Tags: &MemTags{}})
	if err != nil {
		t.Fatal(err)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	slot := make([]byte, 3<<20)
	rand.Read(slot)
	parts := payload.Parts{Slot: filepath.Join(dir, "slot"), Kernel: filepath.Join(dir, "kernel"), Initrd: filepath.Join(dir, "initrd")}
	for path, data := range map[string][]byte{parts.Slot: slot, parts.Kernel: []byte("kernel"), parts.Initrd: []byte("initrd")} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img, _, err := payload.Create(payload.Manifest{OS: "berth-minimal", Version: "0.2.0", Arch: "amd64"}, parts, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ref, _ := name.ParseReference("berth.local/berth/os:0.2.0")
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(reg.LocalTransport(Identity{Role: RoleAdmin, Name: "admin"}))); err != nil {
		t.Fatal(err)
	}
	node := reg.LocalTransport(Identity{Role: RoleNode, Name: "node-1"})
	p, err := payload.Open(ctx, payload.PrefixRegistry+ref.String(), []ed25519.PublicKey{pub}, payload.WithTransport(node))
	if err != nil {
		t.Fatal(err)
	}
	for name, open := range map[string]func() (io.ReadCloser, error){
		"checked":   p.Slot,
		"unchecked": func() (io.ReadCloser, error) { return p.Unchecked(payload.PartSlot) },
	} {
		rc, err := open()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, slot) {
			t.Fatalf("%s read: %d bytes, %v; want the %d signed bytes", name, len(got), err, len(slot))
		}
	}
	if _, err := payload.Open(ctx, payload.PrefixRegistry+"berth.local/berth/os:9.9", []ed25519.PublicKey{pub}, payload.WithTransport(node)); err == nil {
		t.Error("opening a missing version: no error")
	}
}
