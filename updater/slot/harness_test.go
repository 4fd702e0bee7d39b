package slot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

const (
	testOS      = "berth-minimal"
	testDevSize = 10 << 20
)

var testUUID = map[layout.Slot]string{layout.SlotA: "AAAAAAAA-0000-5000-8000-000000000002", layout.SlotB: "BBBBBBBB-0000-5000-8000-000000000003"}

// node is a fake berth node in a temporary directory: an ESP directory,
// a state directory, and two regular files standing in for the slot
// partitions.
type node struct {
	t    testing.TB
	root string
	sys  System
	dev  map[layout.Slot]string
}

// nodeAt builds the System of a node rooted at root (the crash child
// rebuilds it from the path alone).
func nodeAt(root string) System {
	dev := map[layout.Slot]string{layout.SlotA: filepath.Join(root, "dev-a"), layout.SlotB: filepath.Join(root, "dev-b")}
	return System{
		ESP:       filepath.Join(root, "esp"),
		StateDir:  filepath.Join(root, "var/lib/berth/update"),
		Cmdline:   filepath.Join(root, "cmdline"),
		OSRelease: filepath.Join(root, "os-release"),
		EFIVars:   filepath.Join(root, "efivars"),
		Device:    func(s layout.Slot) (string, error) { return dev[s], nil },
		PartUUID:  func(s layout.Slot) (string, error) { return strings.ToLower(testUUID[s]), nil },
		Now:       func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) },
	}
}

// newNode is booted from slot with version; its entry has the given file
// name (e.g. "berth-a.conf" blessed, "berth-a+2-1.conf" counted).
func newNode(t testing.TB, booted layout.Slot, version, entryFile string) *node {
	t.Helper()
	root := t.TempDir()
	n := &node{t: t, root: root, sys: nodeAt(root)}
	n.dev = map[layout.Slot]string{}
	for _, s := range []layout.Slot{layout.SlotA, layout.SlotB} {
		d, _ := n.sys.Device(s)
		n.dev[s] = d
		n.makeDevice(d, byte(s[0]))
	}
	n.write(n.sys.Cmdline, []byte(fmt.Sprintf("%s=PARTUUID=%s %s=%s ro quiet\n", layout.CmdlineRoot, testUUID[booted], layout.CmdlineSlot, booted)))
	n.write(n.sys.OSRelease, []byte(fmt.Sprintf("NAME=\"berth\"\nID=berth\nVERSION_ID=%q\nIMAGE_ID=%q\n%s=%q\n", version, testOS, layout.OSReleaseVersionKey, version)))
	for _, dir := range []string{n.sys.EFIVars, n.sys.StateDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.installEntry(booted, version, entryFile)
	if name, _ := layout.ParseEntryName(entryFile); name.HasCounter {
		n.setBootCount(entryFile)
	}
	return n
}

// makeDevice creates a sparse "partition" whose first and last 4 KiB are
// filled with mark, so tests see both unwanted writes and truncation.
func (n *node) makeDevice(path string, mark byte) {
	n.t.Helper()
	f, err := os.Create(path)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	block := bytes.Repeat([]byte{mark}, 4096)
	if _, err := f.WriteAt(block, 0); err != nil {
		n.t.Fatal(err)
	}
	if _, err := f.WriteAt(block, testDevSize-4096); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) write(path string, data []byte) {
	n.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) read(path string) []byte {
	n.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		n.t.Fatal(err)
	}
	return data
}

func (n *node) entryPath(file string) string { return filepath.Join(n.sys.entriesDir(), file) }

// installEntry puts a slot's entry, kernel and initrd on the ESP as the
// builder or an earlier update would have.
func (n *node) installEntry(s layout.Slot, version, file string) {
	e := layout.SlotEntry(s, version, testUUID[s], []string{"console=ttyS0"})
	n.write(n.entryPath(file), e.Render())
	n.write(n.sys.espFile(layout.KernelPath(s)), []byte("kernel of "+version))
	n.write(n.sys.espFile(layout.InitrdPath(s)), []byte("initrd of "+version))
}

