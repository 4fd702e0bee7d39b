// Package layout is the A/B on-disk contract of a berth node: partition
// names and type GUIDs, where each slot's kernel and initrd live on the ESP,
// how boot entries are named and how their boot counters are spelled, and
// the kernel command line keys the initrd reads. The builder writes this
// layout, the initrd and the updater read it; nothing else may invent paths.
package layout

import (
	"crypto/sha256"
	"fmt"
	"strings"
)

// Partition labels (GPT partition names). The initrd and the updater find
// partitions by these names on the disk the booted slot lives on.
const (
	LabelESP   = "ESP"
	LabelSlotA = "BERTH-A"
	LabelSlotB = "BERTH-B"
	LabelState = "BERTH-STATE"
)

// Partition numbers in the GPT, 1-based as the kernel names them.
const (
	PartESP   = 1
	PartSlotA = 2
	PartSlotB = 3
	PartState = 4
)

// Partition type GUIDs.
const (
	// TypeESP is the UEFI-defined EFI System Partition type.
	TypeESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	// TypeSlot is berth's own type for an OS slot. A private type keeps
	// systemd-gpt-auto-generator and other tools from mounting slots on
	// their own: only the initrd decides which slot becomes "/".
	TypeSlot = "6B2C5F0E-8D43-4E0B-9C1A-B3E7A1D0BE71"
	// TypeState is the generic Linux data type; the state partition is an
	// ordinary ext4 filesystem.
	TypeState = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// Slot names one of the two OS slots.
type Slot string

const (
	SlotA Slot = "a"
	SlotB Slot = "b"
)

// ParseSlot accepts "a", "b", "A" or "B".
func ParseSlot(s string) (Slot, error) {
	switch strings.ToLower(s) {
	case "a":
		return SlotA, nil
	case "b":
		return SlotB, nil
	}
	return "", fmt.Errorf("unknown slot %q: want a or b", s)
}

// Other returns the passive slot when s is the booted one.
func (s Slot) Other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// Label is the GPT partition name of the slot.
func (s Slot) Label() string {
	if s == SlotA {
		return LabelSlotA
	}
	return LabelSlotB
}

// Partition is the 1-based GPT partition number of the slot.
func (s Slot) Partition() int {
	if s == SlotA {
		return PartSlotA
	}
	return PartSlotB
}

// ESP paths, relative to the ESP root, with forward slashes.
const (
	// BootLoaderPath is where UEFI firmware looks for a removable-media loader.
	BootLoaderPath = "EFI/BOOT/BOOTX64.EFI"
	// SystemdBootPath is systemd-boot's own path, kept for tools that look there.
	SystemdBootPath = "EFI/systemd/systemd-bootx64.efi"
	LoaderConfPath  = "loader/loader.conf"
	EntriesDir      = "loader/entries"
)

// KernelPath is the ESP path of a slot's kernel.
func KernelPath(s Slot) string { return "berth/" + string(s) + "/vmlinuz" }

// InitrdPath is the ESP path of a slot's initrd.
func InitrdPath(s Slot) string { return "berth/" + string(s) + "/initrd.img" }

// EntryID is the boot entry name of a slot, without counter or suffix.
func EntryID(s Slot) string { return "berth-" + string(s) }

// Kernel command line keys understood by the berth initrd.
const (
	// CmdlineRoot names the slot partition: PARTUUID=<uuid> or PARTLABEL=<label>.
	CmdlineRoot = "berth.root"
	// CmdlineSlot names the slot ("a" or "b") for the OS and the updater.
	CmdlineSlot = "berth.slot"
	// CmdlineFSType is the slot's filesystem type (squashfs).
	CmdlineFSType = "berth.fstype"
	// CmdlineOnFail is what the initrd does on failure: reboot, shell or halt.
	CmdlineOnFail = "berth.onfail"
	// CmdlineRootWait is how many seconds the initrd waits for the slot
	// partition to appear before it fails.
	CmdlineRootWait = "berth.rootwait"
)

// State partition layout, relative to the state filesystem's root, which
// the initrd mounts on /var.
const (
	// EtcUpper and EtcWork are the persistent overlay over /etc.
	EtcUpper = "lib/berth/etc/upper"
	EtcWork  = "lib/berth/etc/work"
	// Home and RootHome back /home and /root (symlinks into /var in the slot).
	Home     = "home"
	RootHome = "roothome"
)

// FactoryVar is the slot path that holds the /var contents of the built
// root; tmpfiles copies missing entries into the state partition.
const FactoryVar = "usr/share/factory/var"

// KeysDir is where an OS image carries the public keys it trusts for updates.
const KeysDir = "usr/share/berth/keys"

// OSReleaseVersionKey is the os-release field that carries berth's version.
const OSReleaseVersionKey = "BERTH_VERSION"

// GUID derives a stable GPT GUID from the given parts, so that two builds
// of the same spec produce the same disk. It is shaped as an RFC 4122
// version 5-style (name-based, SHA) UUID.
func GUID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := h[:16]
	b[6] = (b[6] & 0x0f) | 0x50
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%08X-%04X-%04X-%04X-%012X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
