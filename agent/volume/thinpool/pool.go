package thinpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/berth-os/berth/internal/atomicfile"
)

// Runner runs a command and returns its standard output; a failure's
// error carries the command's standard error.
type Runner func(ctx context.Context, name string, args ...string) (string, error)

// Exec is the Runner of real commands.
func Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return string(out), fmt.Errorf("%s %s: %s", name, strings.Join(args, " "), msg)
	}
	return string(out), nil
}

// Config says where the pool lives and how big it may grow.
type Config struct {
	// Dir holds the data and metadata files and the state file, on the
	// state partition (/var/lib/berth/volumes/pool).
	Dir string
	// Size is the pool's data size for a new pool (the file is sparse:
	// blocks are taken from the state partition as volumes write). An
	// existing pool keeps the size it was made with.
	Size int64
	Run  Runner       // default Exec
	Log  *slog.Logger // default slog.Default()
}

// Pool is a node's thin pool, open and active.
type Pool struct {
	c     Config
	mu    sync.Mutex
	state State
}

const (
	dataFile  = "data"
	metaFile  = "meta"
	stateFile = "state.json"
)

// Open makes the pool ready: it creates the files on first use, attaches
// them to loop devices, activates the pool and every device the state
// file lists. It is safe to call again after an agent restart (what is
// already active is kept).
func Open(ctx context.Context, c Config) (*Pool, error) {
	if c.Run == nil {
		c.Run = Exec
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if !filepath.IsAbs(c.Dir) {
		return nil, fmt.Errorf("volume pool: directory %q must be an absolute path", c.Dir)
	}
	p := &Pool{c: c}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("volume pool: %w", err)
	}
	switch err := p.load(); {
	case errors.Is(err, os.ErrNotExist):
		if c.Size < 64*BlockSize || c.Size%BlockSize != 0 {
			return nil, fmt.Errorf("volume pool: size %d must be a multiple of 64 KiB and at least 4 MiB", c.Size)
		}
		p.state = State{DataSize: c.Size, Devices: map[string]Device{}}
		// The files first, the state last: a pool is only "made" once
		// both files have their size (a zeroed metadata file is what
		// tells the kernel to format it).
		if err := makeSparse(filepath.Join(c.Dir, metaFile), MetadataSize(c.Size)); err != nil {
			return nil, err
		}
		if err := makeSparse(filepath.Join(c.Dir, dataFile), c.Size); err != nil {
			return nil, err
		}
		if err := p.save(); err != nil {
			return nil, err
		}
		c.Log.Info("volume pool made", "dir", c.Dir, "size", c.Size)
	case err != nil:
		return nil, err
	}
	if err := p.activate(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("volume pool: %w", err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("volume pool: size %s: %w", path, err)
	}
	return nil
}

func (p *Pool) load() error {
	data, err := os.ReadFile(filepath.Join(p.c.Dir, stateFile))
	if err != nil {
		return err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("volume pool: %s: %w (the pool's record of its volumes is damaged)", filepath.Join(p.c.Dir, stateFile), err)
	}
	if s.Devices == nil {
		s.Devices = map[string]Device{}
	}
	p.state = s
	return nil
}

func (p *Pool) save() error {
	data, err := json.MarshalIndent(p.state, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(p.c.Dir, stateFile), append(data, '\n'), 0o600)
}

// loop returns the loop device of file, attaching it when none is.
func (p *Pool) loop(ctx context.Context, file string) (string, error) {
	out, err := p.c.Run(ctx, "losetup", "--associated", file, "--noheadings", "--output", "NAME")
	if err != nil {
		return "", err
	}
	if dev, _, _ := strings.Cut(strings.TrimSpace(out), "\n"); dev != "" {
		return dev, nil
	}
	out, err = p.c.Run(ctx, "losetup", "--find", "--show", "--direct-io=on", file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

func (p *Pool) active(ctx context.Context, name string) bool {
	_, err := p.c.Run(ctx, "dmsetup", "status", name)
	return err == nil
}

func mapper(name string) string { return "/dev/mapper/" + name }

func (p *Pool) activate(ctx context.Context) error {
	if !p.active(ctx, PoolName) {
		meta, err := p.loop(ctx, filepath.Join(p.c.Dir, metaFile))
		if err != nil {
			return fmt.Errorf("volume pool: %w", err)
		}
		data, err := p.loop(ctx, filepath.Join(p.c.Dir, dataFile))
		if err != nil {
			return fmt.Errorf("volume pool: %w", err)
		}
		if _, err := p.c.Run(ctx, "dmsetup", "create", PoolName, "--table", PoolTable(meta, data, p.state.DataSize)); err != nil {
			return fmt.Errorf("volume pool: %w", err)
		}
	}
	for name, d := range p.state.Devices {
		if d.Origin != "" { // snapshots stay inactive until read
			continue
		}
		if err := p.activateThin(ctx, name, d); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pool) activateThin(ctx context.Context, name string, d Device) error {
	if p.active(ctx, ThinName(name)) {
		return nil
	}
	if _, err := p.c.Run(ctx, "dmsetup", "create", ThinName(name), "--table", ThinTable(mapper(PoolName), d.ID, d.Size)); err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	return nil
}

func (p *Pool) message(ctx context.Context, msg string) error {
	_, err := p.c.Run(ctx, "dmsetup", "message", PoolName, "0", msg)
	return err
}

// Create makes (or finds) the thin device name of size bytes and returns
// its path. A device of that name with another size is an error.
func (p *Pool) Create(ctx context.Context, name string, size int64) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d, ok := p.state.Devices[name]; ok {
		if d.Size != size {
			return "", fmt.Errorf("volume %s: exists with %d bytes, asked for %d (a volume's size cannot change)", name, d.Size, size)
		}
		return mapper(ThinName(name)), p.activateThin(ctx, name, d)
	}
	if err := p.state.Fit(name, size); err != nil {
		return "", err
	}
	id, err := p.state.NextID()
	if err != nil {
		return "", err
	}
	if err := p.newThin(ctx, fmt.Sprintf("create_thin %d", id), id); err != nil {
		return "", fmt.Errorf("volume %s: %w", name, err)
	}
	d := Device{ID: id, Size: size}
	p.state.Devices[name] = d
	if err := p.save(); err != nil {
		delete(p.state.Devices, name)
		return "", err
	}
	if err := p.activateThin(ctx, name, d); err != nil {
		return "", err
	}
	return mapper(ThinName(name)), nil
}

// newThin sends a create message for id. An id the kernel already has
// but the state file does not is left from a create that crashed before
// the state was saved: nothing used it, so it is deleted and made anew.
func (p *Pool) newThin(ctx context.Context, msg string, id int) error {
	err := p.message(ctx, msg)
	if err == nil {
		return nil
	}
	if derr := p.message(ctx, fmt.Sprintf("delete %d", id)); derr != nil {
		return err
	}
	return p.message(ctx, msg)
}

// Snapshot makes name a copy-on-write snapshot of origin, as of now. The
// origin is suspended for the moment of the metadata write, so the
// snapshot is crash-consistent.
func (p *Pool) Snapshot(ctx context.Context, origin, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.state.Devices[origin]
	if !ok {
		return fmt.Errorf("snapshot %s: no volume %s on this node", name, origin)
	}
	if _, ok := p.state.Devices[name]; ok {
		return fmt.Errorf("snapshot %s: the name is taken", name)
	}
	id, err := p.state.NextID()
	if err != nil {
		return err
	}
	suspended := false
	if p.active(ctx, ThinName(origin)) {
		if _, err := p.c.Run(ctx, "dmsetup", "suspend", ThinName(origin)); err != nil {
			return fmt.Errorf("snapshot %s: %w", name, err)
		}
		suspended = true
	}
	err = p.newThin(ctx, fmt.Sprintf("create_snap %d %d", id, o.ID), id)
	if suspended {
		if _, rerr := p.c.Run(ctx, "dmsetup", "resume", ThinName(origin)); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("snapshot %s of %s: %w", name, origin, err)
	}
	p.state.Devices[name] = Device{ID: id, Size: o.Size, Origin: origin}
	return p.save()
}

// Activate makes a snapshot (or any device) readable and returns its path.
func (p *Pool) Activate(ctx context.Context, name string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.state.Devices[name]
	if !ok {
		return "", fmt.Errorf("no volume or snapshot %s on this node", name)
	}
	return mapper(ThinName(name)), p.activateThin(ctx, name, d)
}

// Remove deactivates and deletes name. The state file forgets it first:
// an id the kernel still has after a crash is recycled by newThin.
func (p *Pool) Remove(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.state.Devices[name]
	if !ok {
		return nil
	}
	if p.active(ctx, ThinName(name)) {
		if _, err := p.c.Run(ctx, "dmsetup", "remove", ThinName(name)); err != nil {
			return fmt.Errorf("remove volume %s: %w (is it still in use?)", name, err)
		}
	}
	delete(p.state.Devices, name)
	if err := p.save(); err != nil {
		p.state.Devices[name] = d
		return err
	}
	if err := p.message(ctx, fmt.Sprintf("delete %d", d.ID)); err != nil {
		p.c.Log.Warn("thin device not deleted from the pool; its id is recycled later", "volume", name, "id", d.ID, "err", err)
	}
	return nil
}

// Devices lists the pool's devices (a copy).
func (p *Pool) Devices() map[string]Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[string]Device, len(p.state.Devices))
	for k, v := range p.state.Devices {
		m[k] = v
	}
	return m
}

// Space is the pool's size and what is not promised to volumes yet.
func (p *Pool) Space() (size, free int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state.DataSize, max(p.state.DataSize-p.state.Committed(), 0)
}

// Status reads the pool's usage from the kernel.
func (p *Pool) Status(ctx context.Context) (Status, error) {
	out, err := p.c.Run(ctx, "dmsetup", "status", PoolName)
	if err != nil {
		return Status{}, err
	}
	return ParseStatus(strings.TrimSpace(out))
}