// setBootCount writes LoaderBootCountPath as systemd-boot does.
func (n *node) setBootCount(file string) {
	path := `\loader\entries\` + file
	data := []byte{7, 0, 0, 0}
	for _, c := range utf16.Encode([]rune(path + "\x00")) {
		data = append(data, byte(c), byte(c>>8))
	}
	n.write(filepath.Join(n.sys.EFIVars, loaderBootCountVar), data)
}

// reboot makes the node look booted from slot with version and entry.
func (n *node) reboot(s layout.Slot, version, countedEntry string) {
	n.write(n.sys.Cmdline, []byte(fmt.Sprintf("%s=PARTUUID=%s %s=%s ro\n", layout.CmdlineRoot, testUUID[s], layout.CmdlineSlot, s)))
	n.write(n.sys.OSRelease, []byte(fmt.Sprintf("IMAGE_ID=%q\n%s=%q\n", testOS, layout.OSReleaseVersionKey, version)))
	os.Remove(filepath.Join(n.sys.EFIVars, loaderBootCountVar))
	if countedEntry != "" {
		n.setBootCount(countedEntry)
	}
}

// rename moves an entry as the boot loader or systemd-bless-boot would.
func (n *node) rename(from, to string) {
	n.t.Helper()
	if err := os.Rename(n.entryPath(from), n.entryPath(to)); err != nil {
		n.t.Fatal(err)
	}
}

// entryFiles lists every file in the entries directory.
func (n *node) entryFiles() []string {
	ents, err := os.ReadDir(n.sys.entriesDir())
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func (n *node) lastUpdate() *Result {
	n.t.Helper()
	r, err := n.sys.withDefaults().lastUpdate()
	if err != nil {
		n.t.Fatal(err)
	}
	return r
}

// nextBoot is the entry file systemd-boot would choose: entries with tries
// left (or no counter) before bad ones, then by sort-key, then the highest
// version, then the highest id.
func nextBoot(t testing.TB, esp string) string {
	t.Helper()
	all, err := listEntries(filepath.Join(esp, filepath.FromSlash(layout.EntriesDir)))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 {
		return ""
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.name.Bad() != b.name.Bad() {
			return !a.name.Bad()
		}
		if a.entry.SortKey != b.entry.SortKey {
			return a.entry.SortKey < b.entry.SortKey
		}
		if c := bootLoaderCompare(a.version, b.version); c != 0 {
			return c > 0
		}
		return bootLoaderCompare(a.name.ID, b.name.ID) > 0
	})
	return all[0].file
}

// source is an in-memory payload. Its readers can be made to fail.
type source struct {
	m                     payload.Manifest
	slot, kernel, initrd  []byte
	slotOverride          func() (io.ReadCloser, error) // replaces Slot() when set
	kernelOverride        func() (io.ReadCloser, error)
	slotOpened, slotClose int
}

func blob(data []byte) payload.Blob {
	sum := sha256.Sum256(data)
	return payload.Blob{Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

// newSource makes a payload of version with a slot image of size random
// bytes (seeded, so a child process can make the same one).
func newSource(version string, size int, seed int64) *source {
	r := rand.New(rand.NewSource(seed))
	slot := make([]byte, size)
	r.Read(slot)
	s := &source{slot: slot, kernel: []byte("kernel " + version), initrd: []byte("initrd " + version)}
	s.m = payload.Manifest{
		Schema: payload.Schema, OS: testOS, Version: version, Arch: "amd64", SlotFSType: "squashfs",
		Slot: blob(s.slot), Kernel: blob(s.kernel), Initrd: blob(s.initrd), Cmdline: []string{"console=ttyS0", "quiet"},
	}
	return s
}

func (s *source) Manifest() payload.Manifest { return s.m }
func (s *source) Slot() (io.ReadCloser, error) {
	s.slotOpened++
	if s.slotOverride != nil {
		return s.slotOverride()
	}
	return io.NopCloser(bytes.NewReader(s.slot)), nil
}
func (s *source) Kernel() (io.ReadCloser, error) {
	if s.kernelOverride != nil {
		return s.kernelOverride()
	}
	return io.NopCloser(bytes.NewReader(s.kernel)), nil
}
func (s *source) Initrd() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(s.initrd)), nil
}

// failingReader returns data, then err instead of EOF after limit bytes.
type failingReader struct {
	r     io.Reader
	limit int64
	err   error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.limit <= 0 {
		return 0, f.err
	}
	if int64(len(p)) > f.limit {
		p = p[:f.limit]
	}
	n, err := f.r.Read(p)
	f.limit -= int64(n)
	if errors.Is(err, io.EOF) {
		return n, f.err
	}
	return n, err
}

// snapshot hashes every file under root, to prove that nothing changed.
func snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if filepath.Base(path) == "lock" {
			return nil // the updater's lock file is created on first use
		}
		if fi.IsDir() {
			out[rel] = "dir"
			return nil
		}
		out[rel] = fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
		if fi.Size() > 1<<20 {
			return nil // device files: any write moves the modification time
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		out[rel] += hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, k+" (new)")
		}
	}
	sort.Strings(d)
	return d
}

func mustJSON(t testing.TB, v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
