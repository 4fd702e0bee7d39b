package slot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Update states recorded in last-update.json, in the order an update
// normally goes through them.
const (
	UpdateInstalling = "installing"  // writing the passive slot; the booted OS still boots next
	UpdateFailed     = "failed"      // the install stopped; Reason says why; the booted OS still boots next
	UpdateStaged     = "staged"      // written and verified; the next boot tries it
	UpdateBooted     = "booted"      // the new OS is running but not blessed yet
	UpdateSuccess    = "success"     // the new OS is running and blessed
	UpdateRolledBack = "rolled-back" // the node is back on the other slot; Reason says why
)

// Result is the last update's record, kept in StateDir/last-update.json on
// the state partition so that both slots read and write the same one.
type Result struct {
	State       string    `json:"state"`        // one of the Update* constants
	Version     string    `json:"version"`      // the version being installed (or rolled back from)
	Slot        string    `json:"slot"`         // the slot it is written to (or rolled back from)
	FromVersion string    `json:"from_version"` // the version that was booted when it started
	FromSlot    string    `json:"from_slot"`
	Tries       int       `json:"tries,omitempty"` // boot tries the new entry started with
	Reason      string    `json:"reason,omitempty"`
	Time        time.Time `json:"time"`
}

// HealthFailure is what the health gate recorded about the booted slot
// before it gave up on it, so the other slot can report why it came back.
type HealthFailure struct {
	Slot    string    `json:"slot"`
	Version string    `json:"version"`
	Reason  string    `json:"reason"`
	Time    time.Time `json:"time"`
}

// readJSON reads path into v; ok is false when the file does not exist.
func readJSON(path string, v any) (ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("parse %s: %w (delete the file to start over)", path, err)
	}
	return true, nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(data, '\n'), 0o644)
}

// lastUpdate returns the record, or nil when no update was ever made.
func (s System) lastUpdate() (*Result, error) {
	var r Result
	ok, err := readJSON(s.lastUpdatePath(), &r)
	if err != nil || !ok {
		return nil, err
	}
	return &r, nil
}

func (s System) saveResult(r Result) error {
	if r.Time.IsZero() {
		r.Time = s.Now().UTC()
	}
	if err := writeJSON(s.lastUpdatePath(), r); err != nil {
		return fmt.Errorf("record update state %q: %w", r.State, err)
	}
	s.Log.Info("update state", "state", r.State, "version", r.Version, "slot", r.Slot, "reason", r.Reason)
	return nil
}

func (s System) healthFailure() (*HealthFailure, error) {
	var h HealthFailure
	ok, err := readJSON(s.healthFailurePath(), &h)
	if err != nil || !ok {
		return nil, err
	}
	return &h, nil
}

// RecordHealthFailure stores why the booted slot failed its health gate,
// so that after the boot loader falls back, the other slot can say why.
func (s System) RecordHealthFailure(reason string) error {
	s = s.withDefaults()
	if reason == "" {
		return fmt.Errorf("record health failure: the reason is empty")
	}
	b, err := s.booted()
	if err != nil {
		return fmt.Errorf("record health failure: %w", err)
	}
	h := HealthFailure{Slot: string(b.Slot), Version: b.Version, Reason: reason, Time: s.Now().UTC()}
	if err := writeJSON(s.healthFailurePath(), h); err != nil {
		return fmt.Errorf("record health failure: %w", err)
	}
	return nil
}
