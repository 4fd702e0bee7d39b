// Package etcdtest starts a real single-member etcd inside a test process:
// loopback only, free ports, a throwaway CA, client-certificate auth, and
// optionally etcd auth with users named by certificate CN, as on a berth
// cluster. It is for tests and benchmarks only.
package etcdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Options choose how the member is set up.
type Options struct {
	// Auth turns etcd auth on with user "root" (role root); clients are
	// identified by their certificate CN.
	Auth bool
	// QuotaBytes is the backend quota (0: etcd's default).
	QuotaBytes int64
}

// Etcd is a running member and the files a client needs.
type Etcd struct {
	Endpoint   string // https://127.0.0.1:PORT
	Dir        string
	CAFile     string
	ClientCert string // CN "root"
	ClientKey  string
	Server     *embed.Etcd

	ca *testCA
}

// Start runs a member until the test ends.
func Start(tb testing.TB, o Options) *Etcd {
	tb.Helper()
	dir := tb.TempDir()
	ca, err := newTestCA(filepath.Join(dir, "ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	e := &Etcd{Dir: dir, CAFile: ca.file, ca: ca}
	srvCert, srvKey := e.Issue(tb, "server", true)
	e.ClientCert, e.ClientKey = e.Issue(tb, "root", false)

	clientPort, peerPort := FreePort(tb), FreePort(tb)
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.Logger = "zap"
	cfg.LogLevel = "fatal"   // Close logs expected errors; StartEtcd returns real ones
	cfg.UnsafeNoFsync = true // a test member's data dies with the test
	clientURL := mustURL(fmt.Sprintf("https://127.0.0.1:%d", clientPort))
	peerURL := mustURL(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.ListenMetricsUrls = nil
	cfg.QuotaBackendBytes = o.QuotaBytes
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.file, ClientCertAuth: true,
	}
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(srv.Close)
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		tb.Fatalf("etcd failed: %v", err)
	case <-time.After(20 * time.Second):
		tb.Fatal("etcd not ready after 20s")
	}
	e.Server = srv
	e.Endpoint = clientURL.String()
	if o.Auth {
		e.enableAuth(tb)
	}
	return e
}

// Client returns a client authenticated as the "root" certificate.
func (e *Etcd) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	return e.ClientAs(tb, e.ClientCert, e.ClientKey)
}

// ClientAs returns a client presenting the given certificate.
func (e *Etcd) ClientAs(tb testing.TB, certFile, keyFile string) *clientv3.Client {
	tb.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: e.CAFile}.ClientConfig()
	if err != nil {
		tb.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{e.Endpoint}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// Issue writes a certificate and key signed by the test CA with CN cn into
// the member's directory and returns their paths. Server certificates are
// valid for 127.0.0.1 and localhost.
func (e *Etcd) Issue(tb testing.TB, cn string, server bool) (certFile, keyFile string) {
	tb.Helper()
	certFile, keyFile, err := e.ca.issue(filepath.Dir(e.ca.file), cn, server)
	if err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

// OtherCA writes the certificate of a CA that did not sign anything of this
// member, for wrong-CA tests.
func (e *Etcd) OtherCA(tb testing.TB) string {
	tb.Helper()
	other, err := newTestCA(filepath.Join(tb.TempDir(), "other-ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	return other.file
}

func (e *Etcd) enableAuth(tb testing.TB) {
	tb.Helper()
	cli := e.Client(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
		tb.Fatalf("add root user: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		tb.Fatalf("grant root: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		tb.Fatalf("enable auth: %v", err)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err) // only called with literals built above
	}
	return *u
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(file string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("test CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "etcdtest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("test CA cert: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("test CA cert: %w", err)
	}
	if err := writePEM(file, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return &testCA{cert: cert, key: key, file: file}, nil
}

func (ca *testCA) issue(dir, cn string, server bool) (string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("key for %s: %w", cn, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return "", "", fmt.Errorf("serial for %s: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("cert for %s: %w", cn, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("key for %s: %w", cn, err)
	}
	certFile, keyFile := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	if err := writePEM(keyFile, "PRIVATE KEY", keyDER); err != nil {
		return "", "", err
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return "", "", fmt.Errorf("check pair for %s: %w", cn, err)
	}
	return certFile, keyFile, nil
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
