// Package esp decides what goes on the EFI system partition of a new
// image: systemd-boot, its loader.conf, and for slot A the kernel, the
// initrd and a boot entry with a fresh boot counter.
package esp

import (
	"fmt"
	"sort"

	"github.com/berth-os/berth/updater/layout"
)

// File is one file on the ESP, at an ESP-relative path.
type File struct {
	Path string
	Data []byte
}

// Input is everything the ESP is made of.
type Input struct {
	OSName, Version string
	BootLoader      []byte // systemd-bootx64.efi from the built root
	Kernel, Initrd  []byte
	SlotPartUUID    string // PARTUUID of slot A
	Cmdline         []string
	Timeout         int // systemd-boot menu timeout, seconds
	Tries           int // boot counter of the new entry
	// NodeConfig, when set, is written as NodeConfigPath: the node
	// configuration berth-node-config applies at every boot.
	NodeConfig []byte
}

// NodeConfigPath is where a node configuration lives on the ESP (FAT, so
// it can be edited from any OS before the first boot).
const NodeConfigPath = "berth/node.yaml"

// LoaderConf is systemd-boot's configuration. The editor is off: on a
// fleet host, editing the kernel command line at the console would bypass
// the image's settings. Entries are chosen by systemd-boot's own order
// (bad entries last, then higher versions first), so no "default" is set.
func LoaderConf(timeout int) []byte {
	return []byte(fmt.Sprintf("timeout %d\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n", timeout))
}

// Files returns the ESP contents of a freshly built image: slot A holds
// the OS and its entry starts with in.Tries boot attempts, so even the very
// first boot is counted and blessed like any update.
func Files(in Input) ([]File, error) {
	if len(in.BootLoader) == 0 || len(in.Kernel) == 0 || len(in.Initrd) == 0 {
		return nil, fmt.Errorf("esp: boot loader, kernel and initrd are all required")
	}
	// Without it the entry says "berth.root=PARTUUID=" and the initrd
	// cannot find the slot: fail the build, not the first boot.
	if in.SlotPartUUID == "" {
		return nil, fmt.Errorf("esp: the PARTUUID of slot A is required")
	}
	if in.Tries < 1 {
		return nil, fmt.Errorf("esp: boot tries must be at least 1, got %d", in.Tries)
	}
	entry := layout.SlotEntry(layout.SlotA, in.Version, in.SlotPartUUID, in.Cmdline)
	name := layout.EntryName{ID: layout.EntryID(layout.SlotA), HasCounter: true, Left: in.Tries}
	files := []File{
		{layout.BootLoaderPath, in.BootLoader},
		{layout.SystemdBootPath, in.BootLoader},
		{layout.LoaderConfPath, LoaderConf(in.Timeout)},
		{layout.EntriesDir + "/" + name.String(), entry.Render()},
		{layout.KernelPath(layout.SlotA), in.Kernel},
		{layout.InitrdPath(layout.SlotA), in.Initrd},
	}
	if in.NodeConfig != nil {
		files = append(files, File{NodeConfigPath, in.NodeConfig})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}
