package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/agent/volume/thinpool"
	"github.com/berth-os/berth/internal/atomicfile"
)

// Host makes this node's copies of replicated volumes real: a thin device
// from the node's pool, the DRBD resource over it and, on the owner, the
// ext4 mounted for the container. Every method can run again after a
// crash or an agent restart and finds what is already done.
type Host struct {
	Pool *thinpool.Pool
	Run  thinpool.Runner // drbdadm and mkfs.ext4 (default thinpool.Exec)
	// Agent is the berth-agent binary DRBD's fence-peer handler runs.
	Agent string
	// MountDir holds the owner's mounted file systems (on /run: a
	// mount does not outlive a boot).
	MountDir string
	// StateDir keeps what must survive a reboot: that a copy's DRBD
	// metadata exists (create-md again would wipe its bitmap).
	StateDir string
	// Proc is /proc/drbd (tests point it elsewhere).
	Proc string
	Log  *slog.Logger
}

func (h *Host) run(ctx context.Context, args ...string) error {
	run := h.Run
	if run == nil {
		run = thinpool.Exec
	}
	_, err := run(ctx, args[0], args[1:]...)
	return err
}

func (h *Host) drbdadm(ctx context.Context, res Resource, args ...string) error {
	return h.run(ctx, append([]string{"drbdadm", "-c", res.File()}, args...)...)
}

// BackingSize is the thin device under a volume of size bytes: the size
// plus DRBD 8.4's internal metadata (a bit per 4 KiB, 36 KiB of
// superblock and activity log), rounded up to whole MiB.
func BackingSize(size int64) int64 {
	meta := size/32768 + 1<<20
	return (size + meta + 1<<20 - 1) / (1 << 20) * (1 << 20)
}

// Device is the DRBD device of the volume.
func (r Resource) Device() string { return "/dev/drbd" + strconv.Itoa(r.Minor) }

// Mountpoint is where the owner mounts the volume.
func (h *Host) Mountpoint(r Resource) string {
	return filepath.Join(h.MountDir, ResourceName(r.Volume))
}

func epochFile(id ID) string {
	return filepath.Join(ResourceDir, ResourceName(id)+".epoch")
}

// Up makes this node's copy of rec exist and take part in replication
// (secondary until Promote): thin device, resource file, DRBD metadata
// once, then `drbdadm adjust` (which brings a resource up or applies a
// changed peer address).
func (h *Host) Up(ctx context.Context, rec Record, addrs [2]netip.Addr) (Resource, error) {
	res := ResourceOf(rec, addrs, h.Agent)
	conf, err := res.Config()
	if err != nil {
		return res, err
	}
	name := ResourceName(rec.ID)
	dev, err := h.Pool.Create(ctx, name, BackingSize(rec.SizeBytes))
	if err != nil {
		return res, err
	}
	for _, d := range []string{DiskDir, ResourceDir, h.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return res, fmt.Errorf("volume %s: %w", rec.ID, err)
		}
	}
	if err := replaceSymlink(dev, res.DiskLink()); err != nil {
		return res, fmt.Errorf("volume %s: %w", rec.ID, err)
	}
	if err := atomicfile.WriteFile(res.File(), []byte(conf), 0o600); err != nil {
		return res, fmt.Errorf("volume %s: %w", rec.ID, err)
	}
	marker := filepath.Join(h.StateDir, name+".md")
	if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
		// --force (drbdmeta's, after --): a create-md that ran before a
		// crash lost the marker must not stop at a question nobody can
		// answer.
		if err := h.drbdadm(ctx, res, "--", "--force", "create-md", name); err != nil {
			return res, fmt.Errorf("volume %s: DRBD metadata: %w", rec.ID, err)
		}
		if err := atomicfile.WriteFile(marker, nil, 0o600); err != nil {
			return res, err
		}
	}
	if err := h.drbdadm(ctx, res, "adjust", name); err != nil {
		return res, fmt.Errorf("volume %s: bring DRBD resource %s up: %w", rec.ID, name, err)
	}
	return res, nil
}

