package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-os/berth/internal/retry"
)

// ShimOptions configures a Shim.
type ShimOptions struct {
	// ShimPath is the berth-shim binary. Default: berth-shim next to the
	// running executable, then $PATH.
	ShimPath string
	// Root holds one state directory per container. It must survive agent
	// restarts (exit codes live there). Default /var/lib/berth/containers.
	Root string
	// StartTimeout bounds how long Run waits for the process to run.
	// Default 60s.
	StartTimeout time.Duration
	Log          *slog.Logger
}

// DefaultRoot is the default state root.
const DefaultRoot = "/var/lib/berth/containers"

// Shim runs each container under its own berth-shim monitor process.
type Shim struct {
	shimPath     string
	root         string
	startTimeout time.Duration
	log          *slog.Logger
}

var _ Runtime = (*Shim)(nil)

// NewShim finds the shim binary and prepares the state root. Containers
// already recorded under the root are adopted: List and Get report them.
func NewShim(o ShimOptions) (*Shim, error) {
	if o.Root == "" {
		o.Root = DefaultRoot
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, fmt.Errorf("container state root %q: %w", o.Root, err)
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("create container state root: %w", err)
	}
	path := o.ShimPath
	if path == "" {
		if exe, err := os.Executable(); err == nil {
			candidate := filepath.Join(filepath.Dir(exe), "berth-shim")
			if _, err := os.Stat(candidate); err == nil {
				path = candidate
			}
		}
		if path == "" {
			p, err := exec.LookPath("berth-shim")
			if err != nil {
				return nil, errors.New("berth-shim not found next to the agent binary nor in $PATH: install it or set ShimPath")
			}
			path = p
		}
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("shim path: %w", err)
	}
	if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("shim binary %s is missing or not executable", path)
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 60 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Shim{shimPath: path, root: root, startTimeout: o.StartTimeout, log: o.Log}, nil
}

// Root returns the state root directory.
func (r *Shim) Root() string { return r.root }

func (r *Shim) dir(id string) string { return filepath.Join(r.root, id) }

// LogPath is the container's log file; the previous one is LogPath(id)+".1".
func (r *Shim) LogPath(id string) string { return filepath.Join(r.dir(id), LogFile) }

// Run writes the spec, starts the shim detached and returns once the
// container's process runs (or has already exited). A start failure is
// returned as one line, and stays recorded in the container's state.
func (r *Shim) Run(ctx context.Context, s Spec) (State, error) {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return State{}, err
	}
	if st, err := os.Stat(s.Rootfs); err != nil || !st.IsDir() {
		return State{}, fmt.Errorf("container %s: rootfs %s is not a directory", s.ID, s.Rootfs)
	}
	for _, m := range s.Mounts {
		if _, err := os.Stat(m.Source); err != nil {
			return State{}, fmt.Errorf("container %s: mount source %s: %w", s.ID, m.Source, err)
		}
	}
	dir := r.dir(s.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return State{}, fmt.Errorf("container %s already exists: remove it first", s.ID)
		}
		return State{}, fmt.Errorf("create container %s state dir: %w", s.ID, err)
	}
	if err := WriteJSONFile(filepath.Join(dir, SpecFile), s); err != nil {
		os.RemoveAll(dir)
		return State{}, err
	}
	shimLog, err := os.OpenFile(filepath.Join(dir, ShimLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		os.RemoveAll(dir)
		return State{}, fmt.Errorf("container %s: %w", s.ID, err)
	}
	defer shimLog.Close()
	cmd := exec.Command(r.shimPath, "run", "--root", r.root, "--id", s.ID)
	cmd.Stdout, cmd.Stderr = shimLog, shimLog // stdin is /dev/null
	cmd.Dir = "/"
	// A session of its own: no signal aimed at the agent's process group or
	// terminal reaches the shim, and it outlives the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return State{}, fmt.Errorf("container %s: start shim %s: %w", s.ID, r.shimPath, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reap it; the shim is not tied to us otherwise
	r.log.Debug("shim started", "id", s.ID, "pid", cmd.Process.Pid)

	deadline := time.NewTimer(r.startTimeout)
	defer deadline.Stop()
	// Polling (a stat or two) is cheaper than it looks next to a ~50 ms
	// container start, and keeps Run's wake-up delay small.
	poll := retry.NewBackoff(retry.Policy{Initial: 500 * time.Microsecond, Max: 2 * time.Millisecond})
	for {
		if st, ok, err := r.readExit(s.ID); err != nil {
			return State{}, err
		} else if ok {
			if st.Error != "" {
				return st, fmt.Errorf("container %s: %s", s.ID, st.Error)
			}
			return st, nil
		}
		if st, ok, err := r.readRunning(s.ID); err != nil {
			return State{}, err
		} else if ok {
			return st, nil
		}
		select {
		case <-exited:
			// The files are written before the shim exits: look once more.
			if st, ok, _ := r.readExit(s.ID); ok {
				if st.Error != "" {
					return st, fmt.Errorf("container %s: %s", s.ID, st.Error)
				}
				return st, nil
			}
			return State{}, fmt.Errorf("container %s: shim exited (%s) before the container ran: %s", s.ID, cmd.ProcessState, r.shimFailure(s.ID))
		case <-deadline.C:
			return State{}, fmt.Errorf("container %s: not running after %s: %s", s.ID, r.startTimeout, r.shimFailure(s.ID))
		case <-ctx.Done():
			return State{}, fmt.Errorf("container %s: start interrupted (the shim keeps going): %w", s.ID, ctx.Err())
		case <-time.After(poll.Next()):
		}
	}
}

