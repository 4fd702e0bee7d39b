package slot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/berth-os/berth/updater/layout"
)

// espEntry is one boot entry file found on the ESP.
type espEntry struct {
	file    string // base name
	name    layout.EntryName
	slot    layout.Slot // "" when the entry is not a berth slot's
	version string      // from the entry's version line
	entry   layout.Entry
	err     error // the file could not be read or parsed
}

// listEntries reads every *.conf in the entries directory, the files
// systemd-boot considers. A missing directory means no entries.
func listEntries(dir string) ([]espEntry, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list boot entries in %s: %w", dir, err)
	}
	var out []espEntry
	for _, de := range ents {
		// systemd-boot matches the suffix case-insensitively (FAT).
		if de.IsDir() || !strings.HasSuffix(strings.ToLower(de.Name()), ".conf") {
			continue
		}
		file := de.Name()
		name, err := layout.ParseEntryName(file)
		if err != nil {
			name = layout.EntryName{ID: strings.TrimSuffix(file, filepath.Ext(file))}
		}
		e := espEntry{file: file, name: name, slot: entrySlot(name.ID)}
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err == nil {
			e.entry, err = layout.ParseEntry(data)
		}
		if err != nil {
			e.err = fmt.Errorf("boot entry %s: %w", file, err)
		}
		e.version = e.entry.Version
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].file < out[j].file })
	return out, nil
}

// entrySlot tells which slot an entry id belongs to.
func entrySlot(id string) layout.Slot {
	for _, s := range []layout.Slot{layout.SlotA, layout.SlotB} {
		if id == layout.EntryID(s) {
			return s
		}
	}
	return ""
}

func entriesOf(all []espEntry, s layout.Slot) []espEntry {
	var out []espEntry
	for _, e := range all {
		if e.slot == s {
			out = append(out, e)
		}
	}
	return out
}

// removeSlotEntries deletes every boot entry of slot s and makes the
// removal durable: from then on the slot cannot be booted.
func (s System) removeSlotEntries(slot layout.Slot) error {
	dir := s.entriesDir()
	all, err := listEntries(dir)
	if err != nil {
		return err
	}
	for _, e := range entriesOf(all, slot) {
		if err := os.Remove(filepath.Join(dir, e.file)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove boot entry %s: %w", e.file, err)
		}
	}
	if err := removeTemps(dir); err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return syncDir(dir)
}
