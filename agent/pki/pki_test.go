package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newTestCA(t *testing.T, cluster string) *CA {
	t.Helper()
	ca, err := NewCA(cluster)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func parseCertPEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", data)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("unexpected data after certificate: %q", rest)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return cert
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode().Perm()
}

func assertLifetime(t *testing.T, cert *x509.Certificate, want time.Duration) {
	t.Helper()
	now := time.Now()
	if cert.NotBefore.After(now) {
		t.Errorf("NotBefore %v is in the future", cert.NotBefore)
	}
	if now.Sub(cert.NotBefore) > time.Hour {
		t.Errorf("NotBefore %v is too far in the past", cert.NotBefore)
	}
	if got := cert.NotAfter.Sub(now); got < want-time.Minute || got > want+time.Minute {
		t.Errorf("certificate lives %v from now, want about %v", got, want)
	}
}

func TestNewCA(t *testing.T) {
	ca := newTestCA(t, "prod")
	if got, want := ca.Cert.Subject.CommonName, "berth cluster CA prod"; got != want {
		t.Errorf("CN = %q, want %q", got, want)
	}
	if !ca.Cert.IsCA || !ca.Cert.BasicConstraintsValid {
		t.Error("certificate is not marked as a CA")
	}
	if ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("CA certificate lacks KeyUsageCertSign")
	}
	pub, ok := ca.Cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key is %T, want ECDSA P-256", ca.Cert.PublicKey)
	}
	assertLifetime(t, ca.Cert, 10*365*24*time.Hour)
	if !bytes.Equal(parseCertPEM(t, ca.CertPEM).Raw, ca.Cert.Raw) {
		t.Error("CertPEM does not encode Cert")
	}
	// Self-signed: verifies against a pool containing only itself.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("CA does not verify against itself: %v", err)
	}
}

func TestNewCARejectsEmptyCluster(t *testing.T) {
	for _, name := range []string{"", "  "} {
		if _, err := NewCA(name); err == nil {
			t.Errorf("NewCA(%q) succeeded, want error", name)
		}
	}
}

