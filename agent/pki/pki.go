// Package pki holds the berth cluster's certificate authority, the node and
// client certificates it issues, and the join token that lets a new node
// prove it may join and check that it talks to the right cluster.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-os/berth/internal/atomicfile"
)

const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 365 * 24 * time.Hour
	// Certificates start a little in the past so a node whose clock lags
	// the issuer's by a few minutes still accepts them.
	clockSkew = 5 * time.Minute

	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
)

// CA is the cluster certificate authority: its certificate, private key and
// the certificate's PEM encoding (what nodes store as ca.crt).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// Kind selects the extended key usages of an issued certificate.
type Kind int

const (
	// ServerClient certificates serve TLS and authenticate as TLS clients
	// (etcd uses one certificate for peer server, peer client and client API).
	ServerClient Kind = iota
	// ClientOnly certificates only authenticate as TLS clients (ops users).
	ClientOnly
)

func (k Kind) extKeyUsages() ([]x509.ExtKeyUsage, error) {
	switch k {
	case ServerClient:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, nil
	case ClientOnly:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil
	default:
		return nil, fmt.Errorf("unknown certificate kind %d", int(k))
	}
}

// NewCA creates a self-signed ECDSA P-256 CA valid for 10 years.
func NewCA(cluster string) (*CA, error) {
	return newCA(cluster, time.Now(), caLifetime)
}

func newCA(cluster string, now time.Time, lifetime time.Duration) (*CA, error) {
	if strings.TrimSpace(cluster) == "" {
		return nil, errors.New("new CA: cluster name is empty")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "berth cluster CA " + cluster},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaf certificates only, never intermediate CAs.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: parse certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCertPEM(der)}, nil
}

// LoadCA reads dir/ca.crt and dir/ca.key and checks that they belong together.
func LoadCA(dir string) (*CA, error) {
	cert, certPEM, err := LoadCACert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, caKeyFile)
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key %s: %w", keyPath, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: key %s does not match certificate", keyPath)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// LoadCACert reads a PEM CA certificate (nodes without the CA key need only
// this to verify peers). It returns the parsed certificate and the PEM bytes.
func LoadCACert(path string) (*x509.Certificate, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("load CA certificate %s: no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate %s: %w", path, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("load CA certificate %s: certificate is not a CA", path)
	}
	return cert, data, nil
}

// Save writes dir/ca.key (0600) and dir/ca.crt (0644), creating dir (0700)
// if needed. Each file is replaced atomically so a crash never leaves a
// truncated key behind.
func (c *CA) Save(dir string) error {
	if c == nil || c.Key == nil || len(c.CertPEM) == 0 {
		return errors.New("save CA: CA has no key or certificate")
	}
	keyPEM, err := encodeKeyPEM(c.Key)
	if err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, caKeyFile), keyPEM, 0o600); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, caCertFile), c.CertPEM, 0o644); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	return nil
}

// Issue creates a new ECDSA P-256 key and a certificate for it signed by
// the CA, valid for one year (never past the CA's own expiry).
func (c *CA) Issue(cn string, kind Kind, ips []net.IP, dns []string) (certPEM, keyPEM []byte, err error) {
	if c == nil || c.Cert == nil || c.Key == nil {
		return nil, nil, errors.New("issue certificate: CA has no key or certificate")
	}
	if strings.TrimSpace(cn) == "" {
		return nil, nil, errors.New("issue certificate: common name is empty")
	}
	usages, err := kind.extKeyUsages()
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %q: %w", cn, err)
	}
	for i, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("issue certificate for %q: IP address %d is invalid", cn, i)
		}
	}
	for i, name := range dns {
		if strings.TrimSpace(name) == "" {
			return nil, nil, fmt.Errorf("issue certificate for %q: DNS name %d is empty", cn, i)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %q: generate key: %w", cn, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %q: %w", cn, err)
	}
	now := time.Now()
	notAfter := now.Add(leafLifetime)
	if notAfter.After(c.Cert.NotAfter) {
		// A leaf outliving its CA would fail verification anyway; be honest.
		notAfter = c.Cert.NotAfter
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
		IPAddresses:           ips,
		DNSNames:              dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %q: sign: %w", cn, err)
	}
	keyPEM, err = encodeKeyPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %q: %w", cn, err)
	}
	return encodeCertPEM(der), keyPEM, nil
}

// WritePair writes dir/name.crt (0644) and dir/name.key (0600), creating
// dir (0700) if needed.
func WritePair(dir, name string, certPEM, keyPEM []byte) error {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return fmt.Errorf("write certificate pair: invalid name %q", name)
	}
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return fmt.Errorf("write certificate pair %q: certificate or key is empty", name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write certificate pair %q: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, name+".key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("write certificate pair %q: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, name+".crt"), certPEM, 0o644); err != nil {
		return fmt.Errorf("write certificate pair %q: %w", name, err)
	}
	return nil
}

// CAHash pins a CA by its public key rather than the whole certificate, so
// a re-signed CA certificate with the same key keeps the same hash.
// It returns "" for a nil certificate.
func CAHash(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return caHashPrefix + hex.EncodeToString(sum[:])
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return serial, nil
}

func encodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}
