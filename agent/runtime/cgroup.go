package runtime

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/cgroups/fscommon"
)

// unifiedRoot is where cgroup v2 is mounted on berth nodes.
const unifiedRoot = "/sys/fs/cgroup"

// cgroupManager opens the cgroup at path (relative to each hierarchy's root)
// with the file-based driver, on v1 or v2, without creating anything.
func cgroupManager(path string, res *cgroups.Resources) (cgroups.Manager, error) {
	if res == nil {
		res = &cgroups.Resources{}
	}
	cg := &cgroups.Cgroup{Path: "/" + strings.Trim(path, "/"), Resources: res}
	if cgroups.IsCgroup2UnifiedMode() {
		m, err := fs2.NewManager(cg, filepath.Join(unifiedRoot, cg.Path))
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", cg.Path, err)
		}
		return m, nil
	}
	m, err := fs.NewManager(cg, nil)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", cg.Path, err)
	}
	return m, nil
}

// cgroupStats samples usage of the cgroup at path.
func cgroupStats(path string) (Stats, error) {
	m, err := cgroupManager(path, nil)
	if err != nil {
		return Stats{}, err
	}
	if !m.Exists() {
		return Stats{}, fmt.Errorf("cgroup %s does not exist: %w", path, os.ErrNotExist)
	}
	cs, err := m.GetStats()
	if err != nil {
		return Stats{}, fmt.Errorf("read cgroup %s stats: %w", path, err)
	}
	st := Stats{
		Time:          time.Now(),
		CPUUsageNanos: cs.CpuStats.CpuUsage.TotalUsage,
		MemoryBytes:   cs.MemoryStats.Usage.Usage,
		PidsCurrent:   cs.PidsStats.Current,
	}
	// Both drivers report "no limit" as a huge number; say 0 (= unlimited).
	if l := cs.MemoryStats.Usage.Limit; l < math.MaxInt64/2 {
		st.MemoryLimitBytes = l
	}
	for _, e := range cs.BlkioStats.IoServiceBytesRecursive {
		switch e.Op {
		case "Read", "read":
			st.IOReadBytes += e.Value
		case "Write", "write":
			st.IOWriteBytes += e.Value
		}
	}
	return st, nil
}

// OOMKillCount returns how many processes the kernel's OOM killer killed in
// the cgroup at path (v1: memory.oom_control, v2: memory.events; both need
// kernel >= 4.13). The shim reads it before it destroys the cgroup.
func OOMKillCount(path string) (uint64, error) {
	path = "/" + strings.Trim(path, "/")
	if cgroups.IsCgroup2UnifiedMode() {
		return fs2.OOMKillCount(filepath.Join(unifiedRoot, path))
	}
	mnt, err := cgroups.FindCgroupMountpoint("", "memory")
	if err != nil {
		return 0, fmt.Errorf("find memory cgroup: %w", err)
	}
	n, err := fscommon.GetValueByKey(filepath.Join(mnt, path), "memory.oom_control", "oom_kill")
	if err != nil {
		return 0, fmt.Errorf("read oom kill count of %s: %w", path, err)
	}
	return n, nil
}

func validGroup(parent string) error {
	if !validCgroupPath(parent) {
		return fmt.Errorf("cgroup group %q must be a relative path like berth/tenants/acme", parent)
	}
	return nil
}

// SetGroupLimits creates the group parent (e.g. "berth/tenants/acme") when
// needed and caps the CPU and memory of everything below it. 0 = unlimited.
// Containers placed with CgroupParent = parent share these limits.
func SetGroupLimits(parent string, cpuMillis, memoryBytes int64) error {
	if err := validGroup(parent); err != nil {
		return err
	}
	if cpuMillis < 0 || memoryBytes < 0 {
		return fmt.Errorf("cgroup group %s: limits must not be negative", parent)
	}
	res := &cgroups.Resources{CpuPeriod: 100000, CpuQuota: -1, Memory: -1}
	if cpuMillis > 0 {
		res.CpuQuota = cpuMillis * 100
	}
	if memoryBytes > 0 {
		res.Memory = memoryBytes
	}
	m, err := cgroupManager(parent, res)
	if err != nil {
		return err
	}
	// Apply(-1) creates the directories (and on v2 enables the controllers
	// in the parents) without moving any process.
	if err := m.Apply(-1); err != nil {
		return fmt.Errorf("create cgroup group %s: %w", parent, err)
	}
	if err := m.Set(res); err != nil {
		return fmt.Errorf("set limits of cgroup group %s: %w", parent, err)
	}
	return nil
}

// GroupUsage reads the CPU time used so far and the current memory use of
// the group parent and everything below it.
func GroupUsage(parent string) (cpuNanos uint64, memoryBytes uint64, err error) {
	if err := validGroup(parent); err != nil {
		return 0, 0, err
	}
	st, err := cgroupStats(parent)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, 0, fmt.Errorf("cgroup group %s does not exist: set its limits first", parent)
		}
		return 0, 0, err
	}
	return st.CPUUsageNanos, st.MemoryBytes, nil
}

// removeCgroup kills what is left in the cgroup at path and removes it; used
// when a shim died without cleaning up.
func removeCgroup(path string) error {
	m, err := cgroupManager(path, nil)
	if err != nil {
		return err
	}
	if !m.Exists() {
		return nil
	}
	if pids, err := m.GetAllPids(); err == nil {
		for _, pid := range pids {
			_ = killPid(pid)
		}
	}
	var lastErr error
	for range 50 {
		if lastErr = m.Destroy(); lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", path, lastErr)
}
