package payload

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// signingContext is prepended to the manifest bytes before signing, so a
// berth signing key's signature can never be replayed as a signature over
// some other kind of message (and the reverse).
const signingContext = "berth.payload.manifest.v1\n"

// Signature is one signer's ed25519 signature over the manifest bytes.
type Signature struct {
	KeyID string `json:"keyid"` // KeyID of the signer's public key: a hint for people
	Sig   string `json:"sig"`   // base64 (standard encoding) of the 64-byte signature
}

// Envelope carries the manifest bytes exactly as signed, and their
// signatures. It is the OCI config blob of a payload.
type Envelope struct {
	Manifest   json.RawMessage `json:"manifest"`
	Signatures []Signature     `json:"signatures"`
}

func signedMessage(manifest []byte) []byte {
	return append([]byte(signingContext), manifest...)
}

// Sign validates m, signs its canonical JSON and returns the envelope JSON.
func Sign(m Manifest, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign manifest: private key has %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	data, err := canonicalJSON(m)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("sign manifest: private key has no ed25519 public key")
	}
	env := Envelope{
		Manifest: data,
		Signatures: []Signature{{
			KeyID: KeyID(pub),
			Sig:   base64.StdEncoding.EncodeToString(ed25519.Sign(key, signedMessage(data))),
		}},
	}
	out, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: encode envelope: %w", err)
	}
	return out, nil
}

// ParseEnvelope parses envelope JSON strictly. It checks the shape of the
// signatures, not whether they are valid: that is Verify's job.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) > maxEnvelope {
		return nil, fmt.Errorf("payload envelope: %d bytes, more than the limit of %d", len(data), maxEnvelope)
	}
	var e Envelope
	if err := decodeStrict(data, &e); err != nil {
		return nil, fmt.Errorf("payload envelope: %w", err)
	}
	if len(e.Manifest) == 0 || e.Manifest[0] != '{' {
		return nil, errors.New("payload envelope: manifest is missing or not a JSON object")
	}
	if len(e.Signatures) > maxSignatures {
		return nil, fmt.Errorf("payload envelope: %d signatures, more than the limit of %d", len(e.Signatures), maxSignatures)
	}
	for i, s := range e.Signatures {
		if _, err := decodeSignature(s); err != nil {
			return nil, fmt.Errorf("payload envelope: signature %d: %w", i+1, err)
		}
	}
	return &e, nil
}

func decodeSignature(s Signature) ([]byte, error) {
	if len(s.KeyID) != 16 || !isSHA256Hex(s.KeyID+strings.Repeat("0", 48)) {
		return nil, fmt.Errorf("keyid %q is not 16 lowercase hex digits", truncate(s.KeyID))
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(s.Sig)
	if err != nil {
		return nil, fmt.Errorf("sig is not base64: %w", err)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("sig has %d bytes, want %d", len(sig), ed25519.SignatureSize)
	}
	return sig, nil
}

// Verify succeeds when any signature verifies with any trusted key, so keys
// can be rotated: sign with old and new, then retire the old one. It then
// parses the exact bytes that were signed.
func (e *Envelope) Verify(keys []ed25519.PublicKey) (Manifest, error) {
	if len(keys) == 0 {
		return Manifest{}, errors.New("payload signature: no trusted keys to verify with")
	}
	if len(e.Signatures) == 0 {
		return Manifest{}, errors.New("payload signature: the payload is not signed (no signatures in its envelope)")
	}
	msg := signedMessage(e.Manifest)
	for _, s := range e.Signatures {
		sig, err := decodeSignature(s)
		if err != nil {
			continue // a malformed extra signature must not hide a good one
		}
		for _, k := range keys {
			if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig) {
				m, err := ParseManifest(e.Manifest)
				if err != nil {
					return Manifest{}, fmt.Errorf("payload signature valid, but: %w", err)
				}
				return m, nil
			}
		}
	}
	return Manifest{}, fmt.Errorf("payload signature: not signed by a trusted key (keys: %s; signed by: %s)",
		strings.Join(keyIDs(keys), ", "), strings.Join(signerIDs(e.Signatures), ", "))
}

func keyIDs(keys []ed25519.PublicKey) []string {
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, KeyID(k))
	}
	return ids
}

func signerIDs(sigs []Signature) []string {
	ids := make([]string, 0, len(sigs))
	for _, s := range sigs {
		ids = append(ids, fmt.Sprintf("%q", truncate(s.KeyID)))
	}
	return ids
}
