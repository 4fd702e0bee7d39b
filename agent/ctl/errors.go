package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-os/berth/agent/nodedoc"
)

// clientTLS loads the CA and client pair with errors that name the flag.
func clientTLS(info transport.TLSInfo) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if info.TrustedCAFile != "" {
		pemData, err := os.ReadFile(info.TrustedCAFile)
		if err != nil {
			return nil, fail(ExitUsage, "--cacert: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fail(ExitUsage, "--cacert %s: no PEM certificate in the file", info.TrustedCAFile)
		}
		tc.RootCAs = pool
	}
	if info.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(info.CertFile, info.KeyFile)
		if err != nil {
			return nil, fail(ExitUsage, "--cert %s / --key %s: %v", info.CertFile, info.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// explain turns an etcd client error into a berthctl error. gRPC reports a
// failed TLS handshake and a refused connection alike (the call just times
// out), so on a timeout berthctl probes the endpoints itself to say which.
func explain(what string, err error, cfg Config, timeout time.Duration) error {
	switch {
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrGRPCPermissionDenied):
		return fail(ExitError, "%s: etcd denied access: the client certificate's user (its CN) lacks permission on /berth/v1/", what)
	case nodedoc.IsNoSpace(err):
		return fail(ExitError, "%s: %s", what, nodedoc.NoSpaceHint)
	case errors.Is(err, rpctypes.ErrUserEmpty), errors.Is(err, rpctypes.ErrGRPCUserEmpty),
		errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken):
		return fail(ExitError, "%s: etcd requires authentication: pass a client certificate (--cert, --key) issued by the cluster CA", what)
	}
	if transient(err) {
		return fail(ExitUnreachable, "%s: etcd did not commit the request within %v (%v): the cluster is electing a leader or overloaded; check `berthctl nodes` and try again", what, timeout, lastTransient(err))
	}
	code := status.Code(err)
	if !errors.Is(err, context.DeadlineExceeded) && code != codes.DeadlineExceeded && code != codes.Unavailable {
		return fail(ExitError, "%s: %v", what, err)
	}
	if tlsErr := probeTLS(cfg); tlsErr != nil {
		return tlsErr
	}
	return fail(ExitUnreachable, "cannot reach the cluster at %s within %v: %s",
		strings.Join(cfg.Endpoints, ","), timeout, dialCause(cfg.Endpoints, err))
}

// probeTLS handshakes with each endpoint and returns an error naming a
// certificate problem, or nil when none was seen.
func probeTLS(cfg Config) error {
	tc, err := clientTLS(transport.TLSInfo{CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert})
	if err != nil {
		return err
	}
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		c := tc.Clone()
		c.ServerName = u.Hostname()
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: c}
		conn, err := d.Dial("tcp", u.Host)
		if err != nil {
			if msg := certProblem(err, ep); msg != "" {
				return fail(ExitError, "%s", msg)
			}
			continue
		}
		// With TLS 1.3 the server checks the client certificate after the
		// client finished: its verdict arrives as an alert on first read.
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if msg := certProblem(err, ep); msg != "" {
			return fail(ExitError, "%s", msg)
		}
	}
	return nil
}

func certProblem(err error, ep string) string {
	if err == nil {
		return ""
	}
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verifyErr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownAuth):
		return fmt.Sprintf("TLS with %s failed: its certificate is not signed by the --cacert CA (is it the cluster's ca.crt?)", ep)
	case errors.As(err, &hostErr):
		return fmt.Sprintf("TLS with %s failed: %v (use the address the node's certificate names)", ep, hostErr)
	case errors.As(err, &invalid):
		return fmt.Sprintf("TLS with %s failed: %v", ep, invalid)
	case errors.As(err, &verifyErr):
		return fmt.Sprintf("TLS with %s failed: %v", ep, verifyErr.Err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "certificate required"):
		return fmt.Sprintf("%s requires a client certificate: pass --cert and --key (issued by the cluster CA)", ep)
	case strings.Contains(msg, "bad certificate"), strings.Contains(msg, "unknown certificate authority"),
		strings.Contains(msg, "certificate expired"), strings.Contains(msg, "certificate revoked"):
		return fmt.Sprintf("%s rejected the client certificate (%s): use a --cert issued by the cluster CA", ep, strings.TrimPrefix(msg, "remote error: "))
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Sprintf("%s does not speak TLS: use http:// for it", ep)
	}
	return ""
}

// dialCause names why the endpoints did not answer, as seen by a plain TCP
// connect, falling back to the client's error.
func dialCause(endpoints []string, clientErr error) string {
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			continue
		}
		conn, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err != nil {
			return err.Error()
		}
		conn.Close()
	}
	return "no answer (" + oneLine(clientErr.Error()) + ")"
}

// transientErrors are etcd's answers to a request it could not commit
// now but may commit a moment later (an election, a member catching up).
var transientErrors = []error{
	rpctypes.ErrTimeout, rpctypes.ErrGRPCTimeout,
	rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrGRPCTimeoutDueToLeaderFail,
	rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrGRPCTimeoutDueToConnectionLost,
	rpctypes.ErrNoLeader, rpctypes.ErrGRPCNoLeader,
	rpctypes.ErrLeaderChanged, rpctypes.ErrGRPCLeaderChanged,
	rpctypes.ErrTooManyRequests, rpctypes.ErrGRPCRequestTooManyRequests,
}

// transient reports whether err (or the last error it wraps) is one of
// transientErrors: worth trying again.
func transient(err error) bool { return lastTransient(err) != nil }

// lastTransient returns the transient etcd error in err, or nil.
func lastTransient(err error) error {
	for _, t := range transientErrors {
		if errors.Is(err, t) {
			return t
		}
	}
	return nil
}
