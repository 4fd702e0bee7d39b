package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/internal/cli"
)

const dataDirHelp = "agent data dir holding pki/ca.key (voters only)"

// issueCertCmd is `issue-cert`: a client certificate for one of the
// cluster's identities: ops (read-only), admin (everything), or a tenant
// (CN tenant:NAME; its etcd role is made by berthctl tenant add).
func issueCertCmd() *cobra.Command {
	var dataDir, out, tenant string
	var ops, admin bool
	c := &cobra.Command{
		Use:   "issue-cert --admin|--ops|--tenant NAME [--data-dir DIR] --out DIR",
		Short: "Write a client certificate (NAME.crt, NAME.key, ca.crt) signed by the cluster CA",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var cn, file string
			chosen := 0
			if ops {
				cn, file, chosen = cluster.OpsUser, "ops", chosen+1
			}
			if admin {
				cn, file, chosen = cluster.AdminUser, "admin", chosen+1
			}
			if tenant != "" {
				if err := jobs.CheckTenantName(tenant); err != nil {
					return cli.Usagef("--tenant: %w", err)
				}
				cn, file, chosen = ctl.TenantUser(tenant), "tenant-"+tenant, chosen+1
			}
			if chosen != 1 {
				return cli.Usagef("give exactly one of --ops, --admin or --tenant NAME")
			}
			return issueCert(c.OutOrStdout(), dataDir, out, cn, file)
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", dataDirHelp)
	c.Flags().StringVar(&out, "out", "", "directory to write NAME.crt, NAME.key and ca.crt into")
	c.Flags().BoolVar(&ops, "ops", false, "read-only operator certificate (CN ops)")
	c.Flags().BoolVar(&admin, "admin", false, "administrator certificate (CN admin)")
	c.Flags().StringVar(&tenant, "tenant", "", "tenant certificate (CN tenant:NAME)")
	_ = c.MarkFlagRequired("out")
	return c
}

// issueOpsCertCmd is `issue-ops-cert`, short for issue-cert --ops: CN
// "ops", which etcd maps to the read-only ops user.
func issueOpsCertCmd() *cobra.Command {
	var dataDir, out string
	c := &cobra.Command{
		Use:   "issue-ops-cert [--data-dir DIR] --out DIR",
		Short: "Write a read-only operator certificate (ops.crt, ops.key, ca.crt)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return issueCert(c.OutOrStdout(), dataDir, out, cluster.OpsUser, "ops")
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", dataDirHelp)
	c.Flags().StringVar(&out, "out", "", "directory to write ops.crt, ops.key and ca.crt into")
	_ = c.MarkFlagRequired("out")
	return c
}

// issueCert writes FILE.crt, FILE.key (CN cn) and ca.crt into out.
func issueCert(stdout io.Writer, dataDir, out, cn, file string) error {
	ca, err := pki.LoadCA(filepath.Join(dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("%w (only voters hold the CA key)", err)
	}
	certPEM, keyPEM, err := ca.Issue(cn, pki.ClientOnly, nil, nil)
	if err != nil {
		return err
	}
	if err := pki.WritePair(out, file, certPEM, keyPEM); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write ca.crt: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s (CN %s)\n", filepath.Join(out, file+".crt"), filepath.Join(out, file+".key"), filepath.Join(out, "ca.crt"), cn)
	return nil
}
