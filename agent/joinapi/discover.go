package joinapi

import (
	"context"
	"crypto/tls"
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

// CAPath hands out the cluster CA authenticated with the join secret, for
// nodes provisioned with a bare secret (no CA hash known in advance).
const CAPath = "/v1/ca"

// CAAnswer is the body of GET CAPath.
type CAAnswer struct {
	CACert string `json:"ca_cert"`
	// MAC is pki.CAMAC(secret, CACert): only a holder of the secret can
	// make it, so a joiner holding the secret knows the CA is genuine.
	MAC string `json:"mac"`
}

func (s *Server) serveCA(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.refuse(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(CAAnswer{CACert: string(s.CA.CertPEM), MAC: pki.CAMAC(s.Token.Secret, s.CA.CertPEM)})
}

// DiscoverCA fetches the cluster CA from the first agent that answers and
// returns its hash once its MAC proves it was made by a holder of secret.
// The TLS connection is not trusted for anything else.
func DiscoverCA(ctx context.Context, apiURLs []string, secret string) (string, error) {
	if len(apiURLs) == 0 {
		return "", errors.New("discover CA: no join URL given")
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, // the answer is authenticated by its MAC instead
		}},
		Timeout: 10 * time.Second,
	}
	defer client.CloseIdleConnections()
	var round error // the last round's errors only
	hash, err := retry.Get(ctx, retry.Policy{Initial: 500 * time.Millisecond, Max: 5 * time.Second}, func() (string, error) {
		var errs []error
		for _, base := range apiURLs {
			hash, err := discoverOnce(ctx, client, strings.TrimSuffix(base, "/")+CAPath, secret)
			if err == nil {
				return hash, nil
			}
			var pin *PinError
			if errors.As(err, &pin) {
				return "", retry.Permanent(err)
			}
			errs = append(errs, err)
		}
		round = errors.Join(errs...)
		return "", round
	})
	if err != nil && round != nil && errors.Is(err, round) {
		// Only ctx ends the retries of unanswered rounds.
		return "", fmt.Errorf("discover CA: no agent answered: %w", round)
	}
	return hash, err
}

func discoverOnce(ctx context.Context, client *http.Client, url, secret string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("discover CA %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("discover CA %s: %w", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("discover CA %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("discover CA %s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	var ans CAAnswer
	if err := json.Unmarshal(data, &ans); err != nil {
		return "", fmt.Errorf("discover CA %s: bad answer: %w", url, err)
	}
	if !pki.CAMACMatches(secret, []byte(ans.CACert), ans.MAC) {
		return "", &PinError{fmt.Sprintf("discover CA %s: the CA's MAC does not match the join secret (wrong secret or not this cluster)", url)}
	}
	ca, err := parseCertPEM([]byte(ans.CACert))
	if err != nil {
		return "", fmt.Errorf("discover CA %s: %w", url, err)
	}
	return pki.CAHash(ca), nil
}
