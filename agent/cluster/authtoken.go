package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/internal/atomicfile"
)

// Files of the node's etcd token signing key, in the pki directory.
const (
	jwtKeyFile = "etcd-jwt.key"
	jwtPubFile = "etcd-jwt.pub"
)

// jwtAuthToken is etcd's --auth-token: signed JWTs (ES256, 5 minutes)
// instead of etcd's default "simple" tokens, which are random strings not
// bound to anything and guessable by no one only as long as etcd says so.
// Berth authenticates every client by certificate and no user has a
// password, so no token should ever be issued; if one is, it is signed
// with this node's key (created once, 0600) and valid on this member only.
func jwtAuthToken(pkiDir string) (string, error) {
	priv, pub := filepath.Join(pkiDir, jwtKeyFile), filepath.Join(pkiDir, jwtPubFile)
	_, errPriv := os.Stat(priv)
	_, errPub := os.Stat(pub)
	if errors.Is(errPriv, os.ErrNotExist) || errors.Is(errPub, os.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", fmt.Errorf("etcd token key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", fmt.Errorf("etcd token key: %w", err)
		}
		pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return "", fmt.Errorf("etcd token key: %w", err)
		}
		// The public half last: its presence marks a complete pair.
		if err := atomicfile.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return "", fmt.Errorf("etcd token key: %w", err)
		}
		if err := atomicfile.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
			return "", fmt.Errorf("etcd token key: %w", err)
		}
	} else if errPriv != nil || errPub != nil {
		return "", fmt.Errorf("etcd token key: %w", errors.Join(errPriv, errPub))
	}
	return fmt.Sprintf("jwt,pub-key=%s,priv-key=%s,sign-method=ES256,ttl=5m", pub, priv), nil
}
