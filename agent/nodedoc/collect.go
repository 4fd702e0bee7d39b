package nodedoc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/osrelease"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/slot"
)

// UpdateStatus reports the updater's view of the slots; slot.System
// implements it.
type UpdateStatus interface {
	Status() (slot.Status, error)
}

// Collector fills a Node from the running system. Zero-valued path fields
// mean the real system files; tests point them at fixtures.
type Collector struct {
	Name         string
	Role         string
	Addresses    []string
	ClientURL    string
	AgentVersion string
	Started      time.Time // when the agent started; zero means when the Collector was first used

	ProcDir   string       // default /proc
	OSRelease string       // default /etc/os-release
	Updater   UpdateStatus // default slot.System{}; errors are expected off a berth node
	// Kernel returns the running kernel release; default uname(2).
	Kernel func() (string, error)
	// Containers counts running and all containers; nil reports zero.
	Containers func() (running, total int)
	// Labels are copied into the document (the operator's node labels).
	Labels map[string]string
	// Ready tells whether the agent considers the node ready; nil means true.
	Ready func() bool
	// Draining tells whether the node is being emptied for a reboot; nil
	// means never.
	Draining func() bool
	// EtcdSpace reports SpaceLow or SpaceFull ("" when fine); nil: "".
	EtcdSpace func() string
	// VolumePool reports the replicated-volume pool; nil or a nil
	// answer: none.
	VolumePool func() *VolumePool
	Now        func() time.Time
	Log        *slog.Logger
}

// Collect returns the document, filled as far as the system allows. What
// could not be read is logged at debug level and left zero: a node with an
// unreadable /proc file still publishes that it is alive.
func (c *Collector) Collect() Node {
	n, err := c.Gather()
	if err != nil && c.Log != nil {
		c.Log.Debug("node state partly collected", "err", err)
	}
	return n
}

