package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/pki"
)

// usageError marks bad arguments (exit 2) apart from failures (exit 1).
type usageError struct{ error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// issueOpsCert writes a client certificate for operators: CN "ops", which
// etcd maps to the read-only ops user.
func issueOpsCert(args []string) error {
	fs := flag.NewFlagSet("issue-ops-cert", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dataDir := fs.String("data-dir", "/var/lib/berth/agent", "agent data dir holding pki/ca.key (voters only)")
	out := fs.String("out", "", "directory to write ops.crt, ops.key and ca.crt into")
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Errorf("flags: %w", err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *out == "" {
		return usageError{errors.New("--out is required")}
	}
	ca, err := pki.LoadCA(filepath.Join(*dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("%w (only voters hold the CA key)", err)
	}
	certPEM, keyPEM, err := ca.Issue(cluster.OpsUser, pki.ClientOnly, nil, nil)
	if err != nil {
		return err
	}
	if err := pki.WritePair(*out, "ops", certPEM, keyPEM); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write ca.crt: %w", err)
	}
	fmt.Printf("wrote %s, %s and %s\n", filepath.Join(*out, "ops.crt"), filepath.Join(*out, "ops.key"), filepath.Join(*out, "ca.crt"))
	return nil
}
