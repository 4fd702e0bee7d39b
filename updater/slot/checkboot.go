package slot

import (
	"errors"
	"fmt"
	"os"

	"github.com/berth-os/berth/updater/layout"
)

// CheckBoot compares the last update with the slot that booted and
// records what happened; the health gate runs it on every boot, and again
// after blessing. It returns the result it recorded, or nil when there was
// nothing new to record:
//   - the update's slot booted its version: "booted", or "success" once the
//     entry is blessed;
//   - the other slot booted and the update's entry has no tries left (or is
//     gone): "rolled-back", with the health gate's recorded failure as the
//     reason when there is one.
func (s System) CheckBoot() (*Result, error) {
	s = s.withDefaults()
	rec, err := s.lastUpdate()
	if err != nil || rec == nil {
		return nil, err
	}
	// "installing" too: a node that lost power right after writing the new
	// entry boots the new OS with the record never updated to "staged".
	if rec.State != UpdateStaged && rec.State != UpdateBooted && rec.State != UpdateInstalling {
		return nil, nil
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("check boot: %w", err)
	}
	defer unlock()
	b, err := s.booted()
	if err != nil {
		return nil, fmt.Errorf("check boot: %w", err)
	}
	next := *rec
	next.Time = s.Now().UTC()
	switch {
	case string(b.Slot) == rec.Slot && b.Version == rec.Version:
		next.State, next.Reason = UpdateBooted, ""
		if b.Blessed {
			next.State = UpdateSuccess
		}
		if next.State == rec.State {
			return nil, nil
		}
		if next.State == UpdateSuccess {
			if err := s.clearHealthFailure(b.Slot, b.Version); err != nil {
				return nil, err
			}
		}
	case string(b.Slot) != rec.Slot && rec.State != UpdateInstalling:
		reason, ok, err := s.rollbackReason(rec)
		if err != nil || !ok {
			return nil, err
		}
		next.State = UpdateRolledBack
		next.FromVersion, next.FromSlot = b.Version, string(b.Slot)
		next.Reason = fmt.Sprintf("rolled back from %s to %s: %s", rec.Version, b.Version, reason)
	default:
		// The update's slot booted another version: not this update's boot.
		return nil, nil
	}
	if err := s.saveResult(next); err != nil {
		return nil, err
	}
	return &next, nil
}

// rollbackReason decides whether the update's slot was given up by the
// boot loader (ok) and why.
func (s System) rollbackReason(rec *Result) (reason string, ok bool, err error) {
	slot, err := layout.ParseSlot(rec.Slot)
	if err != nil {
		return "", false, fmt.Errorf("check boot: last update: %w", err)
	}
	all, err := listEntries(s.entriesDir())
	if err != nil {
		return "", false, err
	}
	e, state := slotState(entriesOf(all, slot))
	if state != SlotBad && state != SlotEmpty {
		// Tries are left (or it was blessed): the other slot was chosen by
		// hand at the boot menu, the update is still pending.
		return "", false, nil
	}
	h, err := s.healthFailure()
	if err != nil {
		return "", false, err
	}
	if h != nil && h.Slot == rec.Slot && h.Version == rec.Version {
		return h.Reason, true, nil
	}
	tries := e.name.Done
	if tries == 0 {
		tries = rec.Tries
	}
	return fmt.Sprintf("slot %s never passed the health gate in %d tries (kernel, initrd or systemd failed to start)", slot, tries), true, nil
}

func (s System) clearHealthFailure(slot layout.Slot, version string) error {
	h, err := s.healthFailure()
	if err != nil || h == nil || h.Slot != string(slot) || h.Version != version {
		return err
	}
	if err := os.Remove(s.healthFailurePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the health failure of a slot that passed: %w", err)
	}
	return nil
}
