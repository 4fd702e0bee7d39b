// Package slot installs an OS update into the passive A/B slot of a berth
// node, reports the state of both slots, rolls back, and tells after a boot
// whether the last update took or the boot loader fell back.
//
// The boot loader (systemd-boot with boot counting) is the only judge of
// which slot boots: the updater only ever adds or renames entry files on the
// ESP, in an order that leaves the booted OS the next one to boot until the
// new OS is completely written and verified.
package slot

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/berth-os/berth/updater/layout"
)

// Defaults of System's paths on a running node.
const (
	DefaultESP       = "/efi"
	DefaultStateDir  = "/var/lib/berth/update"
	DefaultCmdline   = "/proc/cmdline"
	DefaultOSRelease = "/usr/lib/os-release"
	DefaultEFIVars   = "/sys/firmware/efi/efivars"
)

// System is one node as the updater sees it. Every path and lookup can be
// replaced, so tests run against temporary directories and regular files.
type System struct {
	ESP       string // mounted ESP root
	StateDir  string // updater state on the persistent state partition, shared by both slots
	Cmdline   string // kernel command line: berth.slot tells the booted slot
	OSRelease string // os-release of the booted OS
	EFIVars   string // efivarfs mount point
	// Device is the block device of a slot's partition. The default looks
	// for the partition labelled with the slot's label on the disk the
	// booted slot lives on.
	Device func(s layout.Slot) (string, error)
	// PartUUID is the GPT partition UUID of a slot's partition. The default
	// resolves /dev/disk/by-partuuid links to Device(s).
	PartUUID func(s layout.Slot) (string, error)
	Now      func() time.Time
	Log      *slog.Logger
}

// withDefaults fills unset fields; the receiver is a copy.
func (s System) withDefaults() System {
	if s.ESP == "" {
		s.ESP = DefaultESP
	}
	if s.StateDir == "" {
		s.StateDir = DefaultStateDir
	}
	if s.Cmdline == "" {
		s.Cmdline = DefaultCmdline
	}
	if s.OSRelease == "" {
		s.OSRelease = DefaultOSRelease
	}
	if s.EFIVars == "" {
		s.EFIVars = DefaultEFIVars
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.Device == nil || s.PartUUID == nil {
		sys := hostBlockDevices()
		if s.Device == nil {
			s.Device = func(slot layout.Slot) (string, error) { return sys.slotDevice(s.Cmdline, slot) }
		}
		if s.PartUUID == nil {
			device := s.Device
			s.PartUUID = func(slot layout.Slot) (string, error) {
				dev, err := device(slot)
				if err != nil {
					return "", err
				}
				return sys.partUUID(dev)
			}
		}
	}
	return s
}

func (s System) entriesDir() string {
	return filepath.Join(s.ESP, filepath.FromSlash(layout.EntriesDir))
}

func (s System) espFile(rel string) string { return filepath.Join(s.ESP, filepath.FromSlash(rel)) }

func (s System) lastUpdatePath() string    { return filepath.Join(s.StateDir, "last-update.json") }
func (s System) healthFailurePath() string { return filepath.Join(s.StateDir, "health-failure.json") }
func (s System) lockPath() string          { return filepath.Join(s.StateDir, "lock") }
