// Package ctl is berthctl: it reads the node documents and cluster layout
// that berth agents keep in etcd (agent/state) and prints them.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Exit codes of berthctl.
const (
	ExitOK          = 0 // the command did what was asked
	ExitError       = 1 // any other failure, including rejected credentials
	ExitUsage       = 2 // bad command line, flags or config file
	ExitNotFound    = 3 // the named node does not exist
	ExitUnreachable = 4 // no endpoint answered within the timeout
)

// DefaultTimeout bounds connecting and each request.
const DefaultTimeout = 5 * time.Second

const usage = `usage: berthctl [flags] COMMAND [ARGS]

Commands:
  nodes        list nodes: NAME ROLE READY OS-VERSION SLOT UPDATE AGE
  node NAME    print one node's full document
  members      list etcd members, marking the leader and learners
  watch        print a line for every change under /berth/v1/nodes/ until interrupted

  run -f FILE  submit (or update) a job from YAML or JSON (- = stdin)
  jobs         list the tenant's jobs: WANT, PLACED, RUNNING and why not placed
  ps [JOB]     where each replica runs: NODE STATE RESTARTS EXIT IP DIGEST AGE REASON
  logs JOB[/REPLICA] [--follow] [--tail N]   a replica's output (replica 0 by default)
  stop JOB     keep the job but run nothing; start JOB runs it again
  rm JOB       remove the job and its containers (volumes stay on their nodes)
  stats        CPU, memory, pids and I/O of the tenant's containers (1 s sample)
  usage        the tenant's CPU-seconds and memory GiB-hours, per node and total
  tenant add NAME [--cpu Q] [--memory Q]    create a tenant's etcd role and quota (admin)
  image push IMAGE.tar REPO:TAG             push to the cluster registry (berth.local/REPO:TAG)
  registry login REGISTRY [--username USER | --docker-config FILE] < SECRET
                                            store the tenant's credentials for an outside registry
  registry logout REGISTRY                  remove them

  os push PAYLOAD [--keys DIR]              push an OS payload to the cluster registry (admin)
  os rollout VERSION [--max-unavailable N] [--group G] [--window SPEC] [--canary K]
             [--deadline D] [--max-failures N] [--auto-revert] [--payload REF] [--force]
                                            roll an OS version out across the cluster (admin)
  os status | pause [--reason TEXT] | resume | abort [--reason TEXT]
                                            follow and steer the rollout (berthctl os --help)

Flags (also accepted after the command):
  --endpoints URL,...   etcd client URLs (env BERTHCTL_ENDPOINTS; default https://127.0.0.1:2379)
  --cacert FILE         cluster CA certificate (env BERTHCTL_CACERT)
  --cert FILE           client certificate (env BERTHCTL_CERT)
  --key FILE            client key (env BERTHCTL_KEY)
  --config FILE         config file (env BERTHCTL_CONFIG; default ~/.config/berthctl.yaml)
                        YAML keys: endpoints (list), cacert, cert, key
  -o, --output FORMAT   table, json or yaml (env BERTHCTL_OUTPUT; default table)
  --timeout DURATION    connect and request timeout (default 5s)
  --tenant NAME         tenant of job commands (env BERTHCTL_TENANT; default: the
                        certificate's tenant:NAME, else "default")

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 cluster unreachable.
`

// IO is what a berthctl run reads and writes, so tests run it in-process.
type IO struct {
	Stdin          io.Reader // nil = os.Stdin
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Now            func() time.Time
}

// exitError carries an exit code with a one-line message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Main runs berthctl with args (without the program name) and returns the
// exit code; errors are printed to Stderr as one line.
func Main(ctx context.Context, args []string, sys IO) int {
	if sys.Getenv == nil {
		sys.Getenv = func(string) string { return "" }
	}
	if sys.Now == nil {
		sys.Now = time.Now
	}
	err := run(ctx, args, sys)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		ee = &exitError{code: ExitError, msg: err.Error()}
	}
	fmt.Fprintf(sys.Stderr, "berthctl: %s\n", oneLine(ee.msg))
	if ee.code == ExitUsage {
		fmt.Fprintln(sys.Stderr, "run 'berthctl --help' for usage")
	}
	return ee.code
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type options struct {
	// Job command flags.
	file, tenant, cpu, memory string
	username, dockerConfig    string // registry login
	follow                    bool
	tail                      int
	os                        osOptions

	cfg     Config
	output  string
	timeout time.Duration
	command string
	args    []string
}

