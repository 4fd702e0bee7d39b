package pki

import (
	"crypto/rand"
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

// ParseToken parses "SECRET.sha256:HEX". Surrounding white space is ignored
// (token files usually end in a newline) and hex is accepted in either case.
func ParseToken(s string) (Token, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return Token{}, errors.New("parse token: token is empty")
	}
	secret, caHash, ok := strings.Cut(s, ".")
	if !ok {
		return Token{}, errors.New(`parse token: missing "." between secret and CA hash (want SECRET.sha256:HEX)`)
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
	return t.Secret + "." + t.CAHash
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
