package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Package-wide fixtures built once in TestMain.
var (
	shimBinary string // berth-shim built from ../cmd/berth-shim
	baseRootfs string // read-only busybox root shared by tests
)

const testCgroupParent = "berth-rt-test"

func TestMain(m *testing.M) {
	if os.Getenv("BERTH_RT_TEST_AGENT") != "" {
		fakeAgent() // never returns
	}
	if os.Geteuid() != 0 {
		fmt.Println("skipping agent/runtime tests: they run real containers and need root")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "berth-runtime-test")
	if err != nil {
		panic(err)
	}
	shimBinary = filepath.Join(dir, "berth-shim")
	build := exec.Command("go", "build", "-tags", "seccomp", "-o", shimBinary, "github.com/berth-os/berth/agent/cmd/berth-shim")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build berth-shim: %v\n%s", err, out)
		os.Exit(1)
	}
	baseRootfs = filepath.Join(dir, "rootfs")
	if err := makeBusyboxRootfs(baseRootfs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	removeCgroupTree(testCgroupParent)
	os.RemoveAll(dir)
	os.Exit(code)
}

// makeBusyboxRootfs makes a minimal root: /bin/busybox and one symlink per
// applet, plus the mount points the runtime needs.
func makeBusyboxRootfs(root string) error {
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "www"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	src, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static is needed for these tests: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), src, 0o755); err != nil {
		return err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			return err
		}
	}
	return nil
}

// removeCgroupTree removes a test cgroup group (deepest first) on v1 and v2.
func removeCgroupTree(group string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, r := range roots {
		top := filepath.Join(r, group)
		var dirs []string
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			syscall.Rmdir(dirs[i])
		}
	}
}

var idCounter atomic.Int64

// testID makes a unique valid container ID for this test run.
func testID(t testing.TB) string {
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("%s-%d-%d", strings.Trim(name, "-"), os.Getpid(), idCounter.Add(1))
}

