package layout

import (
	"regexp"
	"strconv"
	"testing"
)

var guidShape = regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$`)

func TestGUIDShapeAndDeterminism(t *testing.T) {
	inputs := [][]string{
		{"minimal", "1.0.0", "slot-a"},
		{"minimal", "1.0.0", "slot-b"},
		{"minimal", "1.0.1", "slot-a"},
		{"x"},
		{},
	}
	seen := map[string][]string{}
	for _, in := range inputs {
		g := GUID(in...)
		if !guidShape.MatchString(g) {
			t.Fatalf("GUID(%q) = %q: not an upper-case 8-4-4-4-12 UUID", in, g)
		}
		if again := GUID(in...); again != g {
			t.Fatalf("GUID(%q) not deterministic: %q then %q", in, g, again)
		}
		// Version nibble: first hex digit of the third group is 5.
		if g[14] != '5' {
			t.Errorf("GUID(%q) = %q: version nibble %c, want 5", in, g, g[14])
		}
		// RFC 4122 variant: the top two bits of the fourth group are 10,
		// so its first hex digit is 8, 9, A or B.
		v, _ := strconv.ParseUint(g[19:20], 16, 8)
		if v&0xc != 0x8 {
			t.Errorf("GUID(%q) = %q: variant nibble %X, want 8..B", in, g, v)
		}
		if prev, dup := seen[g]; dup {
			t.Errorf("GUID(%q) == GUID(%q) = %s", in, prev, g)
		}
		seen[g] = in
	}
}

func TestGUIDPartsAreSeparated(t *testing.T) {
	// Joining parts without a separator would make these collide.
	if GUID("ab", "c") == GUID("a", "bc") {
		t.Error(`GUID("ab","c") == GUID("a","bc")`)
	}
	if GUID("a", "") == GUID("a") {
		t.Error(`GUID("a","") == GUID("a")`)
	}
}

func TestSlots(t *testing.T) {
	for _, tc := range []struct {
		in                 string
		slot, other        Slot
		label              string
		part               int
		kernel, initrd, id string
	}{
		{"a", SlotA, SlotB, LabelSlotA, PartSlotA, "berth/a/vmlinuz", "berth/a/initrd.img", "berth-a"},
		{"B", SlotB, SlotA, LabelSlotB, PartSlotB, "berth/b/vmlinuz", "berth/b/initrd.img", "berth-b"},
	} {
		s, err := ParseSlot(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if s != tc.slot || s.Other() != tc.other || s.Label() != tc.label || s.Partition() != tc.part {
			t.Errorf("slot %q: got %q other %q label %q part %d", tc.in, s, s.Other(), s.Label(), s.Partition())
		}
		if KernelPath(s) != tc.kernel || InitrdPath(s) != tc.initrd || EntryID(s) != tc.id {
			t.Errorf("slot %q: paths %q %q id %q", tc.in, KernelPath(s), InitrdPath(s), EntryID(s))
		}
	}
	for _, bad := range []string{"", "c", "ab", "slot-a"} {
		if _, err := ParseSlot(bad); err == nil {
			t.Errorf("ParseSlot(%q) succeeded", bad)
		}
	}
}