func TestCASaveLoadRoundTrip(t *testing.T) {
	ca := newTestCA(t, "c1")
	dir := filepath.Join(t.TempDir(), "data", "pki") // does not exist yet
	if err := ca.Save(dir); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if got := fileMode(t, filepath.Join(dir, "ca.key")); got != 0o600 {
		t.Errorf("ca.key mode = %o, want 600", got)
	}
	if got := fileMode(t, filepath.Join(dir, "ca.crt")); got != 0o644 {
		t.Errorf("ca.crt mode = %o, want 644", got)
	}
	if got := fileMode(t, dir); got != 0o700 {
		t.Errorf("created directory mode = %o, want 700", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want ca.crt and ca.key only: %v", len(entries), entries)
	}

	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !bytes.Equal(loaded.Cert.Raw, ca.Cert.Raw) || !bytes.Equal(loaded.CertPEM, ca.CertPEM) {
		t.Error("loaded certificate differs from saved one")
	}
	// The loaded key must be the same key: a cert it issues verifies under the original CA.
	certPEM, _, err := loaded.Issue("n1", ServerClient, nil, nil)
	if err != nil {
		t.Fatalf("Issue with loaded CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	leaf := parseCertPEM(t, certPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("certificate from loaded CA does not verify: %v", err)
	}
}

func TestSaveTightensExistingKeyMode(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(keyPath, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := newTestCA(t, "c").Save(dir); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if got := fileMode(t, keyPath); got != 0o600 {
		t.Errorf("ca.key mode after overwrite = %o, want 600", got)
	}
	if _, err := LoadCA(dir); err != nil {
		t.Errorf("LoadCA after overwrite: %v", err)
	}
}

func TestSaveRejectsIncompleteCA(t *testing.T) {
	ca := newTestCA(t, "c")
	ca.Key = nil
	if err := ca.Save(t.TempDir()); err == nil {
		t.Error("Save without key succeeded")
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca := newTestCA(t, "a")
	other := newTestCA(t, "b")

	t.Run("missing directory", func(t *testing.T) {
		if _, err := LoadCA(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Error("want error")
		}
	})
	t.Run("missing key", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.Save(dir); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(dir, "ca.key"))
		if _, err := LoadCA(dir); err == nil {
			t.Error("want error")
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.Save(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ca.crt"), other.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadCA(dir)
		if err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Errorf("err = %v, want key mismatch", err)
		}
	})
	t.Run("garbage key", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.Save(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("not a key"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCA(dir); err == nil {
			t.Error("want error")
		}
	})
}

func TestLoadCACert(t *testing.T) {
	ca := newTestCA(t, "c")
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(path, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cert, data, err := LoadCACert(path)
	if err != nil {
		t.Fatalf("LoadCACert: %v", err)
	}
	if !bytes.Equal(cert.Raw, ca.Cert.Raw) || !bytes.Equal(data, ca.CertPEM) {
		t.Error("LoadCACert returned different certificate or bytes")
	}

	leafPEM, keyPEM, err := ca.Issue("n", ServerClient, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"not PEM":   []byte("hello"),
		"key PEM":   keyPEM,
		"leaf cert": leafPEM,
		"bad DER":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}),
	}
	for name, content := range bad {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.crt")
			if err := os.WriteFile(p, content, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, _, err := LoadCACert(p); err == nil {
				t.Error("want error")
			}
		})
	}
	if _, _, err := LoadCACert(filepath.Join(dir, "missing.crt")); err == nil {
		t.Error("missing file: want error")
	}
}

func verifyLeaf(cert *x509.Certificate, ca *CA, usage x509.ExtKeyUsage) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestIssueServerClient(t *testing.T) {
	ca := newTestCA(t, "c")
	ips := []net.IP{net.ParseIP("127.0.0.11"), net.ParseIP("::1")}
	dns := []string{"node-1", "node-1.example"}
	certPEM, keyPEM, err := ca.Issue("node-1", ServerClient, ips, dns)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("certificate and key do not form a pair: %v", err)
	}
	cert := parseCertPEM(t, certPEM)
	if cert.Subject.CommonName != "node-1" {
		t.Errorf("CN = %q, want node-1", cert.Subject.CommonName)
	}
	if cert.IsCA {
		t.Error("leaf certificate is marked as CA")
	}
	assertLifetime(t, cert, 365*24*time.Hour)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verifyLeaf(cert, ca, usage); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
	}
	if len(cert.IPAddresses) != len(ips) {
		t.Fatalf("IP SANs = %v, want %v", cert.IPAddresses, ips)
	}
	for i := range ips {
		if !cert.IPAddresses[i].Equal(ips[i]) {
			t.Errorf("IP SAN %d = %v, want %v", i, cert.IPAddresses[i], ips[i])
		}
	}
	for _, host := range []string{"127.0.0.11", "::1", "node-1", "node-1.example"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := cert.VerifyHostname("127.0.0.12"); err == nil {
		t.Error("certificate claims an address it was not issued for")
	}
	if err := verifyLeaf(cert, newTestCA(t, "other"), x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("certificate verifies under an unrelated CA")
	}
}

func TestIssueClientOnly(t *testing.T) {
	ca := newTestCA(t, "c")
	certPEM, keyPEM, err := ca.Issue("ops", ClientOnly, nil, nil)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("certificate and key do not form a pair: %v", err)
	}
	cert := parseCertPEM(t, certPEM)
	if cert.Subject.CommonName != "ops" {
		t.Errorf("CN = %q, want ops", cert.Subject.CommonName)
	}
	if err := verifyLeaf(cert, ca, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("verify as client: %v", err)
	}
	if err := verifyLeaf(cert, ca, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("client-only certificate verifies as a server certificate")
	}
	if len(cert.IPAddresses) != 0 || len(cert.DNSNames) != 0 {
		t.Errorf("unexpected SANs: %v %v", cert.IPAddresses, cert.DNSNames)
	}
}

