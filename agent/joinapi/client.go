package joinapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/internal/retry"
)

// RefusedError is a definite "no" from a join server (wrong token, bad
// request, name conflict): retrying elsewhere will not help.
type RefusedError struct {
	URL    string
	Status int
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("join refused by %s (HTTP %d): %s", e.URL, e.Status, e.Reason)
}

// PinError means the server is not part of the token's cluster: trying
// again will not help.
type PinError struct{ Reason string }

func (e *PinError) Error() string { return e.Reason }

// PinnedTLSConfig trusts a server only if one certificate of the chain it
// sends has the pinned public-key hash and signs the server's leaf. Normal
// verification is off because the joining node has no CA file yet; the pin
// replaces it. Host names are not checked: the CA is private to the cluster.
func PinnedTLSConfig(caHash string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, caHash)
		},
	}
}

func verifyPinned(chain []*x509.Certificate, caHash string) error {
	if len(chain) == 0 {
		return errors.New("server sent no certificate")
	}
	for _, c := range chain[1:] {
		if pki.CAHash(c) != caHash {
			continue
		}
		roots := x509.NewCertPool()
		roots.AddCert(c)
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return &PinError{fmt.Sprintf("server certificate is not signed by the pinned CA: %v", err)}
		}
		return nil
	}
	return &PinError{fmt.Sprintf("server's CA does not match the token's CA hash %s (wrong cluster or wrong token)", caHash)}
}

// Join asks the agents at apiURLs, in turn, to admit the node, until one
// answers or ctx ends. A refusal ends the attempt at once.
func Join(ctx context.Context, apiURLs []string, token pki.Token, req Request) (*Response, error) {
	if len(apiURLs) == 0 {
		return nil, errors.New("join: no join URL given")
	}
	req.Secret = token.Secret
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("join: encode request: %w", err)
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: PinnedTLSConfig(token.CAHash)},
		// Longer than the server's own join timeout (waiting for a learner).
		Timeout: 90 * time.Second,
	}
	defer client.CloseIdleConnections()
	var round error // the last round's errors only
	resp, err := retry.Get(ctx, retry.Policy{Initial: 500 * time.Millisecond, Max: 5 * time.Second}, func() (*Response, error) {
		var errs []error
		for _, base := range apiURLs {
			resp, err := joinOnce(ctx, client, strings.TrimSuffix(base, "/")+Path, body, token.CAHash)
			if err == nil {
				return resp, nil
			}
			var refused *RefusedError
			var pin *PinError
			if errors.As(err, &refused) || errors.As(err, &pin) {
				return nil, retry.Permanent(err)
			}
			errs = append(errs, err)
		}
		round = errors.Join(errs...)
		return nil, round
	})
	if err != nil && round != nil && errors.Is(err, round) {
		// Only ctx ends the retries of unanswered rounds.
		return nil, fmt.Errorf("join: no agent admitted this node: %w", round)
	}
	return resp, err
}

func joinOnce(ctx context.Context, client *http.Client, url string, body []byte, caHash string) (*Response, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", url, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", url, err)
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("join %s: read answer: %w", url, err)
	}
	if hresp.StatusCode != http.StatusOK {
		var eb errorBody
		reason := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			reason = eb.Error
		}
		if hresp.StatusCode >= 400 && hresp.StatusCode < 500 {
			return nil, &RefusedError{URL: url, Status: hresp.StatusCode, Reason: reason}
		}
		return nil, fmt.Errorf("join %s: HTTP %d: %s", url, hresp.StatusCode, reason)
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("join %s: bad answer: %w", url, err)
	}
	if resp.Role != RoleLearner && resp.Role != RoleClient {
		return nil, fmt.Errorf("join %s: unknown role %q", url, resp.Role)
	}
	// The CA we will trust from now on must be the pinned one, not just
	// whatever the server put in the body.
	block := []byte(resp.CACert)
	ca, err := parseCertPEM(block)
	if err != nil {
		return nil, fmt.Errorf("join %s: CA certificate: %w", url, err)
	}
	if got := pki.CAHash(ca); got != caHash {
		return nil, fmt.Errorf("join %s: answered CA hash %s, token pins %s", url, got, caHash)
	}
	return &resp, nil
}
