package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"

	"github.com/berth-os/berth/internal/osrelease"
	"github.com/berth-os/berth/updater/layout"
)

// loaderBootCountVar is set by systemd-boot when it booted an entry with a
// boot counter; its value is the ESP path of the renamed entry file.
const loaderBootCountVar = "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// Booted describes the running OS.
type Booted struct {
	Slot    layout.Slot `json:"slot"`
	Version string      `json:"version"`
	OS      string      `json:"os"`    // IMAGE_ID from os-release
	Entry   string      `json:"entry"` // entry file name on the ESP; "" when none was found
	// Counted is true when systemd-boot counted this boot (the entry had a
	// counter when it was chosen).
	Counted bool `json:"counted"`
	// Blessed is true when the booted slot's entry has no counter any more:
	// the OS passed its health gate and is the fallback for the next update.
	Blessed bool `json:"blessed"`

	entry layout.EntryName
}

// Booted reads which slot and version are running and the state of their
// boot entry.
func (s System) Booted() (Booted, error) {
	return s.withDefaults().booted()
}

func (s System) booted() (Booted, error) {
	cmdline, err := os.ReadFile(s.Cmdline)
	if err != nil {
		return Booted{}, fmt.Errorf("read kernel command line: %w", err)
	}
	slot, err := cmdlineSlot(string(cmdline))
	if err != nil {
		return Booted{}, err
	}
	rel, err := osrelease.Read(s.OSRelease)
	if err != nil {
		return Booted{}, err
	}
	b := Booted{Slot: slot, OS: rel["IMAGE_ID"], Version: rel[layout.OSReleaseVersionKey]}
	if b.Version == "" {
		b.Version = rel["VERSION_ID"]
	}
	if b.Version == "" {
		return Booted{}, fmt.Errorf("%s has neither %s nor VERSION_ID: cannot tell the booted version", s.OSRelease, layout.OSReleaseVersionKey)
	}
	counted, err := readBootCountPath(s.EFIVars)
	if err != nil {
		return Booted{}, err
	}
	entries, err := listEntries(s.entriesDir())
	if err != nil {
		return Booted{}, err
	}
	mine := entriesOf(entries, slot)
	b.Counted = counted != ""
	if e, ok := pickBootedEntry(mine, counted); ok {
		b.entry = e.name
		b.Entry = e.file
		b.Blessed = e.name.Blessed()
	}
	return b, nil
}

// pickBootedEntry finds the entry the running OS was booted from. The EFI
// variable names it exactly while the boot is still counted; after
// blessing (or without boot counting) a slot normally has one entry.
func pickBootedEntry(mine []espEntry, countedFile string) (espEntry, bool) {
	for _, e := range mine {
		if countedFile != "" && e.file == countedFile {
			return e, true
		}
	}
	for _, e := range mine {
		if e.name.Blessed() {
			return e, true
		}
	}
	// Several counted entries only exist after a crash between writes of
	// an older updater: the one with most tries done is the one booted.
	var best espEntry
	found := false
	for _, e := range mine {
		if !found || e.name.Done > best.name.Done {
			best, found = e, true
		}
	}
	return best, found
}

// cmdlineSlot reads berth.slot from the kernel command line.
func cmdlineSlot(cmdline string) (layout.Slot, error) {
	var val string
	found := false
	for _, f := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(f, "="); ok && k == layout.CmdlineSlot {
			val, found = v, true // the last one wins, as for the kernel
		}
	}
	if !found {
		return "", fmt.Errorf("kernel command line has no %s=a|b: not booted from a berth slot", layout.CmdlineSlot)
	}
	slot, err := layout.ParseSlot(val)
	if err != nil {
		return "", fmt.Errorf("kernel command line %s: %w", layout.CmdlineSlot, err)
	}
	return slot, nil
}

// readBootCountPath returns the entry file name systemd-boot counted this
// boot against, or "" when the boot was not counted (or no EFI).
func readBootCountPath(efivars string) (string, error) {
	// efivarfs files cannot seek: read them whole.
	data, err := os.ReadFile(filepath.Join(efivars, loaderBootCountVar))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read EFI variable LoaderBootCountPath: %w", err)
	}
	path, err := decodeEFIString(data)
	if err != nil {
		return "", fmt.Errorf("EFI variable LoaderBootCountPath: %w", err)
	}
	if i := strings.LastIndexAny(path, `\/`); i >= 0 {
		path = path[i+1:]
	}
	return path, nil
}

// decodeEFIString decodes an efivarfs file: 4 bytes of attributes, then a
// UTF-16LE string, usually NUL-terminated.
func decodeEFIString(data []byte) (string, error) {
	if len(data) < 4 || (len(data)-4)%2 != 0 {
		return "", fmt.Errorf("%d bytes is not attributes followed by UTF-16", len(data))
	}
	data = data[4:]
	u := make([]uint16, 0, len(data)/2)
	for i := 0; i+1 < len(data); i += 2 {
		c := uint16(data[i]) | uint16(data[i+1])<<8
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}