func newTestShim(t testing.TB, root string) *Shim {
	t.Helper()
	if root == "" {
		root = t.TempDir()
	}
	r, err := NewShim(ShimOptions{ShimPath: shimBinary, Root: root, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// testSpec is a container spec on the shared read-only root.
func testSpec(t testing.TB, args ...string) Spec {
	return Spec{
		ID:           testID(t),
		Rootfs:       baseRootfs,
		Args:         args,
		ReadOnlyRoot: true,
		CgroupParent: testCgroupParent,
		StopTimeout:  500 * time.Millisecond,
	}
}

// run starts s and registers its removal.
func run(t *testing.T, r *Shim, s Spec) State {
	t.Helper()
	st, err := r.Run(context.Background(), s)
	t.Cleanup(func() {
		if err := r.Remove(context.Background(), s.ID); err != nil {
			t.Errorf("remove %s: %v", s.ID, err)
		}
	})
	if err != nil {
		t.Fatalf("run %s: %v", s.ID, err)
	}
	return st
}

// waitExited polls until the container has exited.
func waitExited(t *testing.T, r *Shim, id string, within time.Duration) State {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := r.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		if st.Status == StatusExited {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s after %s; log:\n%s", id, st.Status, within, readLog(t, r, id))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readLog(t *testing.T, r *Shim, id string) string {
	data, _ := os.ReadFile(r.LogPath(id))
	return string(data)
}

// logTexts parses the log and returns the text of each line of one stream,
// failing the test on a malformed line.
func logTexts(t *testing.T, path, stream string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ts, rest, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			t.Fatalf("log line without timestamp: %q", sc.Text())
		}
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Fatalf("log line %q: bad timestamp: %v", sc.Text(), err)
		}
		s, text, _ := strings.Cut(rest, " ")
		if s != "stdout" && s != "stderr" {
			t.Fatalf("log line %q: bad stream %q", sc.Text(), s)
		}
		if s == stream {
			out = append(out, text)
		}
	}
	return out
}

func TestRunEchoWritesLog(t *testing.T) {
	r := newTestShim(t, "")
	s := testSpec(t, "sh", "-c", "echo hello world; echo oops >&2; printf 'no newline'")
	s.Labels = map[string]string{"tenant": "acme"}
	run(t, r, s)
	st := waitExited(t, r, s.ID, 10*time.Second)
	if st.ExitCode != 0 || st.Error != "" || st.OOMKilled {
		t.Fatalf("state = %+v, want clean exit", st)
	}
	if st.Labels["tenant"] != "acme" {
		t.Errorf("labels = %v, want tenant=acme", st.Labels)
	}
	if st.StartedAt.IsZero() || st.FinishedAt.Before(st.StartedAt) {
		t.Errorf("times: started %v finished %v", st.StartedAt, st.FinishedAt)
	}
	out := logTexts(t, r.LogPath(s.ID), "stdout")
	if strings.Join(out, "|") != "hello world|no newline" {
		t.Errorf("stdout lines = %q", out)
	}
	if errs := logTexts(t, r.LogPath(s.ID), "stderr"); len(errs) != 1 || errs[0] != "oops" {
		t.Errorf("stderr lines = %q", errs)
	}
}

func TestExitCodeKeptAcrossShimObjects(t *testing.T) {
	r := newTestShim(t, "")
	s := testSpec(t, "sh", "-c", "exit 7")
	run(t, r, s)
	if st := waitExited(t, r, s.ID, 10*time.Second); st.ExitCode != 7 {
		t.Fatalf("exit code = %d, want 7", st.ExitCode)
	}
	// A new agent on the same root sees the same record.
	r2 := newTestShim(t, r.Root())
	st, err := r2.Get(context.Background(), s.ID)
	if err != nil || st.ExitCode != 7 || st.Status != StatusExited {
		t.Fatalf("after re-open: %+v, %v", st, err)
	}
}

// fakeAgent is the test binary re-executed as an agent process: it runs one
// container and then waits to be killed.
func fakeAgent() {
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv("BERTH_RT_TEST_SPEC")), &s); err != nil {
		fmt.Println("bad spec:", err)
		os.Exit(1)
	}
	r, err := NewShim(ShimOptions{ShimPath: os.Getenv("BERTH_RT_TEST_SHIM"), Root: os.Getenv("BERTH_RT_TEST_AGENT")})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if _, err := r.Run(context.Background(), s); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("running")
	select {}
}