func replaceSymlink(target, link string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// State reads the resource's minor from /proc/drbd.
func (h *Host) State(res Resource) (DeviceState, error) {
	proc := h.Proc
	if proc == "" {
		proc = "/proc/drbd"
	}
	data, err := os.ReadFile(proc)
	if err != nil {
		return DeviceState{}, fmt.Errorf("read DRBD state: %w (is the drbd module loaded?)", err)
	}
	d, ok := ParseProc(string(data))[res.Minor]
	if !ok {
		return DeviceState{Minor: res.Minor, Connection: "Unconfigured"}, nil
	}
	return d, nil
}

// waitState polls until ok says yes or within passes.
func (h *Host) waitState(ctx context.Context, res Resource, within time.Duration, ok func(DeviceState) bool) (DeviceState, bool) {
	deadline := time.Now().Add(within)
	for {
		d, err := h.State(res)
		if err == nil && ok(d) {
			return d, true
		}
		if time.Now().After(deadline) {
			return d, false
		}
		select {
		case <-ctx.Done():
			return d, false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// FreshConnectWithin is how long a new volume's first owner waits for its
// peer before it starts alone (the peer then takes a full sync).
const FreshConnectWithin = 90 * time.Second

// Promote makes this node's copy primary at epoch (which the caller won
// in etcd with PromoteNode), formats a new volume and mounts it; it
// returns the mountpoint. DRBD runs the fence-peer handler when the peer
// is not connected: I/O goes on only once etcd marks the peer outdated
// at this epoch.
func (h *Host) Promote(ctx context.Context, res Resource, epoch int64) (string, error) {
	name := ResourceName(res.Volume)
	if err := atomicfile.WriteFile(epochFile(res.Volume), []byte(strconv.FormatInt(epoch, 10)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("volume %s: %w", res.Volume, err)
	}
	d, err := h.State(res)
	if err != nil {
		return "", err
	}
	if d.Role != "Primary" {
		if d.Disk == "Inconsistent" {
			// A new volume: both copies are empty. Connected, one
			// command makes both up to date without copying zeros.
			d, connected := h.waitState(ctx, res, FreshConnectWithin, func(d DeviceState) bool { return d.Connected() })
			switch {
			case connected && d.PeerDisk == "Inconsistent":
				if err := h.drbdadm(ctx, res, "--", "--clear-bitmap", "new-current-uuid", name); err != nil {
					return "", fmt.Errorf("volume %s: start the new pair in sync: %w", res.Volume, err)
				}
			case !connected:
				h.log().Warn("new volume's peer not connected: starting alone, the peer will take a full sync", "volume", res.Volume.String(), "waited", FreshConnectWithin)
				if err := h.drbdadm(ctx, res, "primary", "--force", name); err != nil {
					return "", fmt.Errorf("volume %s: become primary: %w", res.Volume, err)
				}
			}
		}
		if err := h.drbdadm(ctx, res, "primary", name); err != nil {
			return "", fmt.Errorf("volume %s: become primary: %w", res.Volume, err)
		}
	}
	isExt4, err := hasExt4(res.Device())
	if err != nil {
		return "", fmt.Errorf("volume %s: %w", res.Volume, err)
	}
	if !isExt4 {
		if err := h.run(ctx, "mkfs.ext4", "-q", "-E", "nodiscard", "-L", name, res.Device()); err != nil {
			return "", fmt.Errorf("volume %s: make its file system: %w", res.Volume, err)
		}
	}
	mp := h.Mountpoint(res)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", err
	}
	if mounted(mp) {
		return mp, nil
	}
	if err := unix.Mount(res.Device(), mp, "ext4", unix.MS_NOATIME, ""); err != nil {
		return "", fmt.Errorf("volume %s: mount %s on %s: %w", res.Volume, res.Device(), mp, err)
	}
	return mp, nil
}

// Demote unmounts the volume and makes this copy secondary again.
func (h *Host) Demote(ctx context.Context, res Resource) error {
	mp := h.Mountpoint(res)
	if mounted(mp) {
		if err := unix.Unmount(mp, 0); err != nil {
			return fmt.Errorf("volume %s: unmount %s: %w (still in use?)", res.Volume, mp, err)
		}
	}
	d, err := h.State(res)
	if err != nil || d.Role != "Primary" {
		return err
	}
	return h.drbdadm(ctx, res, "secondary", ResourceName(res.Volume))
}

// Down takes the copy out of DRBD and deletes it from the pool.
func (h *Host) Down(ctx context.Context, res Resource) error {
	if err := h.Demote(ctx, res); err != nil {
		return err
	}
	name := ResourceName(res.Volume)
	if d, err := h.State(res); err == nil && d.ConfiguredMinor {
		if err := h.drbdadm(ctx, res, "down", name); err != nil {
			return fmt.Errorf("volume %s: %w", res.Volume, err)
		}
	}
	if err := h.Pool.Remove(ctx, name); err != nil {
		return err
	}
	for _, f := range []string{res.DiskLink(), res.File(), epochFile(res.Volume), filepath.Join(h.StateDir, name+".md")} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Epoch reads the epoch this node promoted the volume at (for the
// fence-peer handler, a separate process).
func Epoch(id ID) (int64, error) {
	data, err := os.ReadFile(epochFile(id))
	if err != nil {
		return 0, fmt.Errorf("volume %s: this node never promoted it: %w", id, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("volume %s: epoch file: %w", id, err)
	}
	return n, nil
}

func (h *Host) log() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

// hasExt4 reads the ext2/3/4 superblock magic (0xEF53 at byte 1080).
func hasExt4(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], 1080); err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	return binary.LittleEndian.Uint16(b[:]) == 0xEF53, nil
}

// mounted tells whether dir is a mountpoint (its device differs from its
// parent's).
func mounted(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
