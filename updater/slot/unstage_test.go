package slot

import (
	"strings"
	"testing"

	"github.com/berth-os/berth/updater/layout"
)

func TestUnstage(t *testing.T) {
	n := newNode(t, layout.SlotA, "1.0.0", "berth-a.conf")
	if v, err := n.sys.Unstage("nothing staged"); err != nil || v != "" {
		t.Fatalf("Unstage with nothing staged = %q, %v", v, err)
	}
	mustApply(t, n, "1.1.0")
	if got := nextBoot(t, n.sys.ESP); got != "berth-b+3.conf" {
		t.Fatalf("next boot after apply = %s", got)
	}
	v, err := n.sys.Unstage("rollout aborted")
	if err != nil || v != "1.1.0" {
		t.Fatalf("Unstage = %q, %v", v, err)
	}
	if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf" {
		t.Errorf("entries after unstage = %v", files)
	}
	if got := nextBoot(t, n.sys.ESP); got != "berth-a.conf" {
		t.Errorf("next boot after unstage = %s, want the booted OS", got)
	}
	r := n.lastUpdate()
	if r.State != UpdateCancelled || r.Reason != "rollout aborted" || r.Version != "1.1.0" || r.Slot != "b" {
		t.Errorf("record = %+v", r)
	}
	// A reboot into the same OS records nothing: the update is not
	// mistaken for a rollback.
	n.reboot(layout.SlotA, "1.0.0", "berth-a.conf")
	if r, err := n.sys.CheckBoot(); err != nil || r != nil {
		t.Errorf("CheckBoot after unstage = %+v, %v", r, err)
	}
	// A blessed other slot is a rollback target and is never withdrawn.
	n.installEntry(layout.SlotB, "0.9.0", "berth-b.conf")
	if v, err := n.sys.Unstage("x"); err != nil || v != "" {
		t.Errorf("Unstage of a good slot = %q, %v", v, err)
	}
	if files := n.entryFiles(); strings.Join(files, " ") != "berth-a.conf berth-b.conf" {
		t.Errorf("entries = %v", files)
	}
}
