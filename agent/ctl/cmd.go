package ctl

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/updater/slot"
)

const rootLong = `berthctl reads and changes what berth agents keep in etcd: nodes and
members, tenants' jobs, outside-registry credentials and cluster-wide OS
rollouts (os push PAYLOAD, os rollout VERSION, os status, os pause,
os resume, os abort: see berthctl os --help).

Connection flags come from, in increasing precedence, the config file
(--config, env BERTHCTL_CONFIG, default ~/.config/berthctl.yaml; YAML keys
endpoints (list), cacert, cert, key), the environment (BERTHCTL_ENDPOINTS,
BERTHCTL_CACERT, BERTHCTL_CERT, BERTHCTL_KEY, BERTHCTL_OUTPUT,
BERTHCTL_TENANT) and the flags. The default endpoint is
https://127.0.0.1:2379.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 cluster unreachable.`

// NewCommand is berthctl's command tree. ctx ends long-running commands
// (watch, logs -f); version is the program's own version.
func NewCommand(ctx context.Context, sys IO, version string) *cobra.Command {
	if sys.Getenv == nil {
		sys.Getenv = func(string) string { return "" }
	}
	if sys.Now == nil {
		sys.Now = time.Now
	}
	var g globals
	var o options
	root := cli.NewRoot("berthctl", "Show and steer a berth cluster", rootLong, version)
	root.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return cli.Usagef("unknown command %q (see berthctl --help)", args[0])
		}
		return cli.Usagef("no command given (see berthctl --help)")
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoints, "endpoints", "", "etcd client `URLs`, comma-separated (env BERTHCTL_ENDPOINTS; default https://127.0.0.1:2379)")
	pf.StringVar(&g.cfg.CACert, "cacert", "", "cluster CA certificate `FILE` (env BERTHCTL_CACERT)")
	pf.StringVar(&g.cfg.Cert, "cert", "", "client certificate `FILE` (env BERTHCTL_CERT)")
	pf.StringVar(&g.cfg.Key, "key", "", "client key `FILE` (env BERTHCTL_KEY)")
	pf.StringVar(&g.configPath, "config", "", "config `FILE` (env BERTHCTL_CONFIG; default ~/.config/berthctl.yaml)")
	pf.StringVarP(&o.output, "output", "o", "", "output `FORMAT`: table, json or yaml (env BERTHCTL_OUTPUT; default table)")
	pf.BoolVar(&o.noHeaders, "no-headers", false, "print tables without their header line")
	pf.DurationVar(&o.timeout, "timeout", DefaultTimeout, "connect and request timeout")
	pf.StringVar(&o.tenant, "tenant", "", "tenant of job commands (env BERTHCTL_TENANT; default: the certificate's tenant:NAME, else \"default\")")

	// cmd is a command that runs fn on a connection; words are the
	// subcommand names that old code expects at the head of its arguments.
	cmd := func(use, short string, args cobra.PositionalArgs, fn func(context.Context, *session) error, words ...string) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: args, RunE: func(c *cobra.Command, args []string) error {
			o.command = c.Name()
			o.args = append(append([]string{}, words...), args...)
			return connect(ctx, &g, &o, withOutput(sys, c), fn)
		}}
	}
	group := func(use, short, long string) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Long: long, Args: cobra.ArbitraryArgs,
			RunE: func(c *cobra.Command, args []string) error {
				name := strings.TrimPrefix(c.CommandPath(), "berthctl ")
				if len(args) == 0 {
					c.SetOut(c.ErrOrStderr())
					c.Help()
					return cli.Usagef("%s: no command given (see berthctl %s --help)", name, name)
				}
				if args[0] == "help" {
					return c.Help()
				}
				return cli.Usagef("unknown command \"%s %s\" (see berthctl %s --help)", name, args[0], name)
			}}
	}

	root.AddCommand(
		cmd("nodes", "List nodes: NAME ROLE READY OS-VERSION SLOT UPDATE AGE", noArgs, cmdNodes),
		cmd("node NAME", "Print one node's full document", exactArgs(1), cmdNode),
		cmd("members", "List etcd members, marking the leader and learners", noArgs, cmdMembers),
		cmd("watch", "Print a line for every change under /berth/v1/nodes/ until interrupted", noArgs, cmdWatch),
		cmd("jobs", "List the tenant's jobs: WANT, PLACED, RUNNING and why not placed", noArgs, cmdJobs),
		cmd("ps [JOB]", "Where each replica runs: NODE STATE RESTARTS EXIT IP DIGEST AGE REASON", maxArgs(1), cmdPs),
		cmd("stop JOB", "Keep the job but run nothing (start JOB runs it again)", exactArgs(1), cmdStop),
		cmd("start JOB", "Run a stopped job again", exactArgs(1), cmdStart),
		cmd("rm JOB", "Remove the job and its containers (volumes stay on their nodes)", exactArgs(1), cmdRm),
		cmd("stats", "CPU, memory, pids and I/O of the tenant's containers (1 s sample)", noArgs, cmdStats),
		cmd("usage", "The tenant's CPU-seconds and memory GiB-hours, per node and total", noArgs, cmdUsage),
	)

	run := cmd("run FILE", "Submit (or update) a job from YAML or JSON (- = stdin)", maxArgs(1), cmdRun)
	run.Long = "Submit (or update) a job from YAML or JSON; FILE - reads standard input.\nFILE may also be given as -f FILE. With -o json|yaml the job written is printed."
	run.Flags().StringVarP(&o.file, "file", "f", "", "the job `FILE` (same as the argument)")
	runE := run.RunE
	run.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 1 {
			if o.file != "" && o.file != args[0] {
				return cli.Usagef("run takes FILE or -f FILE, not both")
			}
			o.file = args[0]
		}
		return runE(c, nil)
	}

	logs := cmd("logs JOB[/REPLICA]", "A replica's output (replica 0 by default)", exactArgs(1), cmdLogs)
	logs.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing new output until interrupted")
	logs.Flags().IntVar(&o.tail, "tail", 0, "only the last `N` lines (0 = all)")

	tenant := group("tenant", "Manage tenants (admin)", "")
	tenantAdd := cmd("add NAME", "Create a tenant's etcd role and quota (admin)", exactArgs(1), cmdTenantAdd, "add")
	tenantAdd.Flags().StringVar(&o.cpu, "cpu", "", "CPU quota `Q`, e.g. 4000m (default unlimited)")
	tenantAdd.Flags().StringVar(&o.memory, "memory", "", "memory quota `Q`, e.g. 8Gi (default unlimited)")
	tenant.AddCommand(tenantAdd)

	image := group("image", "Images in the cluster registry", "")
	image.AddCommand(cmd("push IMAGE.tar REPO:TAG", "Push a docker save or OCI tarball to the cluster registry (berth.local/REPO:TAG)", exactArgs(2), cmdImagePush, "push"))

	registry := group("registry", "The tenant's credentials for outside registries", "")
	login := cmd("login REGISTRY", "Store credentials for REGISTRY; the secret is read from standard input", exactArgs(1), cmdRegistry, "login")
	login.Flags().StringVar(&o.username, "username", "", "user `NAME` (the secret on stdin is its password)")
	login.Flags().StringVar(&o.dockerConfig, "docker-config", "", "take the credentials from a docker config.json `FILE`")
	registry.AddCommand(login, cmd("logout REGISTRY", "Remove the credentials for REGISTRY", exactArgs(1), cmdRegistry, "logout"))

	osCmd := group("os", "Cluster-wide OS rollouts (admin)", osLong)
	push := cmd("push PAYLOAD", "Push an OS payload to the cluster registry", exactArgs(1), cmdOSPush, "push")
	push.Flags().StringVar(&o.os.keys, "keys", "", "verify the payload's signature with `DIR`/*.pub first")
	rollOut := cmd("rollout VERSION", "Roll VERSION out across the cluster (replaces the current rollout)", exactArgs(1), cmdOSRollout, "rollout")
	rollOut.Long = "Roll VERSION out across the cluster (replaces the current rollout).\n\n" +
		"Follow it with berthctl os status; steer it with os pause [--reason TEXT],\nos resume and os abort [--reason TEXT]."
	f := rollOut.Flags()
	f.IntVar(&o.os.maxUnavailable, "max-unavailable", 1, "`N` nodes of a group rebooting at once")
	f.StringVar(&o.os.group, "group", "", "only the nodes of group `G` (default: every node)")
	f.StringVar(&o.os.window, "window", "", "maintenance window in UTC, `\"DAYS HH:MM-HH:MM\"` (DAYS: daily or e.g. Mon,Sat; default: any time)")
	f.IntVar(&o.os.canary, "canary", 1, "the first `K` nodes by name update alone first")
	f.DurationVar(&o.os.deadline, "deadline", rollout.DefaultDeadline, "how long a node may stay rebooting or verifying")
	f.IntVar(&o.os.maxFailures, "max-failures", 0, "pause once more than `N` nodes failed")
	f.IntVar(&o.os.tries, "tries", slot.DefaultTries, "boots the new OS gets on a node to pass its health gate before the node rolls back, `N` of 1-99")
	f.BoolVar(&o.os.autoRevert, "auto-revert", false, "then also move updated nodes back to their previous version")
	f.StringVar(&o.os.payload, "payload", "", "payload `REF` (default berth.local/berth/os:VERSION, which must have been pushed)")
	f.BoolVar(&o.os.force, "force", false, "set VERSION again although it is the current rollout")
	pause := cmd("pause", "No node starts a reboot; nodes already rebooting finish", noArgs, cmdOSPause, "pause")
	pause.Flags().StringVar(&o.os.reason, "reason", "", "why, shown by os status")
	abort := cmd("abort", "Stop the rollout of this version for good", noArgs, cmdOSAbort, "abort")
	abort.Flags().StringVar(&o.os.reason, "reason", "", "why, shown by os status")
	osCmd.AddCommand(push, rollOut,
		cmd("status", "Target, state, progress, reboot locks, then per node: NODE GROUP CURRENT STAGED PHASE SINCE REASON", noArgs, cmdOSStatus, "status"),
		pause,
		cmd("resume", "Continue a paused rollout", noArgs, cmdOSResume, "resume"),
		abort)

	vol := group("volume", "The tenant's replicated volumes (replicas: 2)", "")
	vol.AddCommand(
		cmd("ls", "List replicated volumes: VOLUME SIZE OWNER EPOCH HEALTH COPIES", noArgs, cmdVolumeLs),
		cmd("inspect JOB/REPLICA/VOLUME", "Print one volume's record: copies, states, owner, epoch", exactArgs(1), cmdVolumeInspect),
	)
	root.AddCommand(run, logs, tenant, image, registry, osCmd, vol)

	// version also asks the cluster which versions its agents run.
	for _, c := range root.Commands() {
		if c.Name() == "version" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(&cobra.Command{Use: "version", Short: "Print berthctl's version and the versions the cluster's agents run",
		Args: noArgs, RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintf(c.OutOrStdout(), "berthctl %s\n", version)
			err := connect(ctx, &g, &o, withOutput(sys, c), cmdVersion)
			if err != nil {
				fmt.Fprintf(c.ErrOrStderr(), "berthctl: cluster not reached: %s\n", oneLine(err.Error()))
			}
			return nil
		}})
	return root
}

