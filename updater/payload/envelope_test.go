package payload

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func signEnvelope(t testing.TB, m Manifest, key ed25519.PrivateKey) *Envelope {
	t.Helper()
	data, err := Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// rawSignature signs arbitrary manifest bytes the way Sign does.
func rawSignature(key ed25519.PrivateKey, manifest []byte) Signature {
	return Signature{
		KeyID: KeyID(key.Public().(ed25519.PublicKey)),
		Sig:   base64.StdEncoding.EncodeToString(ed25519.Sign(key, signedMessage(manifest))),
	}
}

func TestSignVerify(t *testing.T) {
	priv, pub := memKey(t)
	m := sampleManifest()
	e := signEnvelope(t, m, priv)
	if len(e.Signatures) != 1 || e.Signatures[0].KeyID != KeyID(pub) {
		t.Fatalf("signatures = %+v, want one by %s", e.Signatures, KeyID(pub))
	}
	got, err := e.Verify([]ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("Verify = %+v, want %+v", got, m)
	}
	// Signing is deterministic (ed25519), so the same manifest gives the
	// same envelope.
	again, _ := Sign(m, priv)
	first, _ := Sign(m, priv)
	if !bytes.Equal(again, first) {
		t.Error("signing the same manifest twice gives different envelopes")
	}
}

func TestSignNilCmdline(t *testing.T) {
	priv, pub := memKey(t)
	m := sampleManifest()
	m.Cmdline = nil
	got, err := signEnvelope(t, m, priv).Verify([]ed25519.PublicKey{pub})
	if err != nil {
		t.Fatal(err)
	}
	if got.Cmdline == nil || len(got.Cmdline) != 0 {
		t.Fatalf("nil cmdline came back as %#v, want an empty list", got.Cmdline)
	}
}

func TestSignRefusesInvalidManifest(t *testing.T) {
	priv, _ := memKey(t)
	m := sampleManifest()
	m.Slot.SHA256 = "nope"
	if _, err := Sign(m, priv); err == nil || !strings.Contains(err.Error(), "slot sha256") {
		t.Fatalf("Sign of an invalid manifest: %v", err)
	}
	if _, err := Sign(sampleManifest(), ed25519.PrivateKey{1, 2, 3}); err == nil {
		t.Fatal("Sign with a truncated key succeeded")
	}
}

func TestVerifyWrongKey(t *testing.T) {
	priv, _ := memKey(t)
	_, other := memKey(t)
	_, err := signEnvelope(t, sampleManifest(), priv).Verify([]ed25519.PublicKey{other})
	if err == nil || !strings.HasPrefix(err.Error(), "payload signature: not signed by a trusted key (keys: "+KeyID(other)) {
		t.Fatalf("Verify with the wrong key: %v", err)
	}
	if _, err := signEnvelope(t, sampleManifest(), priv).Verify(nil); err == nil {
		t.Fatal("Verify without keys succeeded")
	}
}

func TestVerifyManifestChangedAfterSigning(t *testing.T) {
	priv, pub := memKey(t)
	e := signEnvelope(t, sampleManifest(), priv)
	changed := bytes.Replace(e.Manifest, []byte(`"version":"0.2.0"`), []byte(`"version":"0.2.1"`), 1)
	if bytes.Equal(changed, e.Manifest) {
		t.Fatal("test did not change the manifest")
	}
	// The change survives a round trip through envelope JSON.
	data, _ := json.Marshal(Envelope{Manifest: changed, Signatures: e.Signatures})
	e2, err := ParseEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e2.Verify([]ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "not signed by a trusted key") {
		t.Fatalf("Verify of a changed manifest: %v", err)
	}
	// Signatures are over the context-prefixed bytes: a bare signature of
	// the manifest does not verify.
	bare := Signature{KeyID: KeyID(pub), Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(priv, e.Manifest))}
	e3 := &Envelope{Manifest: e.Manifest, Signatures: []Signature{bare}}
	if _, err := e3.Verify([]ed25519.PublicKey{pub}); err == nil {
		t.Fatal("a signature without the berth context verified")
	}
}

func TestVerifyUnsigned(t *testing.T) {
	_, pub := memKey(t)
	m, _ := canonicalJSON(sampleManifest())
	for _, data := range []string{
		`{"manifest":` + string(m) + `,"signatures":[]}`,
		`{"manifest":` + string(m) + `,"signatures":null}`,
		`{"manifest":` + string(m) + `}`,
	} {
		e, err := ParseEnvelope([]byte(data))
		if err != nil {
			t.Fatalf("ParseEnvelope(%s): %v", data, err)
		}
		if _, err := e.Verify([]ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "not signed") {
			t.Fatalf("Verify of an unsigned envelope: %v", err)
		}
	}
}

