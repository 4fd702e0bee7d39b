package payload

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// PEM block types: PKCS#8 and PKIX, so openssl and other tools read the keys.
const (
	pemPrivate = "PRIVATE KEY"
	pemPublic  = "PUBLIC KEY"
)

// PublicKeySuffix names the files LoadPublicKeys reads from a keys directory.
const PublicKeySuffix = ".pub"

// maxKeyFile bounds what is read from a key file: an ed25519 PEM is ~120 bytes.
const maxKeyFile = 64 << 10

// GenerateKey writes a new ed25519 key pair: the private key as PKCS#8 PEM
// (mode 0600) and the public key as PKIX PEM (mode 0644). It refuses to
// overwrite either file, so a signing key is never lost by accident.
func GenerateKey(privPath, pubPath string) error {
	if privPath == "" || pubPath == "" {
		return errors.New("generate key: both a private and a public key path are needed")
	}
	if filepath.Clean(privPath) == filepath.Clean(pubPath) {
		return fmt.Errorf("generate key: private and public key paths are the same (%s)", privPath)
	}
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("generate key: %s already exists; refusing to overwrite it", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("generate key: %w", err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("generate key: encode private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("generate key: encode public key: %w", err)
	}
	if err := writeNewFile(privPath, pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: privDER}), 0o600); err != nil {
		return fmt.Errorf("generate key: private key: %w", err)
	}
	if err := writeNewFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: pubDER}), 0o644); err != nil {
		// A private key without its public half is useless and confusing.
		_ = os.Remove(privPath)
		return fmt.Errorf("generate key: public key: %w", err)
	}
	return nil
}

// writeNewFile writes a complete file under a temporary name, then links it
// into place: the link fails if the name exists (no overwrite, even in a
// race), and readers never see a half-written key.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it", path)
		}
		return err
	}
	return nil
}

// readPEM reads a file holding exactly one PEM block of the given type.
func readPEM(path, blockType string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readLimited(f, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block found", path)
	}
	if block.Type != blockType {
		return nil, fmt.Errorf("%s: PEM block is %q, want %q", path, block.Type, blockType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: unexpected data after the PEM block", path)
	}
	return block.Bytes, nil
}

// LoadPrivateKey reads an ed25519 private key written by GenerateKey.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path, pemPrivate)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("load private key: %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load private key: %s: a %T, want an ed25519 key", path, k)
	}
	return priv, nil
}

// LoadPublicKey reads an ed25519 public key written by GenerateKey.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	der, err := readPEM(path, pemPublic)
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("load public key: %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("load public key: %s: a %T, want an ed25519 key", path, k)
	}
	return pub, nil
}

// LoadPublicKeys reads every *.pub file in dir, in name order. Several keys
// allow rotation: a payload signed by any of them is trusted. One unreadable
// key is an error rather than skipped, so a broken trust store is noticed.
func LoadPublicKeys(dir string) ([]ed25519.PublicKey, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load trusted keys: %w", err)
	}
	var names []string
	for _, e := range entries {
		if filepath.Ext(e.Name()) == PublicKeySuffix && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var keys []ed25519.PublicKey
	seen := map[string]bool{}
	for _, n := range names {
		k, err := LoadPublicKey(filepath.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("load trusted keys: %w", err)
		}
		if id := string(k); !seen[id] {
			seen[id] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no trusted keys in %s (want *%s files)", dir, PublicKeySuffix)
	}
	return keys, nil
}

// KeyID is a short, stable name for a public key: the first 16 hex digits
// of the sha256 of the raw 32-byte key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}
