//go:build cgo

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	berthrt "github.com/berth-os/berth/agent/runtime"
)

// run monitors one container until it is gone; the return value is the
// shim's exit code (0 once exit.json is written for a container that ran).
func run(root, id string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("id", id)
	if err := berthrt.ValidateID(id); err != nil {
		log.Error(err.Error())
		return 2
	}
	dir := filepath.Join(root, id)
	m := &monitor{dir: dir, id: id, log: log}
	// Catch signals before the pid file tells the agent whom to signal.
	// Signals that arrive while the container is being created are kept and
	// acted upon as soon as it runs.
	m.signals = make(chan os.Signal, 4)
	signal.Notify(m.signals, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	if err := berthrt.WriteFileAtomic(filepath.Join(dir, berthrt.ShimPidFile), []byte(strconv.Itoa(os.Getpid())+"\n")); err != nil {
		log.Error("cannot record shim pid", "err", err)
		return 1
	}

	if err := m.start(); err != nil {
		return m.fail(err)
	}
	return m.wait()
}

type monitor struct {
	dir, id   string
	log       *slog.Logger
	spec      berthrt.Spec
	signals   chan os.Signal
	logs      *logFile
	proxy     *portProxy
	container *libcontainer.Container
	process   *libcontainer.Process
	pumps     sync.WaitGroup
	started   berthrt.State
}

// fail records a start failure: exit.json carries the one-line reason that
// the agent's Run returns.
func (m *monitor) fail(err error) int {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	m.log.Error("container did not start", "err", msg)
	if m.container != nil {
		m.container.Destroy()
	}
	if m.proxy != nil {
		m.proxy.Close()
	}
	if m.logs != nil {
		m.logs.Close()
	}
	st := berthrt.State{ID: m.id, Status: berthrt.StatusExited, Labels: m.spec.Labels, ExitCode: -1, FinishedAt: time.Now().UTC(), Error: msg}
	if werr := berthrt.WriteJSONFile(filepath.Join(m.dir, berthrt.ExitFile), st); werr != nil {
		m.log.Error("cannot record start failure", "err", werr)
	}
	return 1
}

func (m *monitor) start() error {
	spec, err := berthrt.ReadSpecFile(m.dir)
	if err != nil {
		return err
	}
	m.spec = spec.WithDefaults()
	if m.spec.ID != m.id {
		return fmt.Errorf("spec.json is for container %q, not %q", m.spec.ID, m.id)
	}
	if err := m.spec.Validate(); err != nil {
		return err
	}
	if m.logs, err = openLogFile(filepath.Join(m.dir, berthrt.LogFile), m.spec.LogMaxBytes); err != nil {
		return err
	}
	if m.proxy, err = listenPorts(m.spec.Ports, m.log); err != nil {
		return err
	}
	config, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: m.id,
		Spec:       berthrt.OCISpec(m.spec),
	})
	if err != nil {
		return fmt.Errorf("container config: %w", err)
	}
	if m.container, err = libcontainer.Create(filepath.Join(m.dir, berthrt.LibcontainerDir), m.id, config); err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stderr pipe: %w", err)
	}
	m.process = &libcontainer.Process{
		Args:   m.spec.Args,
		Env:    m.spec.Env,
		Cwd:    m.spec.Cwd,
		Stdout: outW,
		Stderr: errW,
		Init:   true,
	}
	// BERTH_SHIM_DEBUG=1 in the agent's environment puts libcontainer's
	// step-by-step debug log into shim.log.
	if os.Getenv("BERTH_SHIM_DEBUG") != "" {
		logrus.SetLevel(logrus.DebugLevel)
		logrus.SetFormatter(&logrus.TextFormatter{TimestampFormat: "15:04:05.000000", FullTimestamp: true})
		m.process.LogLevel = "5"
	}
	runErr := m.container.Run(m.process)
	// The container holds its own copies; ours must go so the pumps see EOF.
	outW.Close()
	errW.Close()
	m.pumps.Add(2)
	go func() { defer m.pumps.Done(); m.logs.pump("stdout", outR); outR.Close() }()
	go func() { defer m.pumps.Done(); m.logs.pump("stderr", errR); errR.Close() }()
	if runErr != nil {
		return runErr
	}
	pid, err := m.process.Pid()
	if err != nil {
		return fmt.Errorf("container pid: %w", err)
	}
	netns := m.spec.NetNSPath
	if netns == "" {
		netns = fmt.Sprintf("/proc/%d/ns/net", pid)
	}
	m.proxy.serve(m.spec.Ports, m.spec.ContainerIP, netns)
	m.started = berthrt.State{ID: m.id, Status: berthrt.StatusRunning, Pid: pid, Labels: m.spec.Labels, StartedAt: time.Now().UTC()}
	if err := berthrt.WriteJSONFile(filepath.Join(m.dir, berthrt.StateFile), m.started); err != nil {
		// The container runs; without state.json the agent would think it
		// never started, so stop it and report.
		m.container.Signal(unix.SIGKILL)
		m.process.Wait()
		return err
	}
	m.log.Info("container running", "pid", pid)
	return nil
}

