// Package runtime runs containers on a node. The Shim implementation drives one
// berth-shim monitor process per container through a state directory, so
// containers and their exit codes outlive the agent. This package has no cgo:
// the agent binary stays static; only berth-shim links libcontainer.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Mount is a bind mount (a volume) into the container.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Port is proxied by the shim in userspace from HostIP:HostPort to
// ContainerIP:ContainerPort.
type Port struct {
	HostIP        string `json:"host_ip,omitempty"`
	HostPort      int    `json:"host_port"`
	ContainerPort int    `json:"container_port"`
	Proto         string `json:"proto,omitempty"` // "tcp" (default); udp is not supported
}

// Spec describes one container.
type Spec struct {
	ID           string            `json:"id"`
	Rootfs       string            `json:"rootfs"`
	Args         []string          `json:"args"`
	Env          []string          `json:"env,omitempty"`
	Cwd          string            `json:"cwd,omitempty"`
	Hostname     string            `json:"hostname,omitempty"`
	ReadOnlyRoot bool              `json:"read_only_root,omitempty"`
	CPUMillis    int64             `json:"cpu_millis,omitempty"`
	MemoryBytes  int64             `json:"memory_bytes,omitempty"`
	PidsMax      int64             `json:"pids_max,omitempty"`
	CgroupParent string            `json:"cgroup_parent,omitempty"`
	NetNSPath    string            `json:"netns_path,omitempty"`
	ContainerIP  string            `json:"container_ip,omitempty"`
	Ports        []Port            `json:"ports,omitempty"`
	Mounts       []Mount           `json:"mounts,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	StopTimeout  time.Duration     `json:"stop_timeout,omitempty"`
	LogMaxBytes  int64             `json:"log_max_bytes,omitempty"`
}

// Status is the life-cycle phase of a container.
type Status string

const (
	StatusCreated Status = "created"
	StatusRunning Status = "running"
	StatusExited  Status = "exited"
)

// State is what the node knows about one container. It is also the JSON
// format of the shim's state.json and exit.json files.
type State struct {
	ID         string            `json:"id"`
	Status     Status            `json:"status"`
	Pid        int               `json:"pid,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	StartedAt  time.Time         `json:"started_at,omitzero"`
	FinishedAt time.Time         `json:"finished_at,omitzero"`
	ExitCode   int               `json:"exit_code"`
	Signal     string            `json:"signal,omitempty"`
	OOMKilled  bool              `json:"oom_killed,omitempty"`
	Error      string            `json:"error,omitempty"` // why the container could not start, or why its monitor vanished
}

// Stats is a point-in-time resource usage sample of one container.
type Stats struct {
	Time             time.Time `json:"time"`
	CPUUsageNanos    uint64    `json:"cpu_usage_nanos"`
	MemoryBytes      uint64    `json:"memory_bytes"`
	MemoryLimitBytes uint64    `json:"memory_limit_bytes"` // 0 = unlimited
	PidsCurrent      uint64    `json:"pids_current"`
	IOReadBytes      uint64    `json:"io_read_bytes"`
	IOWriteBytes     uint64    `json:"io_write_bytes"`
}

// Runtime runs containers on this node.
type Runtime interface {
	Run(ctx context.Context, s Spec) (State, error)
	Get(ctx context.Context, id string) (State, error)
	List(ctx context.Context) ([]State, error)
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Remove(ctx context.Context, id string) error
	Stats(ctx context.Context, id string) (Stats, error)
	LogPath(id string) string
}

// ErrNotFound is wrapped by errors about unknown container IDs.
var ErrNotFound = errors.New("container not found")

