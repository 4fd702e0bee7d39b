package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/jobs"
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
	return issueCert(append([]string{"--ops"}, args...), "issue-ops-cert")
}

// issueCert writes a client certificate for one of the cluster's
// identities: ops (read-only), admin (everything), or a tenant (CN
// tenant:NAME; its etcd role is made by berthctl tenant add).
func issueCert(args []string, command string) error {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dataDir := fs.String("data-dir", "/var/lib/berth/agent", "agent data dir holding pki/ca.key (voters only)")
	out := fs.String("out", "", "directory to write NAME.crt, NAME.key and ca.crt into")
	ops := fs.Bool("ops", false, "read-only operator certificate (CN ops)")
	admin := fs.Bool("admin", false, "administrator certificate (CN admin)")
	tenant := fs.String("tenant", "", "tenant certificate (CN tenant:NAME)")
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Errorf("flags: %w", err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *out == "" {
		return usageError{errors.New("--out is required")}
	}
	var cn, file string
	chosen := 0
	if *ops {
		cn, file, chosen = cluster.OpsUser, "ops", chosen+1
	}
	if *admin {
		cn, file, chosen = cluster.AdminUser, "admin", chosen+1
	}
	if *tenant != "" {
		if err := jobs.CheckTenantName(*tenant); err != nil {
			return usageError{fmt.Errorf("--tenant: %w", err)}
		}
		cn, file, chosen = ctl.TenantUser(*tenant), "tenant-"+*tenant, chosen+1
	}
	if chosen != 1 {
		return usageError{errors.New("give exactly one of --ops, --admin or --tenant NAME")}
	}
	ca, err := pki.LoadCA(filepath.Join(*dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("%w (only voters hold the CA key)", err)
	}
	certPEM, keyPEM, err := ca.Issue(cn, pki.ClientOnly, nil, nil)
	if err != nil {
		return err
	}
	if err := pki.WritePair(*out, file, certPEM, keyPEM); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write ca.crt: %w", err)
	}
	fmt.Printf("wrote %s, %s and %s (CN %s)\n", filepath.Join(*out, file+".crt"), filepath.Join(*out, file+".key"), filepath.Join(*out, "ca.crt"), cn)
	return nil
}
