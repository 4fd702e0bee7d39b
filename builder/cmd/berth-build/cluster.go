package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berth-os/berth/builder/qemu"
)

const clusterUsage = `Usage: berth-build cluster up|down|status|ctl [flags]

A cluster of berth VMs under qemu on a private network (namespace
berth-cl-NAME, bridge 10.240.0.1/24 and fd00:240::1/64, node N at
10.240.0.1N); the VMs keep running after "up" returns. Needs root.

  up      create and boot N nodes from IMAGE; node-1 bootstraps the cluster
          with a generated secret, the others join it. Waits until
          berthctl lists N Ready nodes and prints them.
  down    kill the VMs, remove the namespace and the cluster's directory.
  status  the nodes' qemu processes and, once up, berthctl nodes.
  ctl     run berthctl in the namespace with the admin certificate:
          berth-build cluster ctl [--name NAME] -- nodes

Flags (all commands): --name NAME (default dev), --dir DIR (default
` + qemu.DefaultClusterRoot + `/NAME), --berthctl PATH (default: beside berth-build)
Flags of up: --image IMAGE (required), -n N (default 3), -m MiB (768),
--timeout DURATION (20m), --accel kvm|tcg|auto (default auto, or
$BERTH_ACCEL: KVM when a guest really runs under it, else software
emulation; the choice is kept for every later boot of the cluster)
`

func cmdCluster(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, clusterUsage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, clusterUsage)
		return 0
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("cluster "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, clusterUsage) }
	name := fs.String("name", "dev", "cluster `name`")
	dir := fs.String("dir", "", "cluster `directory`")
	berthctl := fs.String("berthctl", filepath.Join(filepath.Dir(defaultInit()), "berthctl"), "berthctl `binary`")
	image := fs.String("image", "", "the built `image` (.raw or .qcow2)")
	nodes := fs.Int("n", 3, "number of `nodes` (1-9)")
	mem := fs.Int("m", 768, "memory per VM in `MiB`")
	timeout := fs.Duration("timeout", 20*time.Minute, "how long up waits for the cluster")
	accelFlag := fs.String("accel", "", "qemu `accelerator`: kvm, tcg or auto (default auto or $"+qemu.AccelEnv+")")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *dir == "" {
		*dir = filepath.Join(qemu.DefaultClusterRoot, *name)
	}
	switch sub {
	case "up":
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "berth-build cluster up: unexpected argument %q\n", fs.Arg(0))
			return 2
		}
		if *image == "" {
			fmt.Fprintln(stderr, "berth-build cluster up: --image is required (make image builds one in out/)")
			return 2
		}
		accel, err := qemu.ParseAccel(*accelFlag)
		if err != nil {
			fmt.Fprintf(stderr, "berth-build cluster up: --accel: %v\n", err)
			return 2
		}
		return clusterUp(qemu.ClusterConfig{Name: *name, Image: *image, Nodes: *nodes, Dir: *dir, MemoryMiB: *mem, Accel: accel}, *berthctl, *timeout, stdout, stderr)
	case "down":
		if err := qemu.DestroyCluster(*name, *dir); err != nil {
			fmt.Fprintf(stderr, "berth-build cluster down: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "cluster %s is down (namespace berth-cl-%s and %s removed)\n", *name, *name, *dir)
		return 0
	case "status":
		return clusterStatus(*dir, *berthctl, stdout, stderr)
	case "ctl":
		c, err := qemu.OpenCluster(*dir)
		if err != nil {
			fmt.Fprintf(stderr, "berth-build cluster ctl: %v (is cluster %s up?)\n", err, *name)
			return 1
		}
		cmd := c.BerthctlCommand(context.Background(), *berthctl, fs.Args()...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
		if err := cmd.Run(); err != nil {
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exit.ExitCode()
			}
			fmt.Fprintf(stderr, "berth-build cluster ctl: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "berth-build cluster: unknown command %q (up, down, status, ctl)\n", sub)
	return 2
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