// Defaults applied by Spec.WithDefaults.
const (
	DefaultStopTimeout  = 10 * time.Second
	DefaultLogMaxBytes  = 10 << 20
	DefaultPidsMax      = 1024
	DefaultCgroupParent = "berth"
	DefaultPath         = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Hand-written matchers instead of regexp: package init runs in every
// berth-shim start (twice per container), and compiling regexps there costs
// milliseconds.

// validID matches ^[a-z0-9][a-z0-9_.-]{0,127}$.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// validCgroupPath matches relative paths of [A-Za-z0-9_.-] components, no
// "." or ".." components, no empty components.
func validCgroupPath(p string) bool {
	if p == "" || len(p) > 1024 {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ValidateID checks a container ID; IDs name directories and cgroups.
func ValidateID(id string) error {
	if !validID(id) {
		return fmt.Errorf("invalid container id %q: use 1-128 of a-z 0-9 _ . - starting with a letter or digit", id)
	}
	return nil
}

// WithDefaults returns s with the documented defaults filled in.
func (s Spec) WithDefaults() Spec {
	if s.Cwd == "" {
		s.Cwd = "/"
	}
	if s.PidsMax == 0 {
		s.PidsMax = DefaultPidsMax
	}
	if s.CgroupParent == "" {
		s.CgroupParent = DefaultCgroupParent
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = DefaultStopTimeout
	}
	if s.LogMaxBytes == 0 {
		s.LogMaxBytes = DefaultLogMaxBytes
	}
	hasPath := false
	for _, e := range s.Env {
		if strings.HasPrefix(e, "PATH=") {
			hasPath = true
		}
	}
	if !hasPath {
		s.Env = append([]string{DefaultPath}, s.Env...)
	}
	for i := range s.Ports {
		if s.Ports[i].Proto == "" {
			s.Ports[i].Proto = "tcp"
		}
	}
	return s
}

// Validate reports the first problem of s as one line. It does not touch the
// file system except through the checks callers add (see Shim.Run).
func (s Spec) Validate() error {
	if err := ValidateID(s.ID); err != nil {
		return err
	}
	if !filepath.IsAbs(s.Rootfs) {
		return fmt.Errorf("container %s: rootfs %q must be an absolute path", s.ID, s.Rootfs)
	}
	if len(s.Args) == 0 || s.Args[0] == "" {
		return fmt.Errorf("container %s: args must name the program to run", s.ID)
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("container %s: env entry %q must be KEY=VALUE", s.ID, e)
		}
	}
	if !filepath.IsAbs(s.Cwd) {
		return fmt.Errorf("container %s: cwd %q must be absolute", s.ID, s.Cwd)
	}
	if s.CPUMillis < 0 || s.MemoryBytes < 0 || s.PidsMax < 0 || s.LogMaxBytes < 0 || s.StopTimeout < 0 {
		return fmt.Errorf("container %s: cpu, memory, pids, log size and stop timeout must not be negative", s.ID)
	}
	if s.MemoryBytes != 0 && s.MemoryBytes < 4<<20 {
		return fmt.Errorf("container %s: memory limit %d bytes is below the 4 MiB minimum", s.ID, s.MemoryBytes)
	}
	if !validCgroupPath(s.CgroupParent) {
		return fmt.Errorf("container %s: cgroup parent %q must be a relative path like berth/tenants/acme", s.ID, s.CgroupParent)
	}
	if s.NetNSPath != "" && !filepath.IsAbs(s.NetNSPath) {
		return fmt.Errorf("container %s: netns path %q must be absolute", s.ID, s.NetNSPath)
	}
	if s.ContainerIP != "" {
		if _, err := netip.ParseAddr(s.ContainerIP); err != nil {
			return fmt.Errorf("container %s: container ip %q is not an IP address", s.ID, s.ContainerIP)
		}
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		if p.Proto != "" && p.Proto != "tcp" {
			return fmt.Errorf("container %s: port %d: protocol %q is not supported, use tcp", s.ID, p.HostPort, p.Proto)
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return fmt.Errorf("container %s: port %d->%d: ports must be 1-65535", s.ID, p.HostPort, p.ContainerPort)
		}
		if p.HostIP != "" {
			if _, err := netip.ParseAddr(p.HostIP); err != nil {
				return fmt.Errorf("container %s: port %d: host ip %q is not an IP address", s.ID, p.HostPort, p.HostIP)
			}
		}
		key := fmt.Sprintf("%s:%d", p.HostIP, p.HostPort)
		if seen[key] {
			return fmt.Errorf("container %s: host port %s is listed twice", s.ID, key)
		}
		seen[key] = true
	}
	for _, m := range s.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return fmt.Errorf("container %s: mount %q -> %q: source and target must be absolute", s.ID, m.Source, m.Target)
		}
	}
	return nil
}

// CgroupPath is the container's cgroup, relative to each hierarchy's root.
func (s Spec) CgroupPath() string {
	parent := s.CgroupParent
	if parent == "" {
		parent = DefaultCgroupParent
	}
	return "/" + parent + "/" + s.ID
}
