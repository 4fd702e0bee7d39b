package runtime

import (
	"os"
	goruntime "runtime"
	"syscall"

	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultCapabilities is Docker's default set: enough for ordinary services
// (bind low ports, change file owners, switch users) and nothing that
// administers the host (no SYS_ADMIN, NET_ADMIN, SYS_MODULE, SYS_PTRACE ...).
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// deniedSyscalls answer EPERM inside containers. A deny-list (default allow)
// keeps every ordinary program working while closing the kernel surfaces
// containers have no business touching:
//   - kernel code and boot: kexec_load, kexec_file_load, init_module,
//     finit_module, delete_module, create_module, reboot, swapon, swapoff, acct
//   - kernel keyring (not namespaced): keyctl, add_key, request_key
//   - tracing and kernel introspection: bpf, perf_event_open, ptrace,
//     process_vm_readv, process_vm_writev, lookup_dcookie, syslog, kcmp
//   - file-handle escapes: open_by_handle_at, name_to_handle_at
//   - userfaultfd (exploit primitive), iopl, ioperm
//   - new namespaces (user namespaces would hand back the dropped caps):
//     unshare, setns
//   - host clock: settimeofday, clock_settime, clock_adjtime, adjtimex, stime
//   - obsolete or host-wide: quotactl, nfsservctl, uselib, _sysctl, ustat,
//     sysfs, vhangup, get_kernel_syms, query_module
//
// mount, umount2, pivot_root and the new mount API are already gated by
// CAP_SYS_ADMIN, which containers do not have; clone3 stays allowed because
// libc falls back to clone only on ENOSYS.
var deniedSyscalls = []string{
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"create_module", "reboot", "swapon", "swapoff", "acct",
	"keyctl", "add_key", "request_key",
	"bpf", "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev",
	"lookup_dcookie", "syslog", "kcmp",
	"open_by_handle_at", "name_to_handle_at",
	"userfaultfd", "iopl", "ioperm",
	"unshare", "setns",
	"settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime",
	"quotactl", "nfsservctl", "uselib", "_sysctl", "ustat", "sysfs", "vhangup",
	"get_kernel_syms", "query_module",
}

// seccompArchitectures lists the native ABI plus the compat ABIs of the same
// machine: a deny-list that only covers the native ABI is bypassed by calling
// the 32-bit entry points.
func seccompArchitectures() []specs.Arch {
	switch goruntime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil
}

var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// OCISpec turns s (defaults applied, validated) into the OCI runtime spec the
// shim hands to libcontainer. It is exported so that benchmarks can give runc
// an identical bundle.
func OCISpec(s Spec) *specs.Spec {
	s = s.WithDefaults()
	noNewPrivileges := true
	caps := append([]string(nil), defaultCapabilities...)
	eperm := uint(syscall.EPERM)
	cpuPeriod := uint64(100000)
	pids := s.PidsMax

	sp := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: s.Rootfs, Readonly: s.ReadOnlyRoot},
		Hostname: s.Hostname,
		// No rlimits: containers inherit the shim's, which the agent's unit
		// sets (LimitNOFILE=...); a fixed number here fails on hosts with a
		// lower hard limit.
		Process: &specs.Process{
			Args:            s.Args,
			Env:             s.Env,
			Cwd:             s.Cwd,
			NoNewPrivileges: noNewPrivileges,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath:   s.CgroupPath(),
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: s.NetNSPath},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			Resources: &specs.LinuxResources{
				// Deny every device; libcontainer adds the standard
				// null/zero/full/tty/random/urandom/pts set back.
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Pids:    &specs.LinuxPids{Limit: &pids},
			},
			Seccomp: &specs.LinuxSeccomp{
				DefaultAction: specs.ActAllow,
				Architectures: seccompArchitectures(),
				Syscalls: []specs.LinuxSyscall{{
					Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm,
				}},
			},
		},
	}
	if cgroups.IsCgroup2UnifiedMode() {
		// A cgroup namespace hides the host's tree; on v1 hosts libcontainer
		// would have to emulate it with bind mounts, so only do it on v2.
		sp.Linux.Namespaces = append(sp.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		sp.Mounts = append(sp.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
	}
	if s.CPUMillis > 0 {
		quota := s.CPUMillis * 100 // microseconds per 100 ms period
		sp.Linux.Resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &cpuPeriod}
	}
	if s.MemoryBytes > 0 {
		limit := s.MemoryBytes
		sp.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		if swapAccounting() {
			// memory+swap == memory: no swap, so the limit really OOM-kills.
			swap := s.MemoryBytes
			sp.Linux.Resources.Memory.Swap = &swap
		}
	}
	for _, m := range s.Mounts {
		opts := []string{"rbind", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		sp.Mounts = append(sp.Mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
	}
	return sp
}

// swapAccounting tells whether a swap limit can be written: always on v2
// (libcontainer ignores a missing memory.swap.max there), on v1 only when
// the kernel accounts swap (memory.memsw.* exists).
func swapAccounting() bool {
	if cgroups.IsCgroup2UnifiedMode() {
		return true
	}
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
	return err == nil
}