func TestIssueNeverOutlivesCA(t *testing.T) {
	ca, err := newCA("short", time.Now(), 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue("n", ServerClient, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cert := parseCertPEM(t, certPEM); cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("leaf expires %v, after its CA %v", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestIssueRejectsBadInput(t *testing.T) {
	ca := newTestCA(t, "c")
	cases := map[string]func() error{
		"empty CN": func() error { _, _, err := ca.Issue("", ServerClient, nil, nil); return err },
		"unknown kind": func() error {
			_, _, err := ca.Issue("n", Kind(7), nil, nil)
			return err
		},
		"invalid IP": func() error {
			_, _, err := ca.Issue("n", ServerClient, []net.IP{net.ParseIP("not-an-ip")}, nil)
			return err
		},
		"empty DNS name": func() error { _, _, err := ca.Issue("n", ServerClient, nil, []string{""}); return err },
		"CA without key": func() error {
			_, _, err := (&CA{Cert: ca.Cert}).Issue("n", ServerClient, nil, nil)
			return err
		},
	}
	for name, issue := range cases {
		if err := issue(); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}

func TestWritePair(t *testing.T) {
	ca := newTestCA(t, "c")
	certPEM, keyPEM, err := ca.Issue("node-1", ServerClient, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := WritePair(dir, "node", certPEM, keyPEM); err != nil {
		t.Fatalf("WritePair: %v", err)
	}
	if got := fileMode(t, filepath.Join(dir, "node.key")); got != 0o600 {
		t.Errorf("node.key mode = %o, want 600", got)
	}
	if got := fileMode(t, filepath.Join(dir, "node.crt")); got != 0o644 {
		t.Errorf("node.crt mode = %o, want 644", got)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")); err != nil {
		t.Errorf("written pair does not load: %v", err)
	}
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if err := WritePair(dir, name, certPEM, keyPEM); err == nil {
			t.Errorf("WritePair name %q: want error", name)
		}
	}
	if err := WritePair(dir, "empty", nil, keyPEM); err == nil {
		t.Error("WritePair with empty certificate: want error")
	}
}

// TestTLSHandshake checks the issued certificates work for real mutual TLS
// on loopback, as etcd and the join API use them.
func TestTLSHandshake(t *testing.T) {
	ca := newTestCA(t, "c")
	serverCertPEM, serverKeyPEM, err := ca.Issue("node-1", ServerClient, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(serverCertPEM, serverKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// The server answers each connection with the client's CN (etcd's
	// username source) or records the handshake error.
	serverErrs := make(chan error, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tlsConn := conn.(*tls.Conn)
			tlsConn.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tlsConn.Handshake(); err != nil {
				serverErrs <- err
				conn.Close()
				continue
			}
			serverErrs <- nil
			io.WriteString(tlsConn, tlsConn.ConnectionState().PeerCertificates[0].Subject.CommonName)
			conn.Close()
		}
	}()

	dial := func(clientCA *CA, cn string) (string, error) {
		certPEM, keyPEM, err := clientCA.Issue(cn, ClientOnly, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		clientCert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			// Always present the certificate: by default Go withholds one
			// whose issuer the server did not list, and an attacker would not.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &clientCert, nil
			},
			RootCAs: pool,
		})
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		// With TLS 1.3 the server may reject the client certificate after
		// the client's handshake completed, so the failure shows on read.
		data, err := io.ReadAll(conn)
		return string(data), err
	}

	got, err := dial(ca, "ops")
	if err != nil {
		t.Fatalf("handshake with a valid client certificate: %v", err)
	}
	if got != "ops" {
		t.Errorf("server saw client CN %q, want ops", got)
	}
	if err := <-serverErrs; err != nil {
		t.Fatalf("server handshake: %v", err)
	}

	if got, err := dial(newTestCA(t, "intruder"), "ops"); err == nil {
		t.Errorf("client certificate from another CA accepted (server answered %q)", got)
	}
	serverErr := <-serverErrs
	var verifyErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	if !errors.As(serverErr, &verifyErr) || !errors.As(serverErr, &unknownAuthority) {
		t.Errorf("server error = %v, want unknown-authority certificate verification error", serverErr)
	}
}

func TestCAHash(t *testing.T) {
	ca := newTestCA(t, "a")
	hash := CAHash(ca.Cert)
	if err := checkCAHash(hash); err != nil {
		t.Fatalf("CAHash %q is malformed: %v", hash, err)
	}
	if again := CAHash(ca.Cert); again != hash {
		t.Errorf("CAHash not stable: %q then %q", hash, again)
	}
	// The contract: anyone can recompute it from ca.crt (e.g. with openssl).
	sum := sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo)
	if want := "sha256:" + hex.EncodeToString(sum[:]); hash != want {
		t.Errorf("CAHash = %q, want %q", hash, want)
	}

	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	loaded, _, err := LoadCACert(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if got := CAHash(loaded); got != hash {
		t.Errorf("CAHash after save/load = %q, want %q", got, hash)
	}
	if other := CAHash(newTestCA(t, "b").Cert); other == hash {
		t.Error("two CAs have the same hash")
	}
	if CAHash(nil) != "" {
		t.Error("CAHash(nil) is not empty")
	}
}

// The hash pins the CA key, not the certificate bytes: a CA certificate
// re-signed with the same key keeps its hash.
func TestCAHashFollowsKeyNotCertificate(t *testing.T) {
	ca := newTestCA(t, "a")
	template := *ca.Cert
	template.SerialNumber = template.SerialNumber.Add(template.SerialNumber, template.SerialNumber)
	template.NotAfter = template.NotAfter.Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, ca.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	resigned, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(resigned.Raw, ca.Cert.Raw) {
		t.Fatal("re-signed certificate is identical; test proves nothing")
	}
	if CAHash(resigned) != CAHash(ca.Cert) {
		t.Error("re-signed CA certificate with the same key changed hash")
	}
}
