package build

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

// installKeys puts the public keys the image trusts for updates into the
// root (the signing key's public half and every --trust key), and returns
// the signing key, or nil when the build is unsigned.
func installKeys(root string, o Options) (ed25519.PrivateKey, error) {
	dir := filepath.Join(root, layout.KeysDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var pubs []ed25519.PublicKey
	var signing ed25519.PrivateKey
	if o.SigningKey != "" {
		k, err := payload.LoadPrivateKey(o.SigningKey)
		if err != nil {
			return nil, fmt.Errorf("signing key: %w", err)
		}
		signing = k
		pubs = append(pubs, k.Public().(ed25519.PublicKey))
	}
	for _, p := range o.TrustKeys {
		k, err := payload.LoadPublicKey(p)
		if err != nil {
			return nil, fmt.Errorf("trusted key: %w", err)
		}
		pubs = append(pubs, k)
	}
	for _, k := range pubs {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return nil, err
		}
		data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, payload.KeyID(k)+".pub"), data, 0o644); err != nil {
			return nil, err
		}
	}
	return signing, nil
}

// writePayload signs the slot, kernel and initrd into an OCI layout
// directory NAME-VERSION.oci (tag = version) inside work.
func writePayload(work, base string, s *spec.Spec, kernelVersion, slotImg string, kernel, initrd []byte, key ed25519.PrivateKey) (string, string, error) {
	kernelPath := filepath.Join(work, "vmlinuz")
	initrdPath := filepath.Join(work, "initrd.img")
	if err := os.WriteFile(kernelPath, kernel, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(initrdPath, initrd, 0o644); err != nil {
		return "", "", err
	}
	img, _, err := payload.Create(payload.Manifest{
		OS: s.Name, Version: s.Version, Arch: "amd64", KernelVersion: kernelVersion,
		Epoch: s.Epoch, SlotFSType: "squashfs", Cmdline: s.Kernel.Cmdline,
	}, payload.Parts{Slot: slotImg, Kernel: kernelPath, Initrd: initrdPath}, key)
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(work, base+".oci")
	if err := payload.WriteLayout(dir, img, s.Version); err != nil {
		return "", "", err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", "", err
	}
	return dir, digest.String(), nil
}