func parseArgs(args []string, sys IO) (options, error) {
	var o options
	fs := flag.NewFlagSet("berthctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var flagCfg Config
	var endpoints, configPath string
	fs.StringVar(&endpoints, "endpoints", "", "")
	fs.StringVar(&flagCfg.CACert, "cacert", "", "")
	fs.StringVar(&flagCfg.Cert, "cert", "", "")
	fs.StringVar(&flagCfg.Key, "key", "", "")
	fs.StringVar(&configPath, "config", "", "")
	fs.StringVar(&o.output, "output", "", "")
	fs.StringVar(&o.output, "o", "", "")
	fs.DurationVar(&o.timeout, "timeout", DefaultTimeout, "")
	fs.StringVar(&o.file, "f", "", "")
	fs.StringVar(&o.file, "file", "", "")
	fs.StringVar(&o.tenant, "tenant", "", "")
	fs.StringVar(&o.cpu, "cpu", "", "")
	fs.StringVar(&o.memory, "memory", "", "")
	fs.StringVar(&o.username, "username", "", "")
	fs.StringVar(&o.dockerConfig, "docker-config", "", "")
	fs.BoolVar(&o.follow, "follow", false, "")
	fs.IntVar(&o.tail, "tail", 0, "")
	o.os.register(fs)

	// Go's flag package stops at the first argument; parse again after
	// each one so flags may follow the command.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				if len(positional) > 0 && positional[0] == "os" {
					fmt.Fprint(sys.Stdout, osUsage)
				} else {
					fmt.Fprint(sys.Stdout, usage)
				}
				return o, &exitError{code: ExitOK}
			}
			return o, fail(ExitUsage, "%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if len(positional) == 0 {
		fmt.Fprint(sys.Stderr, usage)
		return o, fail(ExitUsage, "no command given")
	}
	o.command, o.args = positional[0], positional[1:]
	flagCfg.Endpoints = splitList(endpoints)

	mustExist := configPath != ""
	if configPath == "" {
		configPath = sys.Getenv(EnvConfig)
		mustExist = configPath != ""
	}
	if configPath == "" {
		configPath = defaultConfigPath(sys.Getenv)
	}
	var fileCfg Config
	if configPath != "" {
		var err error
		if fileCfg, err = loadConfigFile(configPath, mustExist); err != nil {
			return o, fail(ExitUsage, "%v", err)
		}
	}
	envCfg := Config{
		Endpoints: splitList(sys.Getenv(EnvEndpoints)),
		CACert:    sys.Getenv(EnvCACert), Cert: sys.Getenv(EnvCert), Key: sys.Getenv(EnvKey),
	}
	o.cfg = fileCfg.merge(envCfg).merge(flagCfg)
	if len(o.cfg.Endpoints) == 0 {
		o.cfg.Endpoints = []string{DefaultEndpoint}
	}
	if err := o.cfg.check(); err != nil {
		return o, fail(ExitUsage, "%v", err)
	}
	if o.output == "" {
		o.output = sys.Getenv(EnvOutput)
	}
	if o.output == "" {
		o.output = "table"
	}
	switch o.output {
	case "table", "json", "yaml":
	default:
		return o, fail(ExitUsage, "--output %q: want table, json or yaml", o.output)
	}
	if o.timeout <= 0 {
		return o, fail(ExitUsage, "--timeout must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string, sys IO) error {
	o, err := parseArgs(args, sys)
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) && ee.code == ExitOK {
			return nil
		}
		return err
	}
	var cmd func(context.Context, *session) error
	switch o.command {
	case "nodes":
		cmd = cmdNodes
	case "node":
		cmd = cmdNode
	case "members":
		cmd = cmdMembers
	case "watch":
		cmd = cmdWatch
	case "run":
		cmd = cmdRun
	case "jobs":
		cmd = cmdJobs
	case "ps":
		cmd = cmdPs
	case "logs":
		cmd = cmdLogs
	case "stop":
		cmd = cmdStop
	case "start":
		cmd = cmdStart
	case "rm":
		cmd = cmdRm
	case "stats":
		cmd = cmdStats
	case "usage":
		cmd = cmdUsage
	case "tenant":
		cmd = cmdTenantAdd
	case "image":
		cmd = cmdImagePush
	case "registry":
		cmd = cmdRegistry
	case "os":
		if cmd, err = osCommand(o.args, sys); cmd == nil {
			return err
		}
	case "help":
		if len(o.args) > 0 && o.args[0] == "os" {
			fmt.Fprint(sys.Stdout, osUsage)
			return nil
		}
		fmt.Fprint(sys.Stdout, usage)
		return nil
	default:
		return fail(ExitUsage, "unknown command %q (see berthctl --help)", o.command)
	}
	maxArgs := map[string]int{"node": 1, "ps": 1, "logs": 1, "stop": 1, "start": 1, "rm": 1, "tenant": 2, "image": 3, "os": 2, "registry": 2}
	minArgs := map[string]int{"registry": 2, "node": 1, "logs": 1, "stop": 1, "start": 1, "rm": 1, "tenant": 2, "image": 3}
	if n := len(o.args); n < minArgs[o.command] || n > maxArgs[o.command] {
		if minArgs[o.command] == maxArgs[o.command] {
			return fail(ExitUsage, "%s takes %d argument(s), got %d", o.command, maxArgs[o.command], n)
		}
		return fail(ExitUsage, "%s takes at most %d argument(s), got %d", o.command, maxArgs[o.command], n)
	}
	cli, err := newClient(o.cfg, o.timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	s := &session{cli: cli, opts: o, sys: sys}
	return cmd(ctx, s)
}

