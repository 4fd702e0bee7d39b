package ctl

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// request tries a call again while etcd answers that it could not commit
// it now (an election), and not after any other error.
func TestRequestRetriesTransient(t *testing.T) {
	other := errors.New("etcdserver: key not found")
	for _, tc := range []struct {
		name      string
		errs      []error // the call's answers, in order; then nil
		timeout   time.Duration
		wantCalls int
		wantErr   string // "" for success
	}{
		{"success", nil, 5 * time.Second, 1, ""},
		{"timed out twice then committed", []error{rpctypes.ErrTimeout, rpctypes.ErrLeaderChanged}, 5 * time.Second, 3, ""},
		{"no leader then committed", []error{rpctypes.ErrGRPCNoLeader}, 5 * time.Second, 2, ""},
		{"other error: not retried", []error{other, other}, 5 * time.Second, 1, "key not found"},
		{"transient until the timeout", repeat(rpctypes.ErrTimeout, 100), 700 * time.Millisecond, -1,
			"etcd did not commit the request within 700ms (etcdserver: request timed out): the cluster is electing a leader or overloaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &session{opts: options{timeout: tc.timeout}}
			calls := 0
			err := s.request(context.Background(), "test", func(context.Context) error {
				calls++
				if calls <= len(tc.errs) {
					return tc.errs[calls-1]
				}
				return nil
			})
			if tc.wantCalls >= 0 && calls != tc.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("err = %v, want success", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func repeat(err error, n int) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}
