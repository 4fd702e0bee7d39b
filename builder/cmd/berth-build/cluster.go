package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/builder/qemu"
	"github.com/berth-os/berth/internal/cli"
)

func clusterCmd() *cobra.Command {
	var name, dir, berthctl string
	cluster := group(&cobra.Command{
		Use:   "cluster",
		Short: "Boot N nodes of an image as a cluster on a private network (make cluster)",
		Long: `A cluster of berth VMs under qemu on a private network (namespace
berth-cl-NAME, bridge 10.240.0.1/24 and fd00:240::1/64, node N at
10.240.0.1N); the VMs keep running after "up" returns. Needs root.`,
	})
	pf := cluster.PersistentFlags()
	pf.StringVar(&name, "name", "dev", "cluster `name`")
	pf.StringVar(&dir, "dir", "", "cluster `directory` (default "+qemu.DefaultClusterRoot+"/NAME)")
	pf.StringVar(&berthctl, "berthctl", filepath.Join(filepath.Dir(defaultInit()), "berthctl"), "berthctl `binary`")
	clusterDir := func() string {
		if dir == "" {
			return filepath.Join(qemu.DefaultClusterRoot, name)
		}
		return dir
	}

	var (
		image, accelFlag string
		nodes, mem       int
		timeout          time.Duration
	)
	up := &cobra.Command{
		Use:   "up --image IMAGE",
		Short: "Create and boot N nodes from IMAGE and wait until they are Ready",
		Long: `Create and boot N nodes from IMAGE; node-1 bootstraps the cluster with a
generated secret, the others join it. Waits until berthctl lists N Ready
nodes and prints them. The accelerator chosen (--accel, default auto or
$` + qemu.AccelEnv + `: KVM when a guest really runs under it, else software
emulation) is kept for every later boot of the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if image == "" {
				return cli.Usagef("cluster up: --image is required (make image builds one in out/)")
			}
			accel, err := qemu.ParseAccel(accelFlag)
			if err != nil {
				return cli.Usagef("cluster up: --accel: %v", err)
			}
			return exit(clusterUp(qemu.ClusterConfig{Name: name, Image: image, Nodes: nodes, Dir: clusterDir(), MemoryMiB: mem, Accel: accel},
				berthctl, timeout, c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
	f := up.Flags()
	f.StringVar(&image, "image", "", "the built `image` (.raw or .qcow2) (required)")
	f.IntVarP(&nodes, "nodes", "n", 3, "number of `nodes` (1-9)")
	f.IntVarP(&mem, "memory", "m", 768, "memory per VM in `MiB`")
	f.DurationVar(&timeout, "timeout", 20*time.Minute, "how long up waits for the cluster")
	f.StringVar(&accelFlag, "accel", "", "qemu `accelerator`: kvm, tcg or auto (default auto or $"+qemu.AccelEnv+")")

	down := &cobra.Command{
		Use:   "down",
		Short: "Kill the VMs, remove the namespace and the cluster's directory",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := qemu.DestroyCluster(name, clusterDir()); err != nil {
				return fmt.Errorf("cluster down: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "cluster %s is down (namespace berth-cl-%s and %s removed)\n", name, name, clusterDir())
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the nodes' qemu processes and, once up, berthctl nodes",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return exit(clusterStatus(clusterDir(), berthctl, c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
	ctl := &cobra.Command{
		Use:   "ctl [--name NAME] -- BERTHCTL-ARGS...",
		Short: "Run berthctl in the cluster's namespace with the admin certificate",
		Long: `Runs berthctl in the cluster's network namespace with the admin
certificate, e.g. berth-build cluster ctl --name dev -- nodes. Everything
from the first argument on (or after --) goes to berthctl; its exit status
is ctl's.`,
		Example: "  berth-build cluster ctl -- nodes",
		Args:    cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := qemu.OpenCluster(clusterDir())
			if err != nil {
				return fmt.Errorf("cluster ctl: %w (is cluster %s up?)", err, name)
			}
			cmd := cl.BerthctlCommand(context.Background(), berthctl, args...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.OutOrStdout(), c.ErrOrStderr()
			if err := cmd.Run(); err != nil {
				var exit *exec.ExitError
				if errors.As(err, &exit) {
					return &cli.ExitError{Code: exit.ExitCode()}
				}
				return fmt.Errorf("cluster ctl: %w", err)
			}
			return nil
		},
	}
	// berthctl's own flags are berthctl's: options end at the first argument.
	ctl.Flags().SetInterspersed(false)
	cluster.AddCommand(up, down, status, ctl)
	return cluster
}

