package payload

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateKeyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub")
	if err := GenerateKey(privPath, pubPath); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{privPath: 0o600, pubPath: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("the public key file does not hold the private key's public half")
	}
	msg := []byte("hello")
	if !ed25519.Verify(pub, msg, ed25519.Sign(priv, msg)) {
		t.Fatal("loaded keys do not sign and verify")
	}
	// No temporary files are left next to the keys.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("key directory holds %d files, want 2", len(entries))
	}
	// A second pair is a different key.
	if err := GenerateKey(filepath.Join(dir, "b.key"), filepath.Join(dir, "b.pub")); err != nil {
		t.Fatal(err)
	}
	other, err := LoadPublicKey(filepath.Join(dir, "b.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if other.Equal(pub) {
		t.Fatal("two generated keys are equal")
	}
}

// The files are standard PKCS#8/PKIX PEM: openssl derives the same public key.
func TestGenerateKeyOpenSSLCompatible(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if err := GenerateKey(privPath, pubPath); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "pkey", "-in", privPath, "-pubout").Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	want, _ := os.ReadFile(pubPath)
	if !bytes.Equal(out, want) {
		t.Fatalf("openssl derives\n%s\nthe public key file holds\n%s", out, want)
	}
}

func TestGenerateKeyRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if err := os.WriteFile(privPath, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := GenerateKey(privPath, pubPath)
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("GenerateKey over an existing private key: %v", err)
	}
	if data, _ := os.ReadFile(privPath); string(data) != "precious" {
		t.Fatal("existing private key was changed")
	}
	if _, err := os.Stat(pubPath); !os.IsNotExist(err) {
		t.Fatal("a public key was written although generation failed")
	}

	// An existing public key: nothing is written either.
	privPath2 := filepath.Join(dir, "k2.key")
	if err := GenerateKey(privPath2, privPath); err == nil {
		t.Fatal("GenerateKey over an existing public key succeeded")
	}
	if _, err := os.Stat(privPath2); !os.IsNotExist(err) {
		t.Fatal("a private key was written although generation failed")
	}
	if err := GenerateKey(pubPath, pubPath); err == nil {
		t.Fatal("GenerateKey with one path for both keys succeeded")
	}
}

func TestKeyID(t *testing.T) {
	_, pub := memKey(t)
	id := KeyID(pub)
	sum := sha256.Sum256(pub)
	if id != hex.EncodeToString(sum[:])[:16] {
		t.Fatalf("KeyID = %q, want the first 16 hex digits of sha256 of the raw key", id)
	}
	_, other := memKey(t)
	if KeyID(other) == id {
		t.Fatal("two keys have the same id")
	}
}

func TestLoadPublicKeys(t *testing.T) {
	dir := t.TempDir()
	privA, pubA := testKey(t, dir, "a")
	privB, pubB := testKey(t, dir, "b")
	// Private keys and other files in the directory are not trust anchors.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadPublicKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || !keys[0].Equal(pubA) || !keys[1].Equal(pubB) {
		t.Fatalf("LoadPublicKeys = %d keys, want a and b in name order", len(keys))
	}
	// Rotation: a payload signed by either trusted key verifies.
	for name, priv := range map[string]ed25519.PrivateKey{"a": privA, "b": privB} {
		env, err := Sign(sampleManifest(), priv)
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseEnvelope(env)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Verify(keys); err != nil {
			t.Errorf("payload signed by %s: %v", name, err)
		}
	}
	// A third key is not trusted.
	privC, _ := memKey(t)
	env, _ := Sign(sampleManifest(), privC)
	e, _ := ParseEnvelope(env)
	_, err = e.Verify(keys)
	if err == nil || !strings.Contains(err.Error(), "not signed by a trusted key") ||
		!strings.Contains(err.Error(), KeyID(pubA)) || !strings.Contains(err.Error(), KeyID(pubB)) {
		t.Fatalf("payload signed by an untrusted key: %v", err)
	}
}

func TestLoadPublicKeysNone(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadPublicKeys(dir)
	if err == nil || !strings.Contains(err.Error(), "no trusted keys in "+dir) {
		t.Fatalf("LoadPublicKeys of a directory without keys: %v", err)
	}
	if _, err := LoadPublicKeys(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("LoadPublicKeys of a missing directory succeeded")
	}
}

func TestLoadPublicKeysRefusesABrokenKey(t *testing.T) {
	dir := t.TempDir()
	testKey(t, dir, "good")
	if err := os.WriteFile(filepath.Join(dir, "broken.pub"), []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPublicKeys(dir); err == nil || !strings.Contains(err.Error(), "broken.pub") {
		t.Fatalf("LoadPublicKeys with a broken key: %v", err)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	testKey(t, dir, "k")
	privPEM, _ := os.ReadFile(filepath.Join(dir, "k.key"))
	pubPEM, _ := os.ReadFile(filepath.Join(dir, "k.pub"))
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPubDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	ecPrivDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, data := range map[string][]byte{
		"garbage":  []byte("hello"),
		"empty":    nil,
		"trailing": append(append([]byte{}, pubPEM...), "junk"...),
		"twice":    append(append([]byte{}, pubPEM...), pubPEM...),
		"private":  privPEM, // a private key where a public one is expected
		"ecdsa":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecPubDER}),
		"bad der":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}),
	} {
		if _, err := LoadPublicKey(write(name+".pub", data)); err == nil {
			t.Errorf("LoadPublicKey(%s) succeeded", name)
		}
	}
	for name, data := range map[string][]byte{
		"garbage": []byte("hello"),
		"public":  pubPEM,
		"ecdsa":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecPrivDER}),
	} {
		if _, err := LoadPrivateKey(write(name+".key", data)); err == nil {
			t.Errorf("LoadPrivateKey(%s) succeeded", name)
		}
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing.key")); err == nil {
		t.Error("LoadPrivateKey of a missing file succeeded")
	}
}