// shimFailure is the last line the shim logged, for error messages.
func (r *Shim) shimFailure(id string) string {
	data, _ := os.ReadFile(filepath.Join(r.dir(id), ShimLogFile))
	if last := lastLine(data); last != "" {
		return last
	}
	return "the shim logged nothing"
}

func (r *Shim) readExit(id string) (State, bool, error) {
	var st State
	err := readJSONFile(filepath.Join(r.dir(id), ExitFile), &st)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("container %s: %w", id, err)
	}
	return st, true, nil
}

func (r *Shim) readRunning(id string) (State, bool, error) {
	var st State
	err := readJSONFile(filepath.Join(r.dir(id), StateFile), &st)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("container %s: %w", id, err)
	}
	return st, true, nil
}

// shimPid returns the pid of the container's shim if that process is alive
// and really is our shim for this container (pids get reused).
func (r *Shim) shimPid(id string) (int, bool) {
	data, err := os.ReadFile(filepath.Join(r.dir(id), ShimPidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	want := []string{"run", "--root", r.root, "--id", id}
	if len(args) != len(want)+1 {
		return 0, false
	}
	for i, w := range want {
		if args[i+1] != w {
			return 0, false
		}
	}
	return pid, true
}

// Get reports one container.
func (r *Shim) Get(_ context.Context, id string) (State, error) {
	if err := ValidateID(id); err != nil {
		return State{}, err
	}
	return r.get(id)
}

func (r *Shim) get(id string) (State, error) {
	dir := r.dir(id)
	var spec Spec
	if err := readJSONFile(filepath.Join(dir, SpecFile), &spec); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat(dir); statErr != nil {
				return State{}, fmt.Errorf("container %s: %w", id, ErrNotFound)
			}
			// Run is still writing the spec.
			return State{ID: id, Status: StatusCreated}, nil
		}
		return State{}, fmt.Errorf("container %s: %w", id, err)
	}
	base := State{ID: id, Labels: spec.Labels}
	if st, ok, err := r.readExit(id); err != nil {
		return State{}, err
	} else if ok {
		st.ID, st.Labels, st.Status = id, spec.Labels, StatusExited
		return st, nil
	}
	running, isRunning, err := r.readRunning(id)
	if err != nil {
		return State{}, err
	}
	_, alive := r.shimPid(id)
	switch {
	case alive && isRunning:
		running.ID, running.Labels, running.Status = id, spec.Labels, StatusRunning
		return running, nil
	case alive:
		base.Status = StatusCreated
		return base, nil
	}
	// No exit record and no monitor. Look again: the shim may have written
	// exit.json and exited between the two reads above.
	if st, ok, _ := r.readExit(id); ok {
		st.ID, st.Labels, st.Status = id, spec.Labels, StatusExited
		return st, nil
	}
	if !isRunning && r.startingRecently(id) {
		base.Status = StatusCreated
		return base, nil
	}
	base.Status = StatusExited
	base.ExitCode = -1
	base.StartedAt, base.Pid = running.StartedAt, running.Pid
	base.Error = "monitor died"
	return base, nil
}