func TestAgentDeathAdoptsContainer(t *testing.T) {
	root := t.TempDir()
	s := testSpec(t, "sh", "-c", "while [ ! -e /gate/open ]; do sleep 0.05; done; echo done; exit 5")
	gate := t.TempDir()
	s.Mounts = []Mount{{Source: gate, Target: "/gate", ReadOnly: true}}
	specJSON, _ := json.Marshal(s)
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), "BERTH_RT_TEST_AGENT="+root, "BERTH_RT_TEST_SPEC="+string(specJSON), "BERTH_RT_TEST_SHIM="+shimBinary)
	stdout, _ := agent.StdoutPipe()
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "running" {
		agent.Process.Kill()
		agent.Wait()
		t.Fatalf("fake agent said %q", line)
	}
	// The agent dies hard; its container must not notice.
	agent.Process.Signal(syscall.SIGKILL)
	agent.Wait()

	r := newTestShim(t, root)
	t.Cleanup(func() { r.Remove(context.Background(), s.ID) })
	list, err := r.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != s.ID || list[0].Status != StatusRunning || list[0].Pid == 0 {
		t.Fatalf("list after agent death = %+v, want %s running", list, s.ID)
	}
	if err := syscall.Kill(list[0].Pid, 0); err != nil {
		t.Fatalf("container pid %d not alive: %v", list[0].Pid, err)
	}
	if err := os.WriteFile(filepath.Join(gate, "open"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st := waitExited(t, r, s.ID, 10*time.Second)
	if st.ExitCode != 5 || st.Error != "" {
		t.Fatalf("state = %+v, want exit 5", st)
	}
	if out := logTexts(t, r.LogPath(s.ID), "stdout"); len(out) != 1 || out[0] != "done" {
		t.Errorf("stdout = %q", out)
	}
}

func TestMonitorDeathReported(t *testing.T) {
	r := newTestShim(t, "")
	s := testSpec(t, "sleep", "30")
	st := run(t, r, s)
	pidData, err := os.ReadFile(filepath.Join(r.Root(), s.ID, ShimPidFile))
	if err != nil {
		t.Fatal(err)
	}
	shimPid, _ := strconv.Atoi(strings.TrimSpace(string(pidData)))
	syscall.Kill(shimPid, syscall.SIGKILL)
	for range 200 {
		if _, alive := r.shimPid(s.ID); !alive {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, err := r.Get(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusExited || got.Error != "monitor died" {
		t.Fatalf("state after shim death = %+v", got)
	}
	// Remove must still clean up the orphaned container.
	if err := r.Remove(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if syscall.Kill(st.Pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("container pid %d survived Remove", st.Pid)
}

func TestMemoryLimitOOMKilled(t *testing.T) {
	r := newTestShim(t, "")
	// dd allocates a 64 MiB buffer and fills it from /dev/zero.
	s := testSpec(t, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	s.MemoryBytes = 16 << 20
	run(t, r, s)
	st := waitExited(t, r, s.ID, 20*time.Second)
	if !st.OOMKilled || st.Signal != "SIGKILL" {
		t.Fatalf("state = %+v, want OOM-killed with SIGKILL", st)
	}

	// Control: the same program with enough memory is not killed.
	s2 := testSpec(t, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	s2.MemoryBytes = 256 << 20
	run(t, r, s2)
	if st := waitExited(t, r, s2.ID, 20*time.Second); st.OOMKilled || st.ExitCode != 0 {
		t.Fatalf("control state = %+v, want clean exit", st)
	}
}

func TestPidsLimitCapsForkBomb(t *testing.T) {
	r := newTestShim(t, "")
	// The subshell dies when fork fails; its sleeps stay and hold the pids.
	s := testSpec(t, "sh", "-c", "(for i in $(seq 1 100); do sleep 30 & done); echo forked; sleep 30")
	s.PidsMax = 16
	run(t, r, s)
	var stats Stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if stats, err = r.Stats(context.Background(), s.ID); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(readLog(t, r, s.ID), "forked") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stats.PidsCurrent < 10 || stats.PidsCurrent > 16 {
		t.Fatalf("pids current = %d, want the fork bomb capped at 16", stats.PidsCurrent)
	}
	if log := readLog(t, r, s.ID); !strings.Contains(log, "fork") {
		t.Errorf("log does not mention failed forks:\n%s", log)
	}
}

func TestReadOnlyRoot(t *testing.T) {
	r := newTestShim(t, "")
	s := testSpec(t, "sh", "-c", "touch /written")
	run(t, r, s)
	st := waitExited(t, r, s.ID, 10*time.Second)
	if st.ExitCode == 0 || !strings.Contains(readLog(t, r, s.ID), "Read-only file system") {
		t.Fatalf("write to read-only root: exit %d, log:\n%s", st.ExitCode, readLog(t, r, s.ID))
	}
	if _, err := os.Stat(filepath.Join(baseRootfs, "written")); err == nil {
		t.Fatal("file appeared in the read-only root")
	}

	writable := filepath.Join(t.TempDir(), "rootfs")
	if err := makeBusyboxRootfs(writable); err != nil {
		t.Fatal(err)
	}
	s2 := testSpec(t, "sh", "-c", "echo hi > /written")
	s2.Rootfs, s2.ReadOnlyRoot = writable, false
	run(t, r, s2)
	if st := waitExited(t, r, s2.ID, 10*time.Second); st.ExitCode != 0 {
		t.Fatalf("write to writable root failed: %+v\n%s", st, readLog(t, r, s2.ID))
	}
	if data, err := os.ReadFile(filepath.Join(writable, "written")); err != nil || string(data) != "hi\n" {
		t.Fatalf("written file = %q, %v", data, err)
	}
}

// capMask computes the capability bitmask of Docker's default set.
func capMask() uint64 {
	numbers := map[string]uint{"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
		"CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
		"CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
	var m uint64
	for _, c := range defaultCapabilities {
		m |= 1 << numbers[c]
	}
	return m
}

func TestCapabilitiesAndSeccomp(t *testing.T) {
	r := newTestShim(t, "")
	script := `grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
hostname other-name && echo HOSTNAME-CHANGED
ip link add dummy0 type dummy && echo LINK-ADDED
unshare -U true && echo UNSHARE-WORKED
touch /dev/shm/f && chown 1:1 /dev/shm/f && echo CHOWN-WORKED
echo END`
	s := testSpec(t, "sh", "-c", script)
	run(t, r, s)
	waitExited(t, r, s.ID, 10*time.Second)
	log := readLog(t, r, s.ID)
	out := strings.Join(logTexts(t, r.LogPath(s.ID), "stdout"), "\n")
	want := fmt.Sprintf("%016x", capMask())
	for _, line := range []string{"CapEff:\t" + want, "CapBnd:\t" + want, "NoNewPrivs:\t1", "Seccomp:\t2", "CHOWN-WORKED", "END"} {
		if !strings.Contains(out, line) {
			t.Errorf("stdout lacks %q:\n%s", line, out)
		}
	}
	for _, bad := range []string{"HOSTNAME-CHANGED", "LINK-ADDED", "UNSHARE-WORKED"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s: a privileged operation succeeded:\n%s", bad, log)
		}
	}
	// unshare -U needs no capability at all, so EPERM here comes from seccomp;
	// check the host allows it so the assertion above means something.
	if err := exec.Command("/bin/busybox", "unshare", "-U", "true").Run(); err != nil {
		t.Logf("host refuses unprivileged user namespaces too (%v): seccomp check is weaker", err)
	} else if !strings.Contains(log, "unshare") || !strings.Contains(log, "Operation not permitted") {
		t.Errorf("unshare failure not EPERM:\n%s", log)
	}
}

func TestStatsAndGroupLimits(t *testing.T) {
	group := testCgroupParent + "/tenant-" + strconv.Itoa(os.Getpid())
	if err := SetGroupLimits(group, 1500, 512<<20); err != nil {
		t.Fatal(err)
	}
	r := newTestShim(t, "")
	s := testSpec(t, "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/dev/shm/f bs=1M count=8 2>/dev/null; echo warm; sleep 30")
	s.MemoryBytes = 64 << 20
	s.CPUMillis = 1000
	s.CgroupParent = group
	run(t, r, s)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(readLog(t, r, s.ID), "warm") {
		if time.Now().After(deadline) {
			t.Fatal("container never warmed up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := r.Stats(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUUsageNanos == 0 || st.MemoryBytes < 8<<20 || st.MemoryLimitBytes != 64<<20 || st.PidsCurrent < 1 {
		t.Fatalf("stats = %+v, want cpu > 0, memory >= 8 MiB (shm file), limit 64 MiB, >= 1 pid", st)
	}
	cpu, mem, err := GroupUsage(group)
	if err != nil {
		t.Fatal(err)
	}
	if cpu < st.CPUUsageNanos || mem < 8<<20 {
		t.Fatalf("group usage cpu=%d mem=%d, want at least the container's (%d, %d)", cpu, mem, st.CPUUsageNanos, st.MemoryBytes)
	}
	checkGroupLimitFiles(t, group, 150000, 512<<20)
	if err := SetGroupLimits(group, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := GroupUsage("../etc"); err == nil {
		t.Fatal("GroupUsage accepted a path escaping the cgroup root")
	}
}

// checkGroupLimitFiles reads the kernel's view of the group limits.
func checkGroupLimitFiles(t *testing.T, group string, quota int64, mem int64) {
	t.Helper()
	read := func(p string) string {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil { // v2
		if got := read(filepath.Join("/sys/fs/cgroup", group, "cpu.max")); got != fmt.Sprintf("%d 100000", quota) {
			t.Errorf("cpu.max = %q", got)
		}
		if got := read(filepath.Join("/sys/fs/cgroup", group, "memory.max")); got != strconv.FormatInt(mem, 10) {
			t.Errorf("memory.max = %q", got)
		}
		return
	}
	if got := read(filepath.Join("/sys/fs/cgroup/cpu", group, "cpu.cfs_quota_us")); got != strconv.FormatInt(quota, 10) {
		t.Errorf("cpu.cfs_quota_us = %q, want %d", got, quota)
	}
	if got := read(filepath.Join("/sys/fs/cgroup/memory", group, "memory.limit_in_bytes")); got != strconv.FormatInt(mem, 10) {
		t.Errorf("memory.limit_in_bytes = %q, want %d", got, mem)
	}
}

func TestStopGracefulAndForced(t *testing.T) {
	r := newTestShim(t, "")
	graceful := testSpec(t, "sh", "-c", "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done")
	stubborn := testSpec(t, "sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done")
	run(t, r, graceful)
	run(t, r, stubborn)
	for _, id := range []string{graceful.ID, stubborn.ID} {
		for !strings.Contains(readLog(t, r, id), "up") {
			time.Sleep(10 * time.Millisecond)
		}
	}
	start := time.Now()
	if err := r.Stop(context.Background(), graceful.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("graceful stop took %s", d)
	}
	st, _ := r.Get(context.Background(), graceful.ID)
	if st.Status != StatusExited || st.ExitCode != 0 || st.Signal != "" || !strings.Contains(readLog(t, r, graceful.ID), "bye") {
		t.Fatalf("graceful stop: %+v", st)
	}

	start = time.Now()
	if err := r.Stop(context.Background(), stubborn.ID, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st, _ = r.Get(context.Background(), stubborn.ID)
	if st.Status != StatusExited || st.Signal != "SIGKILL" || st.ExitCode != 137 {
		t.Fatalf("forced stop: %+v", st)
	}
	if took < 300*time.Millisecond {
		t.Errorf("forced stop took %s, before the 300ms grace period ended", took)
	}
	// Idempotent.
	if err := r.Stop(context.Background(), stubborn.ID, time.Second); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

// testNetns makes a named netns with a veth pair: host side 10.199.N.1/30,
// container side 10.199.N.2/30.
func testNetns(t *testing.T) (path, containerIP string) {
	t.Helper()
	n := os.Getpid()%200 + 20
	name := fmt.Sprintf("berth-rt-%d", os.Getpid())
	host, peer := fmt.Sprintf("brt%dh", n), fmt.Sprintf("brt%dc", n)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
	exec.Command("ip", "link", "del", host).Run()
	ip("netns", "add", name)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", host).Run()
		exec.Command("ip", "netns", "del", name).Run()
	})
	ip("link", "add", host, "type", "veth", "peer", "name", peer)
	ip("link", "set", peer, "netns", name)
	ip("addr", "add", fmt.Sprintf("10.199.%d.1/30", n), "dev", host)
	ip("link", "set", host, "up")
	ip("-n", name, "addr", "add", fmt.Sprintf("10.199.%d.2/30", n), "dev", peer)
	ip("-n", name, "link", "set", peer, "up")
	ip("-n", name, "link", "set", "lo", "up")
	return "/run/netns/" + name, fmt.Sprintf("10.199.%d.2", n)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// httpGet fetches url, retrying while the server in the container starts.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for range 100 {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(body)
			}
			lastErr = fmt.Errorf("status %s", resp.Status)
		} else {
			lastErr = err
		}
		time.Sleep(30 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, lastErr)
	return ""
}

func TestPortProxy(t *testing.T) {
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from the container\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newTestShim(t, "")

	t.Run("veth", func(t *testing.T) {
		netns, ip := testNetns(t)
		port := freePort(t)
		s := testSpec(t, "httpd", "-f", "-p", "8080", "-h", "/www")
		s.NetNSPath, s.ContainerIP = netns, ip
		s.Mounts = []Mount{{Source: www, Target: "/www", ReadOnly: true}}
		s.Ports = []Port{{HostIP: "127.0.0.1", HostPort: port, ContainerPort: 8080}}
		run(t, r, s)
		if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); body != "hello from the container\n" {
			t.Fatalf("body = %q", body)
		}
	})
	t.Run("loopback-only", func(t *testing.T) {
		port := freePort(t)
		s := testSpec(t, "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www")
		s.Mounts = []Mount{{Source: www, Target: "/www", ReadOnly: true}}
		s.Ports = []Port{{HostIP: "127.0.0.1", HostPort: port, ContainerPort: 8080}}
		run(t, r, s)
		if body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); body != "hello from the container\n" {
			t.Fatalf("body = %q", body)
		}
	})
	t.Run("port-in-use", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		s := testSpec(t, "true")
		s.Ports = []Port{{HostIP: "127.0.0.1", HostPort: l.Addr().(*net.TCPAddr).Port, ContainerPort: 80}}
		_, err = r.Run(context.Background(), s)
		defer r.Remove(context.Background(), s.ID)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("err = %v, want address already in use", err)
		}
	})
}

func TestLogRotation(t *testing.T) {
	r := newTestShim(t, "")
	s := testSpec(t, "sh", "-c", "for i in $(seq 1 300); do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done")
	s.LogMaxBytes = 4096
	run(t, r, s)
	waitExited(t, r, s.ID, 10*time.Second)
	cur := logTexts(t, r.LogPath(s.ID), "stdout")
	old := logTexts(t, r.LogPath(s.ID)+".1", "stdout")
	if len(cur) == 0 || !strings.HasPrefix(cur[len(cur)-1], "line-300-") {
		t.Fatalf("current log ends with %q", cur)
	}
	if len(old) == 0 {
		t.Fatal("no rotated log")
	}
	for _, p := range []string{r.LogPath(s.ID), r.LogPath(s.ID) + ".1"} {
		if st, _ := os.Stat(p); st.Size() > 4096 {
			t.Errorf("%s is %d bytes, over the 4096 limit", p, st.Size())
		}
	}
	if len(cur)+len(old) >= 300 {
		t.Errorf("kept %d lines, want older ones dropped", len(cur)+len(old))
	}
}

func TestBadInput(t *testing.T) {
	r := newTestShim(t, "")
	ctx := context.Background()
	cases := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"bad id", func(s *Spec) { s.ID = "Bad/ID" }, "invalid container id"},
		{"missing rootfs", func(s *Spec) { s.Rootfs = "/nonexistent/rootfs" }, "is not a directory"},
		{"relative rootfs", func(s *Spec) { s.Rootfs = "rootfs" }, "must be an absolute path"},
		{"no args", func(s *Spec) { s.Args = nil }, "args must name the program"},
		{"bad cgroup parent", func(s *Spec) { s.CgroupParent = "../escape" }, "cgroup parent"},
		{"udp port", func(s *Spec) { s.Ports = []Port{{HostPort: 53, ContainerPort: 53, Proto: "udp"}} }, "not supported"},
		{"missing binary", func(s *Spec) { s.Args = []string{"no-such-program"} }, "no-such-program"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := testSpec(t, "true")
			c.edit(&s)
			_, err := r.Run(ctx, s)
			defer r.Remove(ctx, s.ID)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line containing %q", err, c.want)
			}
		})
	}
	// The start failure stays recorded.
	s := testSpec(t, "no-such-program")
	_, err := r.Run(ctx, s)
	defer r.Remove(ctx, s.ID)
	if err == nil || !strings.Contains(err.Error(), "executable file not found") {
		t.Fatalf("err = %v", err)
	}
	st, err := r.Get(ctx, s.ID)
	if err != nil || st.Status != StatusExited || !strings.Contains(st.Error, "no-such-program") {
		t.Fatalf("recorded state = %+v, %v", st, err)
	}
	// Same ID twice.
	if _, err := r.Run(ctx, s); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate id: err = %v", err)
	}
	if _, err := r.Get(ctx, "unknown"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if _, err := r.Stats(ctx, "unknown"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stats unknown: %v", err)
	}
	if err := r.Remove(ctx, "unknown"); err != nil {
		t.Fatalf("remove unknown: %v", err)
	}
	if _, err := NewShim(ShimOptions{ShimPath: "/nonexistent/berth-shim", Root: t.TempDir()}); err == nil {
		t.Fatal("NewShim accepted a missing shim binary")
	}
}
