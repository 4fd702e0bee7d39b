// Package ctl is berthctl: it reads the node documents and cluster layout
// that berth agents keep in etcd (agent/nodedoc) and prints them.
package ctl

import (
	"context"
	"io"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/internal/retry"
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

// IO is what a berthctl run reads and writes, so tests run it in-process.
type IO struct {
	Stdin          io.Reader // nil = os.Stdin
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Now            func() time.Time
}

// exitError is the error of a chosen exit code (package cli prints it).
type exitError = cli.ExitError

func fail(code int, format string, args ...any) error {
	return cli.Exitf(code, format, args...)
}

// Main runs berthctl with args (without the program name) and returns the
// exit code; errors are printed to Stderr as one line.
func Main(ctx context.Context, args []string, sys IO) int {
	return cli.Run(NewCommand(ctx, sys, "dev"), args, sys.Stdout, sys.Stderr)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type options struct {
	// Job command flags.
	file, tenant, cpu, memory string
	username, dockerConfig    string // registry login
	follow                    bool
	tail                      int
	noHeaders                 bool
	os                        osOptions

	cfg     Config
	output  string
	timeout time.Duration
	command string
	args    []string
}

// globals are the connection and output flags every command takes.
type globals struct {
	endpoints, configPath string
	cfg                   Config
}

// resolve merges the config file, the environment and the flags into o.
func (g *globals) resolve(o *options, sys IO) error {
	flagCfg := g.cfg
	flagCfg.Endpoints = splitList(g.endpoints)
	configPath := g.configPath
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
			return fail(ExitUsage, "%v", err)
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
		return fail(ExitUsage, "%v", err)
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
		return fail(ExitUsage, "--output %q: want table, json or yaml", o.output)
	}
	if o.timeout <= 0 {
		return fail(ExitUsage, "--timeout must be positive")
	}
	return nil
}

// connect resolves the options and runs cmd on a new etcd client.
func connect(ctx context.Context, g *globals, o *options, sys IO, cmd func(context.Context, *session) error) error {
	if err := g.resolve(o, sys); err != nil {
		return err
	}
	cli, err := newClient(o.cfg, o.timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	return cmd(ctx, &session{cli: cli, opts: *o, sys: sys})
}

// session is one command's connection and options.
type session struct {
	cli  *clientv3.Client
	opts options
	sys  IO
}

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

// request gives one etcd call the timeout and turns its error into a
// berthctl error with a cause a person can act on.
func (s *session) request(ctx context.Context, what string, call func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, s.opts.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// etcd refuses or drops a request while it elects a leader or
		// catches up after a member restarted; such a request is tried
		// again within the timeout instead of failing the command.
		done <- retry.Do(cctx, retry.Policy{Initial: 200 * time.Millisecond, Max: 2 * time.Second}, func() error {
			err := call(cctx)
			if err != nil && !transient(err) {
				return retry.Permanent(err)
			}
			return err
		})
	}()
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