// session is one command's connection and options.
type session struct {
	cli  *clientv3.Client
	opts options
	sys  IO
}

// request gives one etcd call the timeout and turns its error into a
// berthctl error with a cause a person can act on.
// deleteKey deletes one key and says whether it was there.
func (s *session) deleteKey(ctx context.Context, what, key string) (bool, error) {
	var deleted int64
	err := s.request(ctx, what, func(ctx context.Context) error {
		resp, err := s.cli.Delete(ctx, key)
		if err == nil {
			deleted = resp.Deleted
		}
		return err
	})
	return deleted > 0, err
}

func (s *session) request(ctx context.Context, what string, call func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, s.opts.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(cctx) }()
	// gRPC retries a failed TLS handshake until the timeout; a call that
	// is slow to answer gets a TLS probe on the side so that wrong
	// certificates are reported in about a second, not after the timeout.
	slow := time.NewTimer(min(time.Second, s.opts.timeout/2))
	defer slow.Stop()
	var err error
	select {
	case err = <-done:
	case <-slow.C:
		if tlsErr := probeTLS(s.opts.cfg); tlsErr != nil {
			cancel()
			<-done
			return tlsErr
		}
		err = <-done
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return explain(what, err, s.opts.cfg, s.opts.timeout)
}

func newClient(cfg Config, timeout time.Duration) (*clientv3.Client, error) {
	tlsInfo := transport.TLSInfo{CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert}
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: timeout,
		Logger:      zap.NewNop(), // errors are reported by berthctl, in one line
	}
	if usesTLS(cfg.Endpoints) || cfg.CACert != "" || cfg.Cert != "" {
		tc, err := clientTLS(tlsInfo)
		if err != nil {
			return nil, err
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, explain("connect", err, cfg, timeout)
	}
	return cli, nil
}

func usesTLS(endpoints []string) bool {
	for _, e := range endpoints {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}