// startingRecently covers the short window in Run between writing the spec
// and the shim writing its pid file.
func (r *Shim) startingRecently(id string) bool {
	if _, err := os.Stat(filepath.Join(r.dir(id), ShimPidFile)); err == nil {
		return false
	}
	st, err := os.Stat(filepath.Join(r.dir(id), SpecFile))
	return err == nil && time.Since(st.ModTime()) < 5*time.Second
}

// List reports every container with a state directory, sorted by ID.
func (r *Shim) List(_ context.Context) ([]State, error) {
	entries, err := os.ReadDir(r.root)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []State
	for _, e := range entries {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		st, err := r.get(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Stop asks the shim to stop the container: SIGTERM, then SIGKILL after
// timeout (0 = the spec's StopTimeout). It returns once the exit is recorded.
// Stopping a container that is not running is not an error.
func (r *Shim) Stop(ctx context.Context, id string, timeout time.Duration) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	spec, err := ReadSpecFile(r.dir(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("container %s: %w", id, ErrNotFound)
		}
		return fmt.Errorf("container %s: %w", id, err)
	}
	if timeout <= 0 {
		timeout = spec.WithDefaults().StopTimeout
	}
	if _, done, _ := r.readExit(id); done {
		return nil
	}
	pid, alive := r.shimPid(id)
	if !alive {
		// Monitor gone (or never started): make sure nothing it ran survives.
		return r.killOrphan(id, spec)
	}
	if err := WriteFileAtomic(filepath.Join(r.dir(id), StopTimeoutFile), []byte(timeout.String()+"\n")); err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("container %s: signal shim %d: %w", id, pid, err)
	}
	// The shim escalates to SIGKILL itself; give it the grace period plus
	// time to record the exit, then take over.
	deadline := time.Now().Add(timeout + 5*time.Second)
	for {
		if _, done, _ := r.readExit(id); done {
			return nil
		}
		if _, alive := r.shimPid(id); !alive {
			if _, done, _ := r.readExit(id); done {
				return nil
			}
			return r.killOrphan(id, spec)
		}
		if time.Now().After(deadline) {
			r.log.Warn("shim did not stop the container in time; killing it", "id", id)
			return r.killOrphan(id, spec)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %s: stop interrupted: %w", id, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// killOrphan kills whatever is left in the container's cgroup.
func (r *Shim) killOrphan(id string, spec Spec) error {
	m, err := cgroupManager(spec.WithDefaults().CgroupPath(), nil)
	if err != nil || !m.Exists() {
		return nil
	}
	pids, err := m.GetAllPids()
	if err != nil {
		return fmt.Errorf("container %s: list processes: %w", id, err)
	}
	for _, pid := range pids {
		_ = killPid(pid)
	}
	return nil
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// Remove stops the container if needed, then deletes its cgroup and state
// directory. Removing an unknown container is not an error.
func (r *Shim) Remove(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	dir := r.dir(id)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	spec, specErr := ReadSpecFile(dir)
	if specErr == nil {
		if err := r.Stop(ctx, id, 0); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		// Wait for the shim to finish its cleanup (cgroup, libcontainer state).
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
			if _, alive := r.shimPid(id); !alive {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := removeCgroup(spec.WithDefaults().CgroupPath()); err != nil {
			return fmt.Errorf("container %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove container %s state: %w", id, err)
	}
	return nil
}

// Stats samples the container's cgroup.
func (r *Shim) Stats(_ context.Context, id string) (Stats, error) {
	if err := ValidateID(id); err != nil {
		return Stats{}, err
	}
	spec, err := ReadSpecFile(r.dir(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Stats{}, fmt.Errorf("container %s: %w", id, ErrNotFound)
		}
		return Stats{}, fmt.Errorf("container %s: %w", id, err)
	}
	st, err := cgroupStats(spec.WithDefaults().CgroupPath())
	if errors.Is(err, fs.ErrNotExist) {
		return Stats{}, fmt.Errorf("container %s is not running", id)
	}
	if err != nil {
		return Stats{}, fmt.Errorf("container %s: %w", id, err)
	}
	return st, nil
}

// lastLine returns the last non-empty line of b.
func lastLine(b []byte) string {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}
