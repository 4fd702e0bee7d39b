package pki

import (
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	caHash := CAHash(newTestCA(t, "c").Cert)
	tok, err := NewToken(caHash)
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	if tok.CAHash != caHash {
		t.Errorf("CAHash = %q, want %q", tok.CAHash, caHash)
	}
	if err := checkSecret(tok.Secret); err != nil {
		t.Errorf("secret %q: %v", tok.Secret, err)
	}
	s := tok.String()
	if s != tok.Secret+"."+caHash {
		t.Errorf("String() = %q", s)
	}
	parsed, err := ParseToken(s)
	if err != nil {
		t.Fatalf("ParseToken(%q): %v", s, err)
	}
	if parsed != tok {
		t.Errorf("round trip: got %+v, want %+v", parsed, tok)
	}
	// Token files end with a newline; people paste tokens in upper case.
	for _, variant := range []string{s + "\n", "  " + s + "\t", strings.ToUpper(s)} {
		got, err := ParseToken(variant)
		if err != nil || got != tok {
			t.Errorf("ParseToken(%q) = %+v, %v; want %+v", variant, got, err, tok)
		}
	}

	other, err := NewToken(caHash)
	if err != nil {
		t.Fatal(err)
	}
	if other.Secret == tok.Secret {
		t.Error("two tokens share a secret")
	}
}

func TestNewTokenRejectsBadCAHash(t *testing.T) {
	for _, h := range []string{"", "sha256:", "md5:abcd", "sha256:" + strings.Repeat("g", 64), strings.Repeat("a", 64)} {
		if _, err := NewToken(h); err == nil {
			t.Errorf("NewToken(%q) succeeded", h)
		}
	}
}

func TestParseTokenErrors(t *testing.T) {
	secret := strings.Repeat("ab", 16)
	digest := strings.Repeat("0f", 32)
	cases := []struct {
		name, token, wantErr string
	}{
		{"empty", "", "token is empty"},
		{"blank", " \n", "token is empty"},
		{"no dot", secret + "sha256:" + digest, `missing "."`},
		{"empty secret", ".sha256:" + digest, "secret is empty"},
		{"short secret", "abcd.sha256:" + digest, "secret has 4 characters"},
		{"long secret", secret + "00.sha256:" + digest, "secret has 34 characters"},
		{"non-hex secret", strings.Repeat("zz", 16) + ".sha256:" + digest, "secret is not hexadecimal"},
		{"empty hash", secret + ".", "does not start with"},
		{"wrong algorithm", secret + ".sha1:" + digest, "does not start with"},
		{"missing prefix", secret + "." + digest, "does not start with"},
		{"short digest", secret + ".sha256:abcd", "digest has 4 characters"},
		{"non-hex digest", secret + ".sha256:" + strings.Repeat("xy", 32), "not lowercase hexadecimal"},
		{"extra dot", secret + ".sha256:" + digest[:63] + ".", "not lowercase hexadecimal"},
		{"trailing part", secret + ".sha256:" + digest + ".x", "digest has 66 characters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := ParseToken(c.token)
			if err == nil {
				t.Fatalf("ParseToken(%q) = %+v, want error", c.token, tok)
			}
			if !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("error %q does not mention %q", err, c.wantErr)
			}
			if tok != (Token{}) {
				t.Errorf("failed parse returned non-zero token %+v", tok)
			}
		})
	}
}

func TestSecretMatches(t *testing.T) {
	tok, err := NewToken(CAHash(newTestCA(t, "c").Cert))
	if err != nil {
		t.Fatal(err)
	}
	if !tok.SecretMatches(tok.Secret) {
		t.Error("own secret does not match")
	}
	other, err := NewToken(tok.CAHash)
	if err != nil {
		t.Fatal(err)
	}
	for _, wrong := range []string{"", other.Secret, tok.Secret[:31], tok.Secret + "0", tok.String()} {
		if tok.SecretMatches(wrong) {
			t.Errorf("secret %q matches", wrong)
		}
	}
	if (Token{}).SecretMatches("") {
		t.Error("empty token matches empty secret")
	}
}

func TestBareTokenAndCAMAC(t *testing.T) {
	secret := strings.Repeat("ab", 16)
	tok, err := ParseToken(" " + strings.ToUpper(secret) + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if !tok.Bare() || tok.Secret != secret || tok.String() != secret {
		t.Fatalf("bare token parsed as %+v (%q)", tok, tok.String())
	}
	if _, err := ParseToken("abc"); err == nil || !strings.Contains(err.Error(), "secret has 3 characters") {
		t.Fatalf("short bare token: %v", err)
	}
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	mac := CAMAC(secret, ca)
	if !CAMACMatches(secret, ca, mac) || !CAMACMatches(secret, ca, strings.ToUpper(mac)) {
		t.Fatal("MAC of the right secret and CA refused")
	}
	if CAMACMatches(strings.Repeat("cd", 16), ca, mac) {
		t.Fatal("MAC accepted with another secret")
	}
	if CAMACMatches(secret, append([]byte{}, append(ca, '\n')...), mac) {
		t.Fatal("MAC accepted for a changed CA")
	}
}
