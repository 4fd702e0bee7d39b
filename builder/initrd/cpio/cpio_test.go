package cpio

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

type testEntry struct {
	h    Header
	data string
}

func writeArchive(t *testing.T, entries []testEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range entries {
		if err := w.WriteHeader(e.h); err != nil {
			t.Fatalf("WriteHeader(%s): %v", e.h.Name, err)
		}
		if _, err := w.Write([]byte(e.data)); err != nil {
			t.Fatalf("Write(%s): %v", e.h.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

var sample = []testEntry{
	{h: Header{Name: "d", Mode: TypeDir | 0o750, Mtime: 1700000000}},
	{h: Header{Name: "d/one", Mode: TypeReg | 0o640, Mtime: 1700000000, Size: 1}, data: "x"},
	{h: Header{Name: "d/three", Mode: TypeReg | 0o4755, Mtime: 1700000000, Size: 3}, data: "abc"},
	{h: Header{Name: "d/four", Mode: TypeReg | 0o600, Mtime: 1700000000, Size: 4}, data: "wxyz"},
	{h: Header{Name: "d/empty", Mode: TypeReg | 0o644, Mtime: 1700000000}},
	{h: Header{Name: "d/link", Mode: TypeSymlink | 0o777, Mtime: 1700000000, Size: 5}, data: "three"},
	{h: Header{Name: "d/tty", Mode: TypeChar | 0o620, Mtime: 1700000000, RdevMajor: 4, RdevMinor: 7}},
}

// parsedEntry is read back with a deliberately naive walker so the test
// checks the on-disk layout (alignment, fields) without the writer's code.
type parsedEntry struct {
	ino, mode, nlink uint64
	name             string
	data             string
}

func parse(t *testing.T, b []byte) []parsedEntry {
	t.Helper()
	var out []parsedEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at offset %d is not 4-byte aligned", off)
		}
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at offset %d: %v", i, off, err)
			}
			return v
		}
		size, nameSize := int(field(6)), int(field(11))
		nameStart := off + 110
		name := string(b[nameStart : nameStart+nameSize-1])
		if b[nameStart+nameSize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		dataStart := (nameStart + nameSize + 3) &^ 3
		e := parsedEntry{ino: field(0), mode: field(1), nlink: field(4), name: name, data: string(b[dataStart : dataStart+size])}
		off = (dataStart + size + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestLayoutAndInodes(t *testing.T) {
	got := parse(t, writeArchive(t, sample))
	if len(got) != len(sample) {
		t.Fatalf("parsed %d entries, wrote %d", len(got), len(sample))
	}
	for i, e := range got {
		want := sample[i]
		if e.name != want.h.Name || e.data != want.data || uint32(e.mode) != want.h.Mode {
			t.Errorf("entry %d = %q mode %o data %q, want %q mode %o data %q", i, e.name, e.mode, e.data, want.h.Name, want.h.Mode, want.data)
		}
		if e.ino != uint64(i+1) {
			t.Errorf("%s: inode %d, want %d (sequential from 1)", e.name, e.ino, i+1)
		}
	}
}

func TestGNUCpioExtracts(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("GNU cpio not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("extracting device nodes needs root")
	}
	archive := writeArchive(t, sample)
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(archive)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	for _, e := range sample {
		p := filepath.Join(dir, e.h.Name)
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("extracted %s: %v", e.h.Name, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Mode != e.h.Mode {
			t.Errorf("%s: mode %o, want %o", e.h.Name, sys.Mode, e.h.Mode)
		}
		switch e.h.Mode & TypeMask {
		case TypeReg:
			data, err := os.ReadFile(p)
			if err != nil || string(data) != e.data {
				t.Errorf("%s: content %q (%v), want %q", e.h.Name, data, err, e.data)
			}
			if st.ModTime().Unix() != e.h.Mtime {
				t.Errorf("%s: mtime %d, want %d", e.h.Name, st.ModTime().Unix(), e.h.Mtime)
			}
		case TypeSymlink:
			if target, err := os.Readlink(p); err != nil || target != e.data {
				t.Errorf("%s: link target %q (%v), want %q", e.h.Name, target, err, e.data)
			}
		case TypeChar:
			major := uint32((sys.Rdev>>8)&0xfff) | uint32((sys.Rdev>>32)&^0xfff)
			minor := uint32(sys.Rdev&0xff) | uint32((sys.Rdev>>12)&^0xff)
			if major != e.h.RdevMajor || minor != e.h.RdevMinor {
				t.Errorf("%s: device %d,%d, want %d,%d", e.h.Name, major, minor, e.h.RdevMajor, e.h.RdevMinor)
			}
		}
	}
}

func TestWriterRejectsBadInput(t *testing.T) {
	cases := []struct {
		name    string
		h       Header
		data    string
		wantErr string
	}{
		{"empty name", Header{Mode: TypeReg | 0o644}, "", "empty name"},
		{"reserved name", Header{Name: "TRAILER!!!", Mode: TypeReg | 0o644}, "", "reserved"},
		{"fifo", Header{Name: "p", Mode: 0o010644}, "", "unsupported file type"},
		{"no type", Header{Name: "p", Mode: 0o644}, "", "unsupported file type"},
		{"dir with data", Header{Name: "d", Mode: TypeDir | 0o755, Size: 1}, "", "size must be 0"},
		{"negative mtime", Header{Name: "f", Mode: TypeReg | 0o644, Mtime: -1}, "", "mtime"},
		{"mtime past 2106", Header{Name: "f", Mode: TypeReg | 0o644, Mtime: 1 << 32}, "", "mtime"},
		{"too big", Header{Name: "f", Mode: TypeReg | 0o644, Size: 1 << 32}, "", "4 GiB"},
		{"empty symlink", Header{Name: "l", Mode: TypeSymlink | 0o777}, "", "empty target"},
		{"long data", Header{Name: "f", Mode: TypeReg | 0o644, Size: 2}, "abc", "longer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := NewWriter(&bytes.Buffer{})
			err := w.WriteHeader(c.h)
			if err == nil {
				_, err = w.Write([]byte(c.data))
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

func TestShortEntryFailsOnClose(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	if err := w.WriteHeader(Header{Name: "f", Mode: TypeReg | 0o644, Size: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "3 bytes shorter") {
		t.Fatalf("Close error %v, want a short-entry error", err)
	}
}

func TestNoWritesAfterClose(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(Header{Name: "f", Mode: TypeReg | 0o644}); err == nil {
		t.Fatal("WriteHeader after Close succeeded")
	}
}
