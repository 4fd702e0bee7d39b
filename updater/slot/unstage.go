package slot

import (
	"fmt"
	"io"

	"github.com/berth-os/berth/updater/payload"
)

// UpdateCancelled is recorded when a staged update is withdrawn before it
// booted (a rollout aborted while the node waited for its turn).
const UpdateCancelled = "cancelled"

// Unstage withdraws a staged update: the passive slot's entry, which has
// tries left and never passed a health gate, is removed, so the booted OS
// stays the next boot. It returns the withdrawn version, or "" when the
// passive slot holds nothing staged (nothing to do). A blessed or bad
// entry is left alone: those are rollback targets, not pending updates.
func (s System) Unstage(reason string) (string, error) {
	s = s.withDefaults()
	unlock, err := s.lock()
	if err != nil {
		return "", fmt.Errorf("unstage: %w", err)
	}
	defer unlock()
	b, err := s.booted()
	if err != nil {
		return "", fmt.Errorf("unstage: %w", err)
	}
	other := b.Slot.Other()
	all, err := listEntries(s.entriesDir())
	if err != nil {
		return "", fmt.Errorf("unstage: %w", err)
	}
	e, state := slotState(entriesOf(all, other))
	if state != SlotStaged {
		return "", nil
	}
	if err := s.removeSlotEntries(other); err != nil {
		return "", fmt.Errorf("unstage %s: %w", e.version, err)
	}
	rec, err := s.lastUpdate()
	if err != nil {
		return "", fmt.Errorf("unstage %s: %w", e.version, err)
	}
	next := Result{Version: e.version, Slot: string(other), FromVersion: b.Version, FromSlot: string(b.Slot)}
	if rec != nil && rec.Slot == string(other) && rec.Version == e.version {
		next = *rec
	}
	next.State, next.Reason, next.Time = UpdateCancelled, reason, s.Now().UTC()
	if err := s.saveResult(next); err != nil {
		return "", fmt.Errorf("unstage %s: %w", e.version, err)
	}
	s.Log.Info("staged update withdrawn", "version", e.version, "slot", other, "reason", reason)
	return e.version, nil
}

// PayloadSource makes an opened, verified payload the Source of Apply.
// Its parts are read unchecked: Apply hashes every part against the
// signed manifest while it writes (copyVerified) and refuses a mismatch
// before any boot entry names the new slot, so each byte is hashed once.
func PayloadSource(p *payload.Payload) Source { return payloadSource{p} }

type payloadSource struct{ *payload.Payload }

func (s payloadSource) Manifest() payload.Manifest { return s.Payload.Manifest }
func (s payloadSource) Slot() (io.ReadCloser, error) {
	return s.Payload.Unchecked(payload.PartSlot)
}
func (s payloadSource) Kernel() (io.ReadCloser, error) {
	return s.Payload.Unchecked(payload.PartKernel)
}
func (s payloadSource) Initrd() (io.ReadCloser, error) {
	return s.Payload.Unchecked(payload.PartInitrd)
}
