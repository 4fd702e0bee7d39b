package slot

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

// TestApplyPayloadSourceChecksOnce: PayloadSource hands Apply the parts
// unchecked (Apply hashes them while it writes), so a real signed payload
// installs, and one whose slot or kernel blob was altered after signing
// is refused with the booted OS still next and no entry for the new one.
func TestApplyPayloadSourceChecksOnce(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	src := newSource("1.1.0", slotSize, 3)
	dir := t.TempDir()
	parts := payload.Parts{Slot: filepath.Join(dir, "slot"), Kernel: filepath.Join(dir, "kernel"), Initrd: filepath.Join(dir, "initrd")}
	for path, data := range map[string][]byte{parts.Slot: src.slot, parts.Kernel: src.kernel, parts.Initrd: src.initrd} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := src.m
	img, _, err := payload.Create(m, parts, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tamper []byte // the blob to alter in the layout, nil for none
		want   string
	}{
		{"intact", nil, ""},
		{"slot altered", src.slot, "does not match the manifest"},
		{"kernel altered", src.kernel, "write kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layoutDir := filepath.Join(t.TempDir(), "oci")
			if err := payload.WriteLayout(layoutDir, img, "1.1.0"); err != nil {
				t.Fatal(err)
			}
			if tc.tamper != nil {
				b := blob(tc.tamper)
				path := filepath.Join(layoutDir, "blobs", "sha256", b.SHA256)
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				data[len(data)/2] ^= 1
				if err := os.WriteFile(path, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			p, err := payload.Open(context.Background(), layoutDir, []ed25519.PublicKey{pub})
			if err != nil {
				t.Fatal(err)
			}
			n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
			_, err = n.sys.Apply(context.Background(), PayloadSource(p), ApplyOptions{})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if dev := n.read(n.dev[layout.SlotB]); !bytes.Equal(dev[:slotSize], src.slot) {
					t.Error("the passive slot does not hold the payload's slot image")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply of a payload with %s: %v, want %q", tc.name, err, tc.want)
			}
			if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf" {
				t.Errorf("entries after a refused payload = %v, want only the booted one", files)
			}
			if got := nextBoot(t, n.sys.ESP); got != "berth-a.conf" {
				t.Errorf("next boot = %s", got)
			}
		})
	}
}