// wait handles stop requests until the container's init exits, then records
// the exit and cleans up.
func (m *monitor) wait() int {
	type waitResult struct {
		ps  *os.ProcessState
		err error
	}
	exited := make(chan waitResult, 1)
	go func() {
		ps, err := m.process.Wait()
		exited <- waitResult{ps, err}
	}()
	var kill <-chan time.Time
	var res waitResult
loop:
	for {
		select {
		case sig := <-m.signals:
			if kill != nil {
				continue // already stopping
			}
			timeout := m.stopTimeout()
			m.log.Info("stopping container", "signal", sig, "timeout", timeout)
			if err := m.container.Signal(unix.SIGTERM); err != nil {
				m.log.Warn("signal container", "err", err)
			}
			kill = time.After(timeout)
		case <-kill:
			m.log.Info("stop timeout reached, killing container")
			if err := m.container.Signal(unix.SIGKILL); err != nil {
				m.log.Warn("kill container", "err", err)
			}
			kill = make(chan time.Time) // never again
		case res = <-exited:
			break loop
		}
	}
	st := m.started
	st.Status = berthrt.StatusExited
	st.FinishedAt = time.Now().UTC()
	if res.ps == nil {
		st.ExitCode = -1
		st.Error = fmt.Sprintf("wait for container: %v", res.err)
	} else if ws, ok := res.ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		st.ExitCode = 128 + int(ws.Signal())
		st.Signal = unix.SignalName(ws.Signal())
	} else {
		st.ExitCode = res.ps.ExitCode()
	}
	// Read the OOM count before the cgroup goes away.
	if n, err := berthrt.OOMKillCount(m.spec.CgroupPath()); err != nil {
		m.log.Warn("cannot read oom kill count", "err", err)
	} else {
		st.OOMKilled = n > 0
	}
	m.proxy.Close()
	// Everything in the pid namespace dies with init, so the pipes close;
	// bound the wait anyway in case a descriptor leaked elsewhere.
	pumped := make(chan struct{})
	go func() { m.pumps.Wait(); close(pumped) }()
	select {
	case <-pumped:
	case <-time.After(2 * time.Second):
		m.log.Warn("container output still open after exit; log may be incomplete")
	}
	if err := m.logs.Close(); err != nil {
		m.log.Warn("container log", "err", err)
	}
	if err := m.container.Destroy(); err != nil {
		m.log.Warn("destroy container", "err", err)
	}
	if err := berthrt.WriteJSONFile(filepath.Join(m.dir, berthrt.ExitFile), st); err != nil {
		m.log.Error("cannot record exit", "err", err)
		return 1
	}
	m.log.Info("container exited", "code", st.ExitCode, "signal", st.Signal, "oom_killed", st.OOMKilled)
	return 0
}

// stopTimeout is the grace period of this stop: the agent's Stop may pass
// its own in stop-timeout, otherwise the spec's.
func (m *monitor) stopTimeout() time.Duration {
	data, err := os.ReadFile(filepath.Join(m.dir, berthrt.StopTimeoutFile))
	if err == nil {
		if d, err := time.ParseDuration(strings.TrimSpace(string(data))); err == nil && d >= 0 {
			return d
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("read stop timeout", "err", err)
	}
	return m.spec.StopTimeout
}