func clusterUp(cfg qemu.ClusterConfig, berthctl string, timeout time.Duration, stdout, stderr io.Writer) int {
	if _, err := os.Stat(berthctl); err != nil {
		fmt.Fprintf(stderr, "berth-build cluster up: berthctl: %v (make build puts it in bin/)\n", err)
		return 2
	}
	start := time.Now()
	c, err := qemu.CreateCluster(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build cluster up: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "cluster %s: %d nodes in namespace %s, state in %s, accelerator %s\n", c.Name, len(c.Nodes), c.Netns, c.Dir, c.Accel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "berth-build cluster up: %v\n", err)
		for i, n := range c.Nodes {
			fmt.Fprintf(stderr, "--- %s console (last lines; all in %s)\n%s\n", n.Name, n.SerialLog(), c.Tail(i+1, 15))
		}
		fmt.Fprintf(stderr, "the cluster is left as it is for a look; remove it with: %s\n", removeCommand(c))
		return 1
	}
	if err := c.StartAll(); err != nil {
		return fail(err)
	}
	if err := c.FetchAdminCert(ctx); err != nil {
		return fail(err)
	}
	nodes, err := c.WaitNodes(ctx, berthctl, c.AllReady)
	if err != nil {
		return fail(fmt.Errorf("waiting for %d Ready nodes: %w", len(c.Nodes), err))
	}
	fmt.Fprintf(stdout, "%d nodes Ready %.1f s after start\n", len(nodes), time.Since(start).Seconds())
	for i, n := range c.Nodes {
		if d, err := c.AgentReadyAfter(ctx, i+1); err == nil {
			fmt.Fprintf(stdout, "  %s: agent ready %.1f s after its qemu started (kernel after %.1f s)\n", n.Name, d.Seconds(), n.KernelAt().Sub(n.Started()).Seconds())
		} else {
			fmt.Fprintf(stdout, "  %s: %v\n", n.Name, err)
		}
	}
	fmt.Fprintln(stdout)
	if table, err := c.Berthctl(ctx, berthctl, "nodes"); err == nil {
		fmt.Fprintf(stdout, "%s\n", table)
	}
	clusterHowTo(stdout, c, berthctl)
	return 0
}

func clusterHowTo(w io.Writer, c *qemu.Cluster, berthctl string) {
	n := c.Nodes[0]
	fmt.Fprintf(w, `berthctl:  berth-build cluster ctl --name %[1]s -- nodes
           (or: ip netns exec %[2]s %[3]s --config %[4]s nodes)
ssh:       ip netns exec %[2]s ssh -i %[5]s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@%[6]s
console:   tail -f %[7]s
           socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:%[8]s   (Ctrl-] leaves)
remove:    %[9]s
`, c.Name, c.Netns, berthctl, c.BerthctlConfig(), c.SSHKey(), n.IPv4, n.SerialLog(), n.ConsoleSocket(), removeCommand(c))
}

// removeCommand is the command line that removes this cluster: the
// Makefile's variable is CLUSTER, and a cluster outside the default root
// needs its directory too.
func removeCommand(c *qemu.Cluster) string {
	if c.Dir == filepath.Join(qemu.DefaultClusterRoot, c.Name) {
		return fmt.Sprintf("make cluster-down CLUSTER=%s (or: berth-build cluster down --name %s)", c.Name, c.Name)
	}
	return fmt.Sprintf("berth-build cluster down --name %s --dir %s", c.Name, c.Dir)
}

func clusterStatus(dir, berthctl string, stdout, stderr io.Writer) int {
	c, err := qemu.OpenCluster(dir)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build cluster status: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "cluster %s (namespace %s, %s)\n", c.Name, c.Netns, c.Dir)
	for i, n := range c.Nodes {
		state := "stopped"
		if pid := c.Running(i + 1); pid != 0 {
			state = fmt.Sprintf("running (qemu pid %d)", pid)
		}
		fmt.Fprintf(stdout, "  %-7s %-12s %s, console %s\n", n.Name, n.IPv4, state, n.SerialLog())
	}
	if _, err := os.Stat(c.BerthctlConfig()); err != nil {
		fmt.Fprintln(stdout, "no admin certificate yet (up fetches it from node-1)")
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	table, err := c.Berthctl(ctx, berthctl, "nodes")
	if err != nil {
		fmt.Fprintf(stderr, "berth-build cluster status: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\n%s", table)
	return 0
}
