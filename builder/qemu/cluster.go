package qemu

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/berth-os/berth/internal/atomicfile"
)

// A cluster is N VMs on one bridge inside a network namespace of their own
// (berth-cl-NAME): the host's network is never touched, and the host
// reaches the nodes only through that namespace (ip netns exec, or
// Cluster.DialContext from Go). qemu runs daemonized, so the VMs outlive
// the process that started them (make cluster); everything a later
// process needs (down, status) is in the cluster's directory.

// DefaultClusterRoot holds one directory per cluster. It is on disk, not
// on /run (often a small tmpfs): the disk overlays grow by hundreds of MiB.
const DefaultClusterRoot = "/var/tmp/berth-cluster"

// Addresses of the cluster network: the bridge is .1, node N is .1N.
const (
	BridgeIPv4  = "10.240.0.1"
	BridgeIPv6  = "fd00:240::1"
	bridgeDev   = "br0"
	bridgeMAC   = "02:42:f0:00:00:01"
	maxNodes    = 9
	netnsPrefix = "berth-cl-"
	clusterFile = "cluster.json"
	sshKeyFile  = "id_ed25519"
)

// KernelStarted matches the kernel's first console line.
var KernelStarted = regexp.MustCompile(`Linux version `)

var clusterName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,14}$`)

// ClusterConfig describes a cluster to create.
type ClusterConfig struct {
	Name      string // [a-z0-9-], up to 15 characters; the namespace is berth-cl-NAME
	Image     string // the built image (.raw or .qcow2); each node boots an overlay of it
	Nodes     int    // 1..9
	Dir       string // default DefaultClusterRoot/NAME; must not exist
	MemoryMiB int    // per VM; default 768
	CPUs      int    // per VM; default 1
	DiskBytes int64  // each overlay's size; default 3 GiB
	Accel     Accel  // default: DetectAccel's, decided once at creation
}

// Cluster is a created cluster; its exported fields are saved as
// cluster.json in Dir.
type Cluster struct {
	Name      string         `json:"name"`
	Netns     string         `json:"netns"`
	Dir       string         `json:"dir"`
	Image     string         `json:"image"`
	Secret    string         `json:"secret"` // the agents' join secret (32 hex)
	MemoryMiB int            `json:"memory_mib"`
	CPUs      int            `json:"cpus"`
	Accel     Accel          `json:"accel"` // kvm or tcg, for every boot of every node
	Nodes     []*ClusterNode `json:"nodes"`

	coldReboot bool // see SetColdReboot
}

// ClusterNode is one VM of a cluster.
type ClusterNode struct {
	Name string `json:"name"` // node-N
	IPv4 string `json:"ipv4"`
	IPv6 string `json:"ipv6"`
	MAC  string `json:"mac"`
	Tap  string `json:"tap"`
	Dir  string `json:"dir"`

	// Set by Start in this process: when qemu started and where this
	// boot's output begins in the serial log; kernelAt when the console
	// showed the kernel (a watcher started by Start sets it).
	mu        sync.Mutex
	started   time.Time
	logOffset int64
	kernelAt  time.Time
	ssh       *ssh.Client // the kept connection (Cluster.SSH)
	// life serialises starting and killing the VM, so that a restart
	// after a guest reboot never revives a node just killed.
	life   sync.Mutex
	killed bool // by Kill, since the last Start
}

// Paths of a node's files.
func (n *ClusterNode) Disk() string          { return filepath.Join(n.Dir, "disk.qcow2") }
func (n *ClusterNode) Seed() string          { return filepath.Join(n.Dir, "seed.img") }
func (n *ClusterNode) NodeYAML() string      { return filepath.Join(n.Dir, "node.yaml") }
func (n *ClusterNode) SerialLog() string     { return filepath.Join(n.Dir, "serial.log") }
func (n *ClusterNode) ConsoleSocket() string { return filepath.Join(n.Dir, "console.sock") }
func (n *ClusterNode) pidFile() string       { return filepath.Join(n.Dir, "qemu.pid") }
func (n *ClusterNode) qmpSocket() string     { return filepath.Join(n.Dir, "qmp.sock") }

// SetColdReboot makes a guest's reboot a new qemu process for the nodes
// started from now on by this process, while it runs: qemu exits on the
// guest's reset (-no-reboot) and a watcher starts it again. Under
// software emulation a warm reset spent 80 to 137 s in the firmware once
// a node had run for minutes (qemu's translation cache, full of the old
// guest's code, is paid for on reset), a cold start 6 to 13 s. VMs left
// running after this process ends reboot the ordinary way no more: use it
// only where the process outlives the VMs (tests).
func (c *Cluster) SetColdReboot(on bool) { c.coldReboot = on }

// Started is when Start last started this node's qemu in this process.
func (n *ClusterNode) Started() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.started
}

// KernelAt is when this boot's console showed the kernel starting (zero
// until then, or when the node was not started by this process).
func (n *ClusterNode) KernelAt() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.kernelAt
}

// SSHKey is the private key (OpenSSH format) every node's root accepts.
func (c *Cluster) SSHKey() string { return filepath.Join(c.Dir, sshKeyFile) }

// CreateCluster prepares a cluster: directory, secret, ssh key, per-node
// overlay, firmware variables, node.yaml and seed disk, then the
// namespace, bridge and taps. It starts no VM (Start does). On failure it
// removes what it made.
func CreateCluster(cfg ClusterConfig) (*Cluster, error) {
	if !clusterName.MatchString(cfg.Name) {
		return nil, fmt.Errorf("cluster name %q: want 1-15 of a-z, 0-9 and -, starting with a letter or digit", cfg.Name)
	}
	if cfg.Nodes < 1 || cfg.Nodes > maxNodes {
		return nil, fmt.Errorf("cluster of %d nodes: want 1 to %d (addresses 10.240.0.11-19)", cfg.Nodes, maxNodes)
	}
	if _, err := os.Stat(cfg.Image); err != nil {
		return nil, fmt.Errorf("cluster image: %w", err)
	}
	for _, tool := range []string{"ip", "qemu-system-x86_64", "qemu-img", "mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (make deps installs it)", tool)
		}
	}
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(DefaultClusterRoot, cfg.Name)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	image, err := filepath.Abs(cfg.Image)
	if err != nil {
		return nil, err
	}
	accel, err := resolveAccel(cfg.Accel)
	if err != nil {
		return nil, err
	}
	netns := netnsPrefix + cfg.Name
	if _, err := os.Stat(filepath.Join("/var/run/netns", netns)); err == nil {
		return nil, fmt.Errorf("network namespace %s exists: a cluster %q is up (berth-build cluster down --name %s removes it)", netns, cfg.Name, cfg.Name)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("cluster directory %s exists: a cluster %q is up or was not removed (berth-build cluster down --name %s)", dir, cfg.Name, cfg.Name)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Cluster{Name: cfg.Name, Netns: netns, Dir: dir, Image: image, MemoryMiB: cfg.MemoryMiB, CPUs: cfg.CPUs, Accel: accel}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 768
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	diskBytes := cfg.DiskBytes
	if diskBytes == 0 {
		diskBytes = 3 << 30
	}
	for i := 1; i <= cfg.Nodes; i++ {
		c.Nodes = append(c.Nodes, &ClusterNode{
			Name: fmt.Sprintf("node-%d", i),
			IPv4: fmt.Sprintf("10.240.0.%d", 10+i),
			IPv6: fmt.Sprintf("fd00:240::%d", 10+i),
			MAC:  fmt.Sprintf("52:54:00:f0:00:%02x", 10+i),
			Tap:  fmt.Sprintf("tap%d", i),
			Dir:  filepath.Join(dir, fmt.Sprintf("node-%d", i)),
		})
	}
	// cluster.json first: it marks the directory as ours for Destroy.
	if err := c.prepare(diskBytes); err != nil {
		if derr := DestroyCluster(c.Name, c.Dir); derr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
		}
		return nil, err
	}
	return c, nil
}

func (c *Cluster) prepare(diskBytes int64) error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	c.Secret = hex.EncodeToString(secret)
	if err := c.save(); err != nil {
		return err
	}
	pub, err := writeSSHKey(c.SSHKey())
	if err != nil {
		return err
	}
	for i, n := range c.Nodes {
		if err := os.Mkdir(n.Dir, 0o700); err != nil {
			return err
		}
		if err := Overlay(c.Image, n.Disk(), diskBytes); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		nodeYAML, err := c.DefaultNodeConfig(i+1, pub).YAML()
		if err != nil {
			return err
		}
		if err := c.WriteNodeConfig(i+1, nodeYAML); err != nil {
			return err
		}
	}
	return c.setupNetwork()
}

func (c *Cluster) save() error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(c.Dir, clusterFile), append(data, '\n'), 0o600)
}

// OpenCluster reads the cluster saved in dir (by CreateCluster, possibly
// in another process).
func OpenCluster(dir string) (*Cluster, error) {
	data, err := os.ReadFile(filepath.Join(dir, clusterFile))
	if err != nil {
		return nil, fmt.Errorf("open cluster: %w", err)
	}
	var c Cluster
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("open cluster: %s: %w", filepath.Join(dir, clusterFile), err)
	}
	if !clusterName.MatchString(c.Name) || len(c.Nodes) == 0 {
		return nil, fmt.Errorf("open cluster: %s is not a cluster description", filepath.Join(dir, clusterFile))
	}
	return &c, nil
}

// Node returns node i (1-based, as in node-1).
func (c *Cluster) Node(i int) (*ClusterNode, error) {
	if i < 1 || i > len(c.Nodes) {
		return nil, fmt.Errorf("no node %d in cluster %s (%d nodes)", i, c.Name, len(c.Nodes))
	}
	return c.Nodes[i-1], nil
}

func (c *Cluster) ip(args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", c.Netns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %s", c.Netns, strings.Join(args, " "), bytes.TrimSpace(out))
	}
	return nil
}

// setupNetwork makes the namespace, its bridge with the host-side
// addresses, and one tap per node on the bridge; `ip -n` runs each
// command inside the namespace, so nothing appears on the host.
func (c *Cluster) setupNetwork() error {
	if out, err := exec.Command("ip", "netns", "add", c.Netns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %s", c.Netns, bytes.TrimSpace(out))
	}
	steps := [][]string{
		{"link", "set", "lo", "up"},
		// A fixed MAC: a bridge otherwise takes its lowest port's, which
		// changes as taps come and go and confuses the guests' neighbours.
		{"link", "add", bridgeDev, "address", bridgeMAC, "type", "bridge"},
		{"addr", "add", BridgeIPv4 + "/24", "dev", bridgeDev},
		{"-6", "addr", "add", BridgeIPv6 + "/64", "dev", bridgeDev, "nodad"},
		{"link", "set", bridgeDev, "up"},
	}
	for _, n := range c.Nodes {
		steps = append(steps,
			[]string{"tuntap", "add", "dev", n.Tap, "mode", "tap"},
			[]string{"link", "set", n.Tap, "master", bridgeDev, "up"})
	}
	for _, s := range steps {
		if err := c.ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// Start boots node i from its disk as it is (a restart keeps everything
// the node wrote). It returns once qemu is running.
func (c *Cluster) Start(i int) error {
	n, err := c.Node(i)
	if err != nil {
		return err
	}
	n.life.Lock()
	defer n.life.Unlock()
	return c.start(i, n)
}

func (c *Cluster) start(i int, n *ClusterNode) error {
	if pid := n.pid(); pid != 0 {
		return fmt.Errorf("%s is running (qemu pid %d)", n.Name, pid)
	}
	n.dropSSH(nil)
	os.Remove(n.pidFile())
	os.Remove(n.ConsoleSocket())
	var offset int64
	if st, err := os.Stat(n.SerialLog()); err == nil {
		offset = st.Size()
	}
	cfg := Config{
		Disk: n.Disk(), MemoryMiB: c.MemoryMiB, CPUs: c.CPUs, StateDir: n.Dir,
		Tap: n.Tap, MAC: n.MAC, SerialLog: n.SerialLog(), Accel: c.Accel,
		ExtraArgs: []string{
			"-drive", "if=virtio,format=raw,file=" + n.Seed(),
			"-name", c.Netns + "-" + n.Name,
			"-daemonize", "-pidfile", n.pidFile(),
		},
	}
	// A unix socket path is at most 107 bytes; without it the log remains.
	if len(n.ConsoleSocket()) < 100 {
		cfg.ConsoleSocket = n.ConsoleSocket()
	}
	cold := c.coldReboot && len(n.qmpSocket()) < 100
	if cold {
		os.Remove(n.qmpSocket())
		cfg.NoReboot = true
		cfg.ExtraArgs = append(cfg.ExtraArgs, "-qmp", "unix:"+n.qmpSocket()+",server=on,wait=off")
	}
	args, err := Args(cfg)
	if err != nil {
		return err
	}
	// qemu's messages before it daemonizes go to a file: a pipe would be
	// held open by the daemon.
	errPath := filepath.Join(n.Dir, "qemu.err")
	errFile, err := os.Create(errPath)
	if err != nil {
		return err
	}
	defer errFile.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", c.Netns, "qemu-system-x86_64"}, args...)...)
	cmd.Stdout, cmd.Stderr = errFile, errFile
	started := time.Now()
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(errPath)
		return fmt.Errorf("start %s: qemu: %v: %s", n.Name, err, bytes.TrimSpace(msg))
	}
	if n.pid() == 0 {
		return fmt.Errorf("start %s: qemu daemonized but is not running (see %s)", n.Name, n.SerialLog())
	}
	n.mu.Lock()
	n.started, n.logOffset, n.kernelAt = started, offset, time.Time{}
	n.mu.Unlock()
	n.killed = false
	go c.watchKernel(i, n, started)
	if cold {
		go c.restartOnReboot(i, n, started)
	}
	return nil
}

// restartOnReboot starts node i again when its qemu exits because the
// guest rebooted (see SetColdReboot); a kill, a power-off or a panic
// leaves it down.
func (c *Cluster) restartOnReboot(i int, n *ClusterNode, started time.Time) {
	reason, err := qmpShutdownReason(n.qmpSocket(), 10*time.Second)
	if err != nil {
		slog.Warn("cluster: cannot follow the node's qemu; a guest reboot will leave it off", "node", n.Name, "err", err)
		return
	}
	if reason != "guest-reset" {
		return
	}
	n.waitExited(30 * time.Second) // start refuses a qemu still running
	n.life.Lock()
	defer n.life.Unlock()
	if n.killed || !n.Started().Equal(started) {
		return // killed or started by someone else meanwhile
	}
	if err := c.start(i, n); err != nil {
		slog.Error("cluster: restart after the guest's reboot failed", "node", n.Name, "err", err)
	}
}

// watchKernel notes when this boot's console shows the kernel: the
// firmware and loader's share of a boot, measured on the host.
func (c *Cluster) watchKernel(i int, n *ClusterNode, started time.Time) {
	if _, err := c.WaitForLine(i, KernelStarted, 10*time.Minute); err != nil {
		return
	}
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started.Equal(started) { // not restarted meanwhile
		n.kernelAt = now
	}
}

// StartAll starts every node, node-1 (the bootstrap node) first.
func (c *Cluster) StartAll() error {
	for i := range c.Nodes {
		if err := c.Start(i + 1); err != nil {
			return err
		}
	}
	return nil
}

// Running reports node i's qemu process id, 0 when it is not running.
func (c *Cluster) Running(i int) int {
	n, err := c.Node(i)
	if err != nil {
		return 0
	}
	return n.pid()
}

// pid is the node's live qemu: the pid file's process, checked to be
// this node's qemu (its command line names the pid file) so that a
// reused pid is never taken for it, and not a zombie.
func (n *ClusterNode) pid() int {
	data, err := os.ReadFile(n.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("\x00"+n.pidFile()+"\x00")) {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return 0
	}
	return pid
}

// Kill stops node i's qemu with SIGKILL, like pulling the power cord, and
// waits until the process is gone. Killing a stopped node is no error.
func (c *Cluster) Kill(i int) error {
	n, err := c.Node(i)
	if err != nil {
		return err
	}
	return n.kill()
}

func (n *ClusterNode) kill() error {
	n.life.Lock()
	defer n.life.Unlock()
	n.killed = true
	n.dropSSH(nil)
	pid := n.pid()
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (qemu pid %d): %w", n.Name, pid, err)
	}
	if n.waitExited(10 * time.Second) {
		return nil
	}
	return fmt.Errorf("kill %s: qemu pid %d still there 10 s after SIGKILL", n.Name, pid)
}

// waitExited waits up to d for the node's qemu to be gone.
func (n *ClusterNode) waitExited(d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n.pid() == 0 {
			return true
		}
	}
	return n.pid() == 0
}

// Console is what node i's serial console printed since its last Start
// in this process (the whole log in another process).
func (c *Cluster) Console(i int) string {
	n, err := c.Node(i)
	if err != nil {
		return ""
	}
	text, _ := n.readLog()
	return text
}

func (n *ClusterNode) readLog() (string, error) {
	n.mu.Lock()
	offset := n.logOffset
	n.mu.Unlock()
	f, err := os.Open(n.SerialLog())
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return "", err
	}
	data, err := io.ReadAll(f)
	return string(data), err
}

// WaitForLine waits until node i's console, since its last Start, matches
// re; it fails when qemu exits first or the timeout passes. It returns the
// match.
func (c *Cluster) WaitForLine(i int, re *regexp.Regexp, timeout time.Duration) (string, error) {
	n, err := c.Node(i)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)
	for {
		// Read after checking the process, so output written just
		// before it exited is still seen.
		alive := n.pid() != 0
		text, _ := n.readLog()
		if m := re.FindString(text); m != "" {
			return m, nil
		}
		if !alive {
			return "", fmt.Errorf("%s: qemu is not running, and its console did not show %q; console's last lines:\n%s", n.Name, re, lastLines(text, 15))
		}
		// A guest that died under KVM stays paused in qemu: fail now.
		if strings.Contains(text, kvmFailure) {
			return "", fmt.Errorf("%s: the guest died under KVM (create the cluster with %s=tcg or --accel tcg); console's last lines:\n%s", n.Name, AccelEnv, lastLines(text, 15))
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: timed out after %s waiting for %q on the console", n.Name, timeout, re)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Tail is the last lines of node i's console since its last Start.
func (c *Cluster) Tail(i, lines int) string { return lastLines(c.Console(i), lines) }

// Down kills every VM and removes the network namespace (with its bridge
// and taps) and the cluster's directory (overlays, seeds, logs).
func (c *Cluster) Down() error { return DestroyCluster(c.Name, c.Dir) }

// DestroyCluster removes cluster name whose directory is dir, as far as it
// exists: it works on a half-made cluster and after a host reboot. It
// removes dir only when it holds a cluster.json (never some other
// directory given by mistake).
func DestroyCluster(name, dir string) error {
	if !clusterName.MatchString(name) {
		return fmt.Errorf("cluster name %q is not valid", name)
	}
	var errs []error
	nodeDirs, _ := filepath.Glob(filepath.Join(dir, "node-*"))
	for _, d := range nodeDirs {
		n := &ClusterNode{Name: filepath.Base(d), Dir: d}
		if err := n.kill(); err != nil {
			errs = append(errs, err)
		}
	}
	netns := netnsPrefix + name
	if _, err := os.Stat(filepath.Join("/var/run/netns", netns)); err == nil {
		c := &Cluster{Netns: netns}
		// Deleting the namespace would also delete its virtual devices;
		// deleting them first makes a failure visible here.
		links, _ := exec.Command("ip", "-n", netns, "-o", "link", "show").Output()
		for _, line := range strings.Split(string(links), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			dev := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
			if strings.HasPrefix(dev, "tap") || dev == bridgeDev {
				if err := c.ip("link", "del", dev); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if out, err := exec.Command("ip", "netns", "del", netns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %s", netns, bytes.TrimSpace(out)))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, clusterFile)); err == nil {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	} else if _, err := os.Stat(dir); err == nil {
		errs = append(errs, fmt.Errorf("%s has no %s: not a cluster directory, left alone", dir, clusterFile))
	}
	return errors.Join(errs...)
}

// writeSSHKey makes the harness's ed25519 key pair (private key at path in
// OpenSSH format, public at path.pub) and returns the public key line.
func writeSSHKey(path string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "berth-cluster")
	if err != nil {
		return "", fmt.Errorf("ssh key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("ssh key: %w", err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " berth-cluster"
	if err := atomicfile.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(path+".pub", []byte(line+"\n"), 0o644); err != nil {
		return "", err
	}
	return line, nil
}