// withOutput is sys writing where the command writes (cli.Run sets it).
func withOutput(sys IO, c *cobra.Command) IO {
	sys.Stdout, sys.Stderr = c.OutOrStdout(), c.ErrOrStderr()
	return sys
}

// Argument checks with berthctl's messages (usage errors, exit 2).
var noArgs = exactArgs(0)

func exactArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		if n == 0 {
			return cli.Usagef("%s takes no arguments, got %d (see %s --help)", strings.TrimPrefix(c.CommandPath(), "berthctl "), len(args), c.CommandPath())
		}
		return cli.Usagef("usage: %s (see %s --help)", strings.TrimSuffix(c.UseLine(), " [flags]"), c.CommandPath())
	}
}

func maxArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) <= n {
			return nil
		}
		return cli.Usagef("%s takes at most %d argument(s), got %d (see %s --help)", c.Name(), n, len(args), c.CommandPath())
	}
}

// cmdVersion prints the versions the nodes' agents and OS run.
func cmdVersion(ctx context.Context, s *session) error {
	list, err := s.listNodes(ctx)
	if err != nil {
		return err
	}
	t := s.table("NODE", "AGENT", "OS-VERSION")
	for _, r := range list.Items {
		agent, osv := "-", "-"
		if d := r.Document; d != nil {
			agent, osv = orDash(d.Agent.Version), orDash(d.OS.Version)
		}
		t.row(r.Name, agent, osv)
	}
	return t.flush()
}
