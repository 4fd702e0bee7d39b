package pki

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

const (
	caHashPrefix = "sha256:"
	secretBytes  = 16 // 32 hex characters
)

// Token is the join token "SECRET.sha256:HEX": the secret authorises a join,
// the CA hash lets the joining node check it reached the right cluster
// before it trusts anything the server sends.
type Token struct {
	Secret string
	CAHash string
}

// NewToken makes a token with a fresh random secret for the given CA hash.
func NewToken(caHash string) (Token, error) {
	if err := checkCAHash(caHash); err != nil {
		return Token{}, fmt.Errorf("new token: %w", err)
	}
	raw := make([]byte, secretBytes)
	if _, err := rand.Read(raw); err != nil {
		return Token{}, fmt.Errorf("new token: %w", err)
	}
	return Token{Secret: hex.EncodeToString(raw), CAHash: caHash}, nil
}

// ParseToken parses "SECRET.sha256:HEX", or a bare "SECRET" (32 hex) chosen
// before the cluster exists: a bootstrap node adopts it as the cluster's
// secret, and a joining node then authenticates the CA with it (see
// CAMAC) instead of pinning a hash it cannot know yet. Surrounding white
// space is ignored (token files usually end in a newline) and hex is
// accepted in either case.
func ParseToken(s string) (Token, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return Token{}, errors.New("parse token: token is empty")
	}
	secret, caHash, ok := strings.Cut(s, ".")
	if !ok {
		if strings.Contains(s, caHashPrefix) {
			return Token{}, errors.New(`parse token: missing "." between secret and CA hash (want SECRET.sha256:HEX)`)
		}
		if err := checkSecret(secret); err != nil {
			return Token{}, fmt.Errorf("parse token: %w (want SECRET.sha256:HEX or a bare 32-hex SECRET)", err)
		}
		return Token{Secret: secret}, nil
	}
	if err := checkSecret(secret); err != nil {
		return Token{}, fmt.Errorf("parse token: %w", err)
	}
	if err := checkCAHash(caHash); err != nil {
		return Token{}, fmt.Errorf("parse token: %w", err)
	}
	return Token{Secret: secret, CAHash: caHash}, nil
}

// String renders the token in the form ParseToken reads.
func (t Token) String() string {
	if t.CAHash == "" {
		return t.Secret
	}
	return t.Secret + "." + t.CAHash
}

// Bare reports a token without a CA hash.
func (t Token) Bare() bool { return t.CAHash == "" }

// CAMAC authenticates a CA certificate with the cluster secret: a node
// holding only the secret checks the CA a join API hands out with it.
func CAMAC(secret string, caPEM []byte) string {
	m := hmac.New(sha256.New, []byte("berth-ca-v1:"+secret))
	m.Write(caPEM)
	return hex.EncodeToString(m.Sum(nil))
}

// CAMACMatches checks mac in constant time.
func CAMACMatches(secret string, caPEM []byte, mac string) bool {
	return hmac.Equal([]byte(CAMAC(secret, caPEM)), []byte(strings.ToLower(mac)))
}

// SecretMatches compares in constant time so a remote caller cannot guess
// the secret byte by byte from response timing. An empty secret never matches.
func (t Token) SecretMatches(secret string) bool {
	if t.Secret == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(t.Secret), []byte(secret)) == 1
}

func checkSecret(secret string) error {
	if secret == "" {
		return errors.New("secret is empty")
	}
	if len(secret) != 2*secretBytes {
		return fmt.Errorf("secret has %d characters, want %d", len(secret), 2*secretBytes)
	}
	if !isLowerHex(secret) {
		return errors.New("secret is not hexadecimal")
	}
	return nil
}

func checkCAHash(caHash string) error {
	digest, ok := strings.CutPrefix(caHash, caHashPrefix)
	if !ok {
		return fmt.Errorf("CA hash %q does not start with %q", caHash, caHashPrefix)
	}
	if len(digest) != 64 {
		return fmt.Errorf("CA hash digest has %d characters, want 64", len(digest))
	}
	if !isLowerHex(digest) {
		return errors.New("CA hash digest is not lowercase hexadecimal")
	}
	return nil
}

func isLowerHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
