package slot

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-os/berth/updater/layout"
)

// Rollback makes the other slot's OS the next boot, if it is a good
// (blessed) one. It renames the booted slot's entry to one with no tries
// left ("berth-a+0.conf", or "berth-a+0-<done>.conf" keeping the tries
// done): systemd-boot sorts such bad entries after every other entry,
// whatever their versions, so the blessed entry of the other slot boots
// next. The booted OS stays on disk as a last resort: if the other slot
// fails too, bad entries are tried in version order.
func (s System) Rollback() error {
	s = s.withDefaults()
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	defer unlock()
	b, err := s.booted()
	if err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	other := b.Slot.Other()
	all, err := listEntries(s.entriesDir())
	if err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	target, state := slotState(entriesOf(all, other))
	switch state {
	case SlotEmpty:
		return fmt.Errorf("refusing rollback: slot %s has no boot entry, there is no OS to go back to", other)
	case SlotStaged:
		return fmt.Errorf("refusing rollback: slot %s holds version %s that has never passed its health gate (entry %s); reboot to try it, or install a known good version", other, target.version, target.file)
	case SlotBad:
		return fmt.Errorf("refusing rollback: slot %s's OS %s spent its boot tries (entry %s) and would not boot", other, target.version, target.file)
	}
	if target.err != nil {
		return fmt.Errorf("refusing rollback: slot %s: %w", other, target.err)
	}
	for _, rel := range []string{target.entry.Linux, target.entry.Initrd} {
		if rel == "" {
			continue
		}
		if _, err := os.Stat(s.espFile(rel)); err != nil {
			return fmt.Errorf("refusing rollback: slot %s's entry %s names %s, which is missing on the ESP: %w", other, target.file, rel, err)
		}
	}
	if b.Entry == "" {
		return fmt.Errorf("roll back: no boot entry of the booted slot %s in %s", b.Slot, s.entriesDir())
	}
	if !b.entry.Bad() {
		bad := layout.EntryName{ID: b.entry.ID, HasCounter: true, Left: 0, Done: b.entry.Done}.String()
		dir := s.entriesDir()
		if err := os.Rename(filepath.Join(dir, b.Entry), filepath.Join(dir, bad)); err != nil {
			return fmt.Errorf("roll back: mark the booted entry %s bad: %w", b.Entry, err)
		}
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
	}
	return s.saveResult(Result{
		State: UpdateRolledBack, Version: b.Version, Slot: string(b.Slot),
		FromVersion: target.version, FromSlot: string(other),
		Reason: fmt.Sprintf("manual rollback from %s to %s", b.Version, target.version),
	})
}
