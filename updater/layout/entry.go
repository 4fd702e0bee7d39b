package layout

import (
	"fmt"
	"strconv"
	"strings"
)

// EntryName is a Boot Loader Specification entry file name with the
// optional boot counter that systemd-boot maintains:
//
//	berth-a.conf        blessed (no counter)
//	berth-a+3.conf      3 tries left, none done yet
//	berth-a+2-1.conf    2 tries left, 1 done
//	berth-a+0-3.conf    no tries left: the entry is "bad" and sorted last
type EntryName struct {
	ID         string // e.g. "berth-a"
	HasCounter bool
	Left       int
	Done       int
}

const entrySuffix = ".conf"

// ParseEntryName parses an entry file name (base name only).
func ParseEntryName(name string) (EntryName, error) {
	base, ok := strings.CutSuffix(name, entrySuffix)
	if !ok || base == "" {
		return EntryName{}, fmt.Errorf("boot entry %q: name must end in %s", name, entrySuffix)
	}
	// Callers join the name to the entries directory: a path is never a name.
	if strings.ContainsAny(name, "/\x00") {
		return EntryName{}, fmt.Errorf("boot entry %q: a file name may not contain '/' or NUL", name)
	}
	i := strings.LastIndexByte(base, '+')
	if i < 0 {
		return EntryName{ID: base}, nil
	}
	id, counter := base[:i], base[i+1:]
	if id == "" {
		return EntryName{}, fmt.Errorf("boot entry %q: empty id before the counter", name)
	}
	left, done, hasDone := strings.Cut(counter, "-")
	e := EntryName{ID: id, HasCounter: true}
	var err error
	if e.Left, err = parseCount(left); err != nil {
		return EntryName{}, fmt.Errorf("boot entry %q: tries left: %w", name, err)
	}
	if hasDone {
		if e.Done, err = parseCount(done); err != nil {
			return EntryName{}, fmt.Errorf("boot entry %q: tries done: %w", name, err)
		}
	}
	return e, nil
}

func parseCount(s string) (int, error) {
	if s == "" || len(s) > 4 {
		return 0, fmt.Errorf("%q is not a small decimal number", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a small decimal number", s)
		}
	}
	return strconv.Atoi(s)
}

// String renders the file name.
func (e EntryName) String() string {
	if !e.HasCounter {
		return e.ID + entrySuffix
	}
	if e.Done == 0 {
		return fmt.Sprintf("%s+%d%s", e.ID, e.Left, entrySuffix)
	}
	return fmt.Sprintf("%s+%d-%d%s", e.ID, e.Left, e.Done, entrySuffix)
}

// Blessed reports an entry without a counter: it has proved itself.
func (e EntryName) Blessed() bool { return !e.HasCounter }

// Bad reports an entry whose tries are spent.
func (e EntryName) Bad() bool { return e.HasCounter && e.Left == 0 }

// Entry is the content of a type 1 boot entry for one slot.
type Entry struct {
	Title   string
	Version string
	SortKey string
	Linux   string // ESP path, leading slash added when rendered
	Initrd  string
	Options []string
}

// Render writes the entry file in the Boot Loader Specification format,
// keys in a fixed order so builds are reproducible.
func (e Entry) Render() []byte {
	var b strings.Builder
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%-8s %s\n", k, v)
		}
	}
	kv("title", e.Title)
	kv("version", e.Version)
	kv("sort-key", e.SortKey)
	kv("linux", espPath(e.Linux))
	kv("initrd", espPath(e.Initrd))
	kv("options", strings.Join(e.Options, " "))
	return []byte(b.String())
}

// espPath gives an ESP-relative path its leading slash; "" stays "" so an
// entry without an initrd has no "initrd /" line.
func espPath(p string) string {
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return ""
	}
	return "/" + p
}

// ParseEntry reads an entry file; unknown keys are kept out (the updater only
// needs these), repeated keys other than options keep the last value.
func ParseEntry(data []byte) (Entry, error) {
	var e Entry
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// Key and value are separated by spaces or tabs (Boot Loader Specification).
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return Entry{}, fmt.Errorf("boot entry line %d: %q has no value", n+1, line)
		}
		k, v := line[:i], strings.TrimSpace(line[i+1:])
		switch k {
		case "title":
			e.Title = v
		case "version":
			e.Version = v
		case "sort-key":
			e.SortKey = v
		case "linux":
			e.Linux = strings.TrimLeft(v, "/")
		case "initrd":
			e.Initrd = strings.TrimLeft(v, "/")
		case "options":
			e.Options = append(e.Options, strings.Fields(v)...)
		}
	}
	if e.Linux == "" {
		return Entry{}, fmt.Errorf("boot entry has no linux line")
	}
	return e, nil
}

// Option returns the value of key=value in the entry's options.
func (e Entry) Option(key string) (string, bool) {
	for _, o := range e.Options {
		if k, v, ok := strings.Cut(o, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// SlotEntry is the boot entry of the OS in a slot: the builder writes it
// for slot A, the updater for whichever slot it installs into.
func SlotEntry(slot Slot, version, partUUID string, cmdline []string) Entry {
	opts := []string{
		CmdlineRoot + "=PARTUUID=" + partUUID,
		CmdlineSlot + "=" + string(slot),
		"ro",
	}
	opts = append(opts, cmdline...)
	return Entry{
		Title:   fmt.Sprintf("berth %s (slot %s)", version, slot),
		Version: version,
		SortKey: "berth",
		Linux:   KernelPath(slot),
		Initrd:  InitrdPath(slot),
		Options: opts,
	}
}