// Gather is Collect that also returns what went wrong (errors.Join of each
// failed source). The updater's status is not an error off a berth node.
func (c *Collector) Gather() (Node, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	if c.Started.IsZero() {
		c.Started = now().UTC().Truncate(time.Second)
	}
	proc := c.ProcDir
	if proc == "" {
		proc = "/proc"
	}
	n := Node{
		Schema:    Schema,
		Name:      c.Name,
		Role:      c.Role,
		Addresses: append([]string{}, c.Addresses...),
		ClientURL: c.ClientURL,
		Agent:     Agent{Version: c.AgentVersion, Started: c.Started},
		Heartbeat: now().UTC().Truncate(time.Second),
		Ready:     c.Ready == nil || c.Ready(),
		Draining:  c.Draining != nil && c.Draining(),
		Labels:    c.Labels,
	}
	if c.EtcdSpace != nil {
		n.EtcdSpace = c.EtcdSpace()
	}
	if c.VolumePool != nil {
		n.VolumePool = c.VolumePool()
	}
	if n.Agent.Version == "" {
		n.Agent.Version = "dev"
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	var err error
	n.UptimeSeconds, err = readUptime(filepath.Join(proc, "uptime"))
	add(err)
	n.BootTime, err = readBootTime(filepath.Join(proc, "stat"))
	add(err)
	n.CPU.Load1, err = readLoad1(filepath.Join(proc, "loadavg"))
	add(err)
	n.Memory, err = readMeminfo(filepath.Join(proc, "meminfo"))
	add(err)
	n.CPU.Cores, err = countCores(filepath.Join(proc, "cpuinfo"))
	add(err)

	kernel := c.Kernel
	if kernel == nil {
		kernel = unameRelease
	}
	n.Kernel, err = kernel()
	add(err)

	osRelease := c.OSRelease
	if osRelease == "" {
		osRelease = "/etc/os-release"
	}
	n.OS, err = readOSInfo(osRelease)
	add(err)

	var upd UpdateStatus = slot.System{}
	if c.Updater != nil {
		upd = c.Updater
	}
	if st, err := upd.Status(); err == nil {
		applyUpdateStatus(&n.OS, st)
	} else if c.Log != nil {
		// Expected on a development machine or in tests: no berth.slot
		// on the kernel command line.
		c.Log.Debug("no updater status", "err", err)
	}

	if c.Containers != nil {
		n.Containers.Running, n.Containers.Total = c.Containers()
	}
	return n, errors.Join(errs...)
}

// applyUpdateStatus lets the updater's view win over os-release: it knows
// the booted slot and reads the berth version key.
func applyUpdateStatus(o *OS, st slot.Status) {
	o.Slot = st.Booted.Slot
	if st.Booted.Version != "" {
		o.Version = st.Booted.Version
	}
	o.OtherSlotState = st.Other.State
	if r := st.LastUpdate; r != nil {
		o.LastUpdate = &LastUpdate{State: r.State, Version: r.Version, Reason: r.Reason}
	}
}

func readUptime(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("uptime: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, fmt.Errorf("uptime: %s is empty", path)
	}
	secs, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || secs < 0 {
		return 0, fmt.Errorf("uptime: bad value %q in %s", fields[0], path)
	}
	return int64(secs), nil
}

func readBootTime(path string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		v, ok := strings.CutPrefix(line, "btime ")
		if !ok {
			continue
		}
		secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || secs <= 0 {
			return time.Time{}, fmt.Errorf("boot time: bad btime %q in %s", strings.TrimSpace(v), path)
		}
		return time.Unix(secs, 0).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("boot time: no btime line in %s", path)
}

func readLoad1(path string) (float64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("load: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, fmt.Errorf("load: %s is empty", path)
	}
	l, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || l < 0 {
		return 0, fmt.Errorf("load: bad value %q in %s", fields[0], path)
	}
	return l, nil
}

func readMeminfo(path string) (Memory, error) {
	f, err := os.Open(path)
	if err != nil {
		return Memory{}, fmt.Errorf("memory: %w", err)
	}
	defer f.Close()
	var m Memory
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "MemTotal" && key != "MemAvailable") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return Memory{}, fmt.Errorf("memory: %s has no value in %s", key, path)
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("memory: bad %s %q in %s", key, fields[0], path)
		}
		if key == "MemTotal" {
			m.TotalBytes, haveTotal = kb*1024, true
		} else {
			m.AvailableBytes, haveAvail = kb*1024, true
		}
	}
	if err := sc.Err(); err != nil {
		return Memory{}, fmt.Errorf("memory: read %s: %w", path, err)
	}
	if !haveTotal || !haveAvail {
		return m, fmt.Errorf("memory: %s lacks MemTotal or MemAvailable", path)
	}
	return m, nil
}

// countCores counts "processor" entries, which is what the kernel has
// online, not what this process's affinity mask allows.
func countCores(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return runtime.NumCPU(), fmt.Errorf("cores: %w", err)
	}
	n := 0
	for line := range bytes.Lines(data) {
		key, _, ok := bytes.Cut(line, []byte(":"))
		if ok && string(bytes.TrimSpace(key)) == "processor" {
			n++
		}
	}
	if n == 0 {
		return runtime.NumCPU(), fmt.Errorf("cores: no processor entries in %s", path)
	}
	return n, nil
}

func unameRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// readOSInfo reads the OS name and version from os-release. A berth image
// sets IMAGE_ID and the berth version key; other systems fall back to ID and
// VERSION_ID.
func readOSInfo(path string) (OS, error) {
	kv, err := osrelease.Read(path)
	if err != nil {
		return OS{}, fmt.Errorf("os-release: %w", err)
	}
	return OS{
		Name:    firstNonEmpty(kv["IMAGE_ID"], kv["ID"]),
		Version: firstNonEmpty(kv[layout.OSReleaseVersionKey], kv["IMAGE_VERSION"], kv["VERSION_ID"]),
	}, nil
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
