package slot

import (
	"fmt"

	"github.com/berth-os/berth/updater/layout"
)

// Slot states in Status.
const (
	SlotEmpty      = "empty"       // no boot entry: nothing bootable in the slot
	SlotStaged     = "staged"      // an entry with tries left that has not passed its health gate: the next boot tries it
	SlotGood       = "good"        // a blessed entry: the OS passed its health gate
	SlotBad        = "bad"         // an entry with no tries left, sorted last by the boot loader
	SlotRolledBack = "rolled-back" // an update to the slot was tried and the node came back to the other slot
	SlotTrying     = "trying"      // (booted slot only) running, not blessed yet
)

// Status is a node's update state, meant to be printed as JSON.
type Status struct {
	Booted  SlotStatus    `json:"booted"`
	Other   SlotStatus    `json:"other"`
	Entries []EntryStatus `json:"entries"`
	// LastUpdate is the last update's record; null when there was none.
	LastUpdate *Result `json:"last_update"`
	// Updating is true while an updater holds the lock.
	Updating bool `json:"updating"`
	// Interrupted is true when the last install never recorded its end (the
	// updater was killed or the node lost power): install again.
	Interrupted bool `json:"interrupted"`
}

// SlotStatus is one slot's OS.
type SlotStatus struct {
	Slot    string `json:"slot"`
	Version string `json:"version,omitempty"` // from os-release for the booted slot, from the entry for the other
	State   string `json:"state"`             // one of the Slot* constants
	Entry   string `json:"entry,omitempty"`   // the entry file that decides State
}

// EntryStatus is one boot entry file on the ESP.
type EntryStatus struct {
	File       string `json:"file"`
	Slot       string `json:"slot,omitempty"` // "" for entries that are not a berth slot's
	Version    string `json:"version,omitempty"`
	Blessed    bool   `json:"blessed"`
	HasCounter bool   `json:"has_counter"`
	TriesLeft  int    `json:"tries_left"`
	TriesDone  int    `json:"tries_done"`
	Bad        bool   `json:"bad"`
	Booted     bool   `json:"booted"`
	Error      string `json:"error,omitempty"`
}

// Status reports both slots, every boot entry and the last update. It
// only reads.
func (s System) Status() (Status, error) {
	s = s.withDefaults()
	b, err := s.booted()
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	all, err := listEntries(s.entriesDir())
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	rec, err := s.lastUpdate()
	if err != nil {
		return Status{}, fmt.Errorf("status: %w", err)
	}
	st := Status{LastUpdate: rec, Updating: s.lockHeld(), Entries: []EntryStatus{}}
	st.Interrupted = rec != nil && rec.State == UpdateInstalling && !st.Updating

	st.Booted = SlotStatus{Slot: string(b.Slot), Version: b.Version, Entry: b.Entry}
	switch {
	case b.Entry == "":
		st.Booted.State = SlotEmpty
	case b.Blessed:
		st.Booted.State = SlotGood
	case b.entry.Bad():
		st.Booted.State = SlotBad
	default:
		st.Booted.State = SlotTrying
	}

	other := b.Slot.Other()
	e, state := slotState(entriesOf(all, other))
	st.Other = SlotStatus{Slot: string(other), Version: e.version, State: state, Entry: e.file}
	if (state == SlotBad || state == SlotEmpty) && triedAndLeft(rec, other) {
		st.Other.State = SlotRolledBack
		if st.Other.Version == "" {
			st.Other.Version = rec.Version
		}
	}

	for _, e := range all {
		es := EntryStatus{
			File: e.file, Slot: string(e.slot), Version: e.version,
			Blessed: e.name.Blessed(), HasCounter: e.name.HasCounter,
			TriesLeft: e.name.Left, TriesDone: e.name.Done, Bad: e.name.Bad(),
			Booted: e.slot == b.Slot && e.file == b.Entry,
		}
		if e.err != nil {
			es.Error = e.err.Error()
		}
		st.Entries = append(st.Entries, es)
	}
	return st, nil
}

// slotState classifies a slot by its entries: a blessed one wins, then
// one with tries left, then a bad one.
func slotState(mine []espEntry) (espEntry, string) {
	var staged, bad *espEntry
	for i := range mine {
		e := &mine[i]
		switch {
		case e.name.Blessed():
			return *e, SlotGood
		case e.name.Left > 0:
			if staged == nil {
				staged = e
			}
		default:
			if bad == nil {
				bad = e
			}
		}
	}
	if staged != nil {
		return *staged, SlotStaged
	}
	if bad != nil {
		return *bad, SlotBad
	}
	return espEntry{}, SlotEmpty
}

// triedAndLeft tells from the record that an update to slot was tried and
// the node is no longer on it (rolled back by the boot loader or by hand),
// also before CheckBoot recorded it.
func triedAndLeft(rec *Result, slot layout.Slot) bool {
	if rec == nil || rec.Slot != string(slot) {
		return false
	}
	switch rec.State {
	case UpdateRolledBack, UpdateStaged, UpdateBooted, UpdateSuccess:
		return true
	}
	return false
}