func TestVerifyAnySignatureAnyKey(t *testing.T) {
	privA, pubA := memKey(t)
	privB, pubB := memKey(t)
	m, _ := canonicalJSON(sampleManifest())
	garbage := Signature{KeyID: strings.Repeat("0", 16), Sig: base64.StdEncoding.EncodeToString(make([]byte, 64))}
	e := &Envelope{Manifest: m, Signatures: []Signature{garbage, rawSignature(privA, m), rawSignature(privB, m)}}
	for name, keys := range map[string][]ed25519.PublicKey{"a": {pubA}, "b": {pubB}, "both": {pubB, pubA}} {
		if _, err := e.Verify(keys); err != nil {
			t.Errorf("trusting %s: %v", name, err)
		}
	}
	// A signature whose keyid lies still verifies: the id is only a hint.
	s := rawSignature(privA, m)
	s.KeyID = KeyID(pubB)
	if _, err := (&Envelope{Manifest: m, Signatures: []Signature{s}}).Verify([]ed25519.PublicKey{pubA}); err != nil {
		t.Errorf("signature with a wrong keyid: %v", err)
	}
}

// A valid signature does not make an invalid or oddly spelled manifest
// acceptable: the signed bytes must parse strictly.
func TestVerifySignedButInvalidManifest(t *testing.T) {
	priv, pub := memKey(t)
	canon, _ := canonicalJSON(sampleManifest())
	var indented bytes.Buffer
	if err := json.Indent(&indented, canon, "", " "); err != nil {
		t.Fatal(err)
	}
	bad := sampleManifest()
	bad.Schema = 2
	badJSON, _ := json.Marshal(bad)
	for name, m := range map[string][]byte{
		"indented":      indented.Bytes(),
		"schema 2":      badJSON,
		"unknown field": append(canon[:len(canon)-1:len(canon)-1], `,"extra":1}`...),
	} {
		e := &Envelope{Manifest: m, Signatures: []Signature{rawSignature(priv, m)}}
		if _, err := e.Verify([]ed25519.PublicKey{pub}); err == nil || !strings.Contains(err.Error(), "manifest") {
			t.Errorf("%s: Verify = %v, want a manifest error", name, err)
		}
	}
}

func TestParseEnvelopeErrors(t *testing.T) {
	priv, _ := memKey(t)
	good, _ := Sign(sampleManifest(), priv)
	m, _ := canonicalJSON(sampleManifest())
	sig := rawSignature(priv, m)
	env := func(sigs ...Signature) string {
		data, _ := json.Marshal(Envelope{Manifest: m, Signatures: sigs})
		return string(data)
	}
	short := sig
	short.Sig = base64.StdEncoding.EncodeToString(make([]byte, 63))
	notB64 := sig
	notB64.Sig = "!!!"
	urlB64 := sig
	urlB64.Sig = base64.RawURLEncoding.EncodeToString(make([]byte, 64))
	badID := sig
	badID.KeyID = "ABCDEF0123456789"
	longID := sig
	longID.KeyID += "00"
	many := make([]Signature, maxSignatures+1)
	for i := range many {
		many[i] = sig
	}
	for name, data := range map[string]string{
		"empty":             "",
		"not json":          "hello",
		"array":             "[]",
		"trailing":          string(good) + "{}",
		"unknown field":     strings.Replace(string(good), `"signatures"`, `"extra":1,"signatures"`, 1),
		"no manifest":       `{"signatures":[]}`,
		"manifest string":   `{"manifest":"x","signatures":[]}`,
		"manifest null":     `{"manifest":null,"signatures":[]}`,
		"sig too short":     env(short),
		"sig not base64":    env(notB64),
		"sig url base64":    env(urlB64),
		"keyid upper case":  env(badID),
		"keyid too long":    env(longID),
		"too many":          env(many...),
		"signature number":  `{"manifest":` + string(m) + `,"signatures":[1]}`,
		"signature unknown": `{"manifest":` + string(m) + `,"signatures":[{"keyid":"0000000000000000","sig":"","x":1}]}`,
		"too large":         `{"manifest":` + string(m) + `,"signatures":[],"pad":"` + strings.Repeat("x", maxEnvelope) + `"}`,
	} {
		if e, err := ParseEnvelope([]byte(data)); err == nil {
			t.Errorf("%s: ParseEnvelope = %+v, want an error", name, e)
		} else if !strings.HasPrefix(err.Error(), "payload envelope:") {
			t.Errorf("%s: error %q does not say what failed", name, err)
		}
	}
}
