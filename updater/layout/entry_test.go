package layout

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEntryNameValid(t *testing.T) {
	tests := []struct {
		name          string
		want          EntryName
		blessed, bad  bool
		canonicalName string // String() of the parse; "" means name itself
	}{
		{name: "berth-a.conf", want: EntryName{ID: "berth-a"}, blessed: true},
		{name: "berth-a+3.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 3}},
		{name: "berth-a+2-1.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 2, Done: 1}},
		{name: "berth-a+0-3.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 0, Done: 3}, bad: true},
		{name: "berth-b+0.conf", want: EntryName{ID: "berth-b", HasCounter: true}, bad: true},
		// The last '+' starts the counter; earlier ones belong to the id.
		{name: "a+b+1.conf", want: EntryName{ID: "a+b", HasCounter: true, Left: 1}},
		// Non-canonical spellings systemd-boot accepts parse to the same value.
		{name: "berth-a+03.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 3}, canonicalName: "berth-a+3.conf"},
		{name: "berth-a+3-0.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 3}, canonicalName: "berth-a+3.conf"},
		{name: "berth-a+9999-9999.conf", want: EntryName{ID: "berth-a", HasCounter: true, Left: 9999, Done: 9999}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEntryName(tc.name)
			if err != nil {
				t.Fatalf("ParseEntryName: %v", err)
			}
			if got != tc.want {
				t.Fatalf("ParseEntryName = %+v, want %+v", got, tc.want)
			}
			if got.Blessed() != tc.blessed || got.Bad() != tc.bad {
				t.Errorf("Blessed/Bad = %v/%v, want %v/%v", got.Blessed(), got.Bad(), tc.blessed, tc.bad)
			}
			wantName := tc.canonicalName
			if wantName == "" {
				wantName = tc.name
			}
			if s := got.String(); s != wantName {
				t.Errorf("String() = %q, want %q", s, wantName)
			}
			again, err := ParseEntryName(got.String())
			if err != nil || again != got {
				t.Errorf("reparse of %q = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseEntryNameInvalid(t *testing.T) {
	for _, name := range []string{
		"", ".conf", "x+.conf", "x+a.conf", "+3.conf", "x.txt", "berth-a+3",
		"x+3-.conf", "x+-1.conf", "x+3-a.conf", "x+3-1-2.conf", "x+ 3.conf", "x+12345.conf",
		"x+3-12345.conf", "dir/berth-a+3.conf", "../berth-a.conf",
	} {
		if got, err := ParseEntryName(name); err == nil {
			t.Errorf("ParseEntryName(%q) = %+v, want an error", name, got)
		} else if !strings.Contains(err.Error(), "boot entry") {
			t.Errorf("ParseEntryName(%q) error %q does not say what it parsed", name, err)
		}
	}
}

func TestEntryNameStringOfConstructedNames(t *testing.T) {
	// The builder and updater construct names; they must be exactly what
	// systemd-boot expects on disk.
	n := EntryName{ID: EntryID(SlotB), HasCounter: true, Left: 3}
	if got := n.String(); got != "berth-b+3.conf" {
		t.Errorf("String() = %q", got)
	}
	n.Left, n.Done = 1, 2
	if got := n.String(); got != "berth-b+1-2.conf" {
		t.Errorf("String() = %q", got)
	}
	n.HasCounter = false
	if got := n.String(); got != "berth-b.conf" {
		t.Errorf("String() = %q", got)
	}
}

func sampleEntry() Entry {
	return Entry{
		Title:   "berth 1.2.3 (slot a)",
		Version: "1.2.3",
		SortKey: "berth",
		Linux:   KernelPath(SlotA),
		Initrd:  InitrdPath(SlotA),
		Options: []string{CmdlineRoot + "=PARTUUID=" + GUID("x"), CmdlineSlot + "=a", "ro", "console=ttyS0,115200"},
	}
}

func TestEntryRender(t *testing.T) {
	got := string(sampleEntry().Render())
	want := "title    berth 1.2.3 (slot a)\n" +
		"version  1.2.3\n" +
		"sort-key berth\n" +
		"linux    /berth/a/vmlinuz\n" +
		"initrd   /berth/a/initrd.img\n" +
		"options  berth.root=PARTUUID=" + GUID("x") + " berth.slot=a ro console=ttyS0,115200\n"
	if got != want {
		t.Errorf("Render() =\n%s\nwant\n%s", got, want)
	}
}

func TestEntryRenderOmitsEmptyFields(t *testing.T) {
	got := string(Entry{Linux: "/vmlinuz"}.Render())
	if got != "linux    /vmlinuz\n" {
		t.Errorf("Render() = %q: empty fields (title, initrd, options...) must not be written", got)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	e := sampleEntry()
	got, err := ParseEntry(e.Render())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Errorf("ParseEntry(Render()) = %+v, want %+v", got, e)
	}
}

func TestParseEntry(t *testing.T) {
	data := "# a comment\n" +
		"\n" +
		"title\tMy OS\r\n" + // tab separator and CRLF
		"  version   7  \n" +
		"machine-id 0123\n" + // unknown key: ignored
		"linux //berth/b/vmlinuz\n" +
		"initrd /berth/b/initrd.img\n" +
		"options a=1  b=2\n" +
		"options\tc\n" + // repeated options accumulate
		"version 8\n" // repeated other keys: last wins
	e, err := ParseEntry([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Title: "My OS", Version: "8", Linux: "berth/b/vmlinuz", Initrd: "berth/b/initrd.img", Options: []string{"a=1", "b=2", "c"}}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("ParseEntry = %+v, want %+v", e, want)
	}
}

func TestParseEntryErrors(t *testing.T) {
	for name, data := range map[string]string{
		"no linux":      "title x\noptions ro\n",
		"empty":         "",
		"key only":      "linux /v\ntitle\n",
		"linux is root": "linux /\n",
	} {
		if e, err := ParseEntry([]byte(data)); err == nil {
			t.Errorf("%s: ParseEntry = %+v, want an error", name, e)
		}
	}
}

func TestEntryOption(t *testing.T) {
	e := Entry{Options: []string{"ro", "berth.root=PARTUUID=ab=cd", "berth.slot=b", "empty="}}
	for _, tc := range []struct {
		key, val string
		ok       bool
	}{
		{CmdlineRoot, "PARTUUID=ab=cd", true}, // only the first '=' separates
		{CmdlineSlot, "b", true},
		{"empty", "", true},
		{"ro", "", false}, // a flag without '=' is not a key=value option
		{"berth", "", false},
		{"missing", "", false},
	} {
		v, ok := e.Option(tc.key)
		if v != tc.val || ok != tc.ok {
			t.Errorf("Option(%q) = %q, %v; want %q, %v", tc.key, v, ok, tc.val, tc.ok)
		}
	}
}

func FuzzParseEntryName(f *testing.F) {
	for _, s := range []string{
		"berth-a.conf", "berth-a+3.conf", "berth-a+2-1.conf", "berth-a+0-3.conf", "x+.conf", "x+a.conf",
		"+3.conf", "x.txt", ".conf", "a+b+1.conf", "x+03-00.conf", "x+3-", "x+99999.conf", "a/b.conf",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		e, err := ParseEntryName(name)
		if err != nil {
			return
		}
		if e.ID == "" || e.Left < 0 || e.Done < 0 {
			t.Fatalf("ParseEntryName(%q) = %+v: empty id or negative counter", name, e)
		}
		if !e.HasCounter && (e.Left != 0 || e.Done != 0) {
			t.Fatalf("ParseEntryName(%q) = %+v: counts without a counter", name, e)
		}
		s := e.String()
		again, err := ParseEntryName(s)
		if err != nil {
			t.Fatalf("ParseEntryName(%q) = %+v, but its String() %q does not parse: %v", name, e, s, err)
		}
		if again != e {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v", name, e, s, again)
		}
		if again.String() != s {
			t.Fatalf("String() is not stable: %q -> %q", s, again.String())
		}
	})
}

func FuzzParseEntry(f *testing.F) {
	f.Add(string(sampleEntry().Render()))
	f.Add("linux /v\n")
	f.Add("title\tx\nlinux\t//v\ninitrd /i\noptions a b\noptions c\n")
	f.Add("# c\n\nlinux /v\r\nversion 1\nversion 2\n")
	f.Add("title\n")
	f.Add("linux /\n")
	f.Add("options \u00a0x\u2028y\nlinux a b\n")
	f.Fuzz(func(t *testing.T, data string) {
		e, err := ParseEntry([]byte(data))
		if err != nil {
			return
		}
		if e.Linux == "" {
			t.Fatalf("ParseEntry(%q) succeeded without a kernel", data)
		}
		out := e.Render()
		again, err := ParseEntry(out)
		if err != nil {
			t.Fatalf("ParseEntry(%q) = %+v, but its rendering %q does not parse: %v", data, e, out, err)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v", data, e, out, again)
		}
		if string(again.Render()) != string(out) {
			t.Fatalf("Render is not stable: %q -> %q", out, again.Render())
		}
	})
}
