package joinapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/pki"
)

// pinnedServer serves the join API certificate setup of a real agent (node
// certificate plus CA in the chain) with a handler that answers like a
// server that refuses every join.
func pinnedServer(t *testing.T, ca *pki.CA, handler http.Handler) *httptest.Server {
	t.Helper()
	ips, dns := CertAddresses("https://127.0.0.1:7480")
	certPEM, keyPEM, err := ca.Issue("node-1", pki.ServerClient, ips, dns)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ServerTLSConfig(certPEM, keyPEM, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = tlsCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func TestJoinChecksCAPin(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	token, err := pki.NewToken(pki.CAHash(ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	srv := pinnedServer(t, ca, &Server{Token: token})
	req := Request{Name: "node-2", PeerURL: "https://127.0.0.12:2380", ClientURL: "https://127.0.0.12:2379", APIURL: "https://127.0.0.12:7480"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Right pin, wrong secret: the server is trusted and refuses at once.
	start := time.Now()
	_, err = Join(ctx, []string{srv.URL}, pki.Token{Secret: strings.Repeat("a", 32), CAHash: token.CAHash}, req)
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Status != http.StatusForbidden {
		t.Fatalf("wrong secret: err %v, want a 403 refusal", err)
	}
	// Wrong pin: the client refuses the server before sending the secret.
	wrongPin := pki.Token{Secret: token.Secret, CAHash: pki.CAHash(other.Cert)}
	_, err = Join(ctx, []string{srv.URL}, wrongPin, req)
	var pin *PinError
	if !errors.As(err, &pin) {
		t.Fatalf("wrong pin: err %v, want a PinError", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("definite refusals were retried (%s)", time.Since(start))
	}
}

func TestServerRejectsBadRequests(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	token, _ := pki.NewToken(pki.CAHash(ca.Cert))
	s := &Server{Token: token, SelfName: "node-1"}
	cases := map[string]struct {
		body string
		want int
	}{
		"not json":      {`{`, http.StatusBadRequest},
		"unknown field": {`{"name":"x","bogus":1}`, http.StatusBadRequest},
		"wrong secret":  {`{"name":"node-2","secret":"` + strings.Repeat("b", 32) + `"}`, http.StatusForbidden},
		"bad name":      {`{"name":"Node_2","secret":"` + token.Secret + `","peer_url":"https://a:1","client_url":"https://a:2","api_url":"https://a:3"}`, http.StatusBadRequest},
		"http peer url": {`{"name":"node-2","secret":"` + token.Secret + `","peer_url":"http://a:1","client_url":"https://a:2","api_url":"https://a:3"}`, http.StatusBadRequest},
		"server's name": {`{"name":"node-1","secret":"` + token.Secret + `","peer_url":"https://a:1","client_url":"https://a:2","api_url":"https://a:3"}`, http.StatusConflict},
	}
	for name, tc := range cases {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, strings.NewReader(tc.body)))
		if rec.Code != tc.want {
			t.Errorf("%s: HTTP %d, want %d (%s)", name, rec.Code, tc.want, rec.Body)
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Path, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: HTTP %d", rec.Code)
	}
}

func TestCertAddressesAddsLoopbackSource(t *testing.T) {
	ips, dns := CertAddresses("https://127.0.0.12:2380", "https://127.0.0.12:2379", "https://node.example:7480")
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if strings.Join(got, ",") != "127.0.0.12,127.0.0.1" || strings.Join(dns, ",") != "node.example" {
		t.Fatalf("ips %v dns %v", got, dns)
	}
	ips, _ = CertAddresses("https://10.0.0.5:2380")
	if len(ips) != 1 || ips[0].String() != "10.0.0.5" {
		t.Fatalf("non-loopback node got %v", ips)
	}
}

// TestServerRefusesWhenNoSubnetLeft: a node that will run containers is
// refused with the Room check's reason when the range is full.
func TestServerRefusesWhenNoSubnetLeft(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	token, _ := pki.NewToken(pki.CAHash(ca.Cert))
	asked := ""
	s := &Server{Token: token, SelfName: "node-1", Room: func(_ context.Context, node string) error {
		asked = node
		return errors.New("node node-2 would get no container subnet: no free subnet: all 2 /24 subnets of 10.9.0.0/23 are leased")
	}}
	body := `{"name":"node-2","secret":"` + token.Secret + `","peer_url":"https://a:1","client_url":"https://a:2","api_url":"https://a:3","containers":true}`
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, strings.NewReader(body)))
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "10.9.0.0/23 are leased") || asked != "node-2" {
		t.Fatalf("HTTP %d %q (asked %q), want 409 with the reason", rec.Code, rec.Body, asked)
	}
}
