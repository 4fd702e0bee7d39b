package slot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

// Source is an update payload whose parts can be read one by one. Each
// reader is expected to fail at its end when the bytes do not match the
// manifest; Apply checks sizes and digests again while writing.
type Source interface {
	Manifest() payload.Manifest
	Slot() (io.ReadCloser, error)
	Kernel() (io.ReadCloser, error)
	Initrd() (io.ReadCloser, error)
}

// DefaultTries is how many boots a new OS gets to pass its health gate.
const DefaultTries = 3

// MaxTries keeps the counter within what the entry name format holds and
// what makes sense: each failed try is a full boot.
const MaxTries = 99

// espMargin is kept free on the ESP beyond the new files, for the entry
// file and FAT's own bookkeeping.
const espMargin = 256 << 10

// nodeArch is the architecture payloads must be built for.
var nodeArch = runtime.GOARCH

// crashAt is called at each step of an install; tests replace it to kill
// the process there and check that the node still boots.
var crashAt = func(point string) {}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	AllowDowngrade bool // install a version not newer than the booted one
	DryRun         bool // check everything and return the plan, write nothing
	Tries          int  // boot tries of the new entry; 0 means DefaultTries
	// Progress is called after each chunk of the slot image is written.
	Progress func(done, total int64)
}

// Plan is what Apply does (or, for a dry run, would do).
type Plan struct {
	FromSlot    string `json:"from_slot"`
	FromVersion string `json:"from_version"`
	Slot        string `json:"slot"` // the passive slot written
	Version     string `json:"version"`
	Device      string `json:"device"`
	DeviceSize  int64  `json:"device_size"`
	PartUUID    string `json:"partuuid"`
	SlotSize    int64  `json:"slot_size"`
	KernelSize  int64  `json:"kernel_size"`
	InitrdSize  int64  `json:"initrd_size"`
	Entry       string `json:"entry"` // the new entry's file name
	Tries       int    `json:"tries"`
	// RemoveEntries are the passive slot's entries deleted before writing.
	RemoveEntries []string `json:"remove_entries"`
	// DemoteEntry is set when the boot loader would not prefer the new
	// version over the booted one (a downgrade, or a suffix systemd-boot
	// orders differently): the booted entry is renamed to this name with no
	// tries left, after the new entry is complete. Bad entries are sorted
	// last and among themselves by version, so the booted OS still boots if
	// the new one spends its tries.
	DemoteEntry string `json:"demote_entry,omitempty"`
	DryRun      bool   `json:"dry_run"`
}

// Apply installs src into the passive slot and makes it the next boot.
// Power loss at any point leaves the booted OS the one that boots next
// until the new OS is completely written and verified.
func (s System) Apply(ctx context.Context, src Source, o ApplyOptions) (Plan, error) {
	s = s.withDefaults()
	m := src.Manifest()
	if o.DryRun {
		return s.plan(m, o)
	}
	unlock, err := s.lock()
	if err != nil {
		return Plan{}, fmt.Errorf("apply update: %w", err)
	}
	defer unlock()
	p, err := s.plan(m, o)
	if err != nil {
		return p, err
	}
	if err := s.install(ctx, p, m, src, o); err != nil {
		return p, err
	}
	return p, nil
}

// plan checks that the update may be installed and decides every name.
func (s System) plan(m payload.Manifest, o ApplyOptions) (Plan, error) {
	if err := checkManifest(m); err != nil {
		return Plan{}, err
	}
	b, err := s.booted()
	if err != nil {
		return Plan{}, fmt.Errorf("apply update: %w", err)
	}
	if b.OS == "" {
		return Plan{}, fmt.Errorf("refusing update: %s has no IMAGE_ID, so the payload's OS %q cannot be checked against it", s.OSRelease, m.OS)
	}
	if m.OS != b.OS {
		return Plan{}, fmt.Errorf("refusing update: payload is for OS %q, this node runs %q", m.OS, b.OS)
	}
	if c := CompareVersions(m.Version, b.Version); c <= 0 && !o.AllowDowngrade {
		what := "older than"
		if c == 0 {
			what = "the same as"
		}
		return Plan{}, fmt.Errorf("refusing update: version %s is %s the booted %s (allow a downgrade to install it anyway)", m.Version, what, b.Version)
	}
	order := bootLoaderCompare(m.Version, b.Version)
	if order == 0 {
		return Plan{}, fmt.Errorf("refusing update: the boot loader orders version %s equal to the booted %s, so it could not fall back to the booted OS", m.Version, b.Version)
	}
	if b.Entry == "" {
		return Plan{}, fmt.Errorf("refusing update: no boot entry of the booted slot %s in %s (is the ESP mounted on %s?)", b.Slot, s.entriesDir(), s.ESP)
	}
	if !b.Blessed {
		return Plan{}, fmt.Errorf("refusing update: the booted entry %s is not blessed yet, and it must stay a working fallback; wait until the boot completes (boot-complete.target) and try again", b.Entry)
	}
	tries := o.Tries
	if tries == 0 {
		tries = DefaultTries
	}
	if tries < 1 || tries > MaxTries {
		return Plan{}, fmt.Errorf("refusing update: boot tries must be between 1 and %d, got %d", MaxTries, tries)
	}
	passive := b.Slot.Other()
	p := Plan{
		FromSlot: string(b.Slot), FromVersion: b.Version, Slot: string(passive), Version: m.Version,
		SlotSize: m.Slot.Size, KernelSize: m.Kernel.Size, InitrdSize: m.Initrd.Size,
		Tries: tries, DryRun: o.DryRun,
		Entry: layout.EntryName{ID: layout.EntryID(passive), HasCounter: true, Left: tries}.String(),
	}
	if order < 0 {
		p.DemoteEntry = layout.EntryName{ID: b.entry.ID, HasCounter: true, Left: 0, Done: b.entry.Done}.String()
	}
	if p.Device, err = s.Device(passive); err != nil {
		return p, fmt.Errorf("find the device of slot %s: %w", passive, err)
	}
	bootedDev, err := s.Device(b.Slot)
	if err != nil {
		return p, fmt.Errorf("find the device of the booted slot %s: %w", b.Slot, err)
	}
	if sameFile(p.Device, bootedDev) {
		return p, fmt.Errorf("refusing update: slot %s's device %s is the booted slot's device", passive, p.Device)
	}
	if p.DeviceSize, err = deviceSize(p.Device); err != nil {
		return p, err
	}
	if m.Slot.Size > p.DeviceSize {
		return p, fmt.Errorf("refusing update: the slot image is %d bytes, partition %s of slot %s holds only %d", m.Slot.Size, p.Device, passive, p.DeviceSize)
	}
	if p.PartUUID, err = s.PartUUID(passive); err != nil {
		return p, fmt.Errorf("find the PARTUUID of slot %s: %w", passive, err)
	}
	if p.PartUUID == "" || strings.ContainsAny(p.PartUUID, " \t\n=") {
		return p, fmt.Errorf("slot %s: PARTUUID %q is not usable on a kernel command line", passive, p.PartUUID)
	}
	p.PartUUID = strings.ToUpper(p.PartUUID)
	if err := s.checkESPSpace(passive, m); err != nil {
		return p, err
	}
	all, err := listEntries(s.entriesDir())
	if err != nil {
		return p, err
	}
	for _, e := range entriesOf(all, passive) {
		p.RemoveEntries = append(p.RemoveEntries, e.file)
	}
	return p, nil
}

// checkManifest refuses payloads this node cannot run or whose fields
// would end up unescaped in the boot entry.
func checkManifest(m payload.Manifest) error {
	if m.Schema != payload.Schema {
		return fmt.Errorf("refusing update: manifest schema %d, this updater reads %d", m.Schema, payload.Schema)
	}
	if m.Arch != nodeArch {
		return fmt.Errorf("refusing update: payload is for %q, this node is %s", m.Arch, nodeArch)
	}
	if err := ValidVersion(m.Version); err != nil {
		return fmt.Errorf("refusing update: %w", err)
	}
	for name, b := range map[string]payload.Blob{"slot": m.Slot, "kernel": m.Kernel, "initrd": m.Initrd} {
		if b.Size <= 0 {
			return fmt.Errorf("refusing update: manifest %s size %d", name, b.Size)
		}
		if sum, err := hex.DecodeString(b.SHA256); err != nil || len(sum) != sha256.Size {
			return fmt.Errorf("refusing update: manifest %s sha256 %q is not 64 hex digits", name, b.SHA256)
		}
	}
	for _, opt := range m.Cmdline {
		if opt == "" || strings.ContainsFunc(opt, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("refusing update: kernel command line option %q is empty or holds spaces or control characters", opt)
		}
		if k, _, _ := strings.Cut(opt, "="); k == layout.CmdlineRoot || k == layout.CmdlineSlot {
			return fmt.Errorf("refusing update: the manifest's kernel command line sets %s, which the updater owns", k)
		}
	}
	return nil
}

// checkESPSpace makes sure the new kernel and initrd fit once the passive
// slot's old ones are gone, before anything is deleted.
func (s System) checkESPSpace(passive layout.Slot, m payload.Manifest) error {
	var st unix.Statfs_t
	if err := unix.Statfs(s.ESP, &st); err != nil {
		return fmt.Errorf("check free space on the ESP %s: %w", s.ESP, err)
	}
	free := int64(st.Bavail) * st.Bsize
	for _, rel := range []string{layout.KernelPath(passive), layout.InitrdPath(passive)} {
		if fi, err := os.Stat(s.espFile(rel)); err == nil {
			free += fi.Size()
		}
	}
	if need := m.Kernel.Size + m.Initrd.Size + espMargin; need > free {
		return fmt.Errorf("refusing update: kernel and initrd need %d bytes on the ESP, %d are free", need, free)
	}
	return nil
}

// install performs the writes in the order that keeps the booted OS the
// next boot until the end; on failure it records why.
func (s System) install(ctx context.Context, p Plan, m payload.Manifest, src Source, o ApplyOptions) error {
	passive := layout.Slot(p.Slot)
	rec := Result{Version: p.Version, Slot: p.Slot, FromVersion: p.FromVersion, FromSlot: p.FromSlot, Tries: p.Tries}
	rec.State = UpdateInstalling
	if err := s.saveResult(rec); err != nil {
		return err
	}
	crashAt("recorded")
	if err := s.installSteps(ctx, p, m, src, o, passive); err != nil {
		// A half-installed slot must not be bootable: take its entries away
		// again (a failure after the entry was written, while demoting).
		if rmErr := s.removeSlotEntries(passive); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		rec.State, rec.Reason, rec.Time = UpdateFailed, err.Error(), s.Now().UTC()
		if recErr := s.saveResult(rec); recErr != nil {
			err = errors.Join(err, recErr)
		}
		return fmt.Errorf("apply update %s to slot %s: %w", p.Version, p.Slot, err)
	}
	rec.State, rec.Time = UpdateStaged, s.Now().UTC()
	return s.saveResult(rec)
}

func (s System) installSteps(ctx context.Context, p Plan, m payload.Manifest, src Source, o ApplyOptions, passive layout.Slot) error {
	// A recorded health failure describes what the passive slot held before.
	if h, err := s.healthFailure(); err == nil && h != nil && h.Slot == p.Slot {
		if err := os.Remove(s.healthFailurePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old health failure: %w", err)
		}
	}
	// From here on the passive slot cannot be booted.
	if err := s.removeSlotEntries(passive); err != nil {
		return err
	}
	crashAt("entries-removed")

	if err := s.writeSlotFrom(ctx, p, m, src, o.Progress); err != nil {
		return err
	}
	crashAt("slot-written")

	if err := s.writeBootFiles(ctx, passive, m, src); err != nil {
		return err
	}
	crashAt("boot-files-written")

	// The entry makes the new OS the next boot: a cancelled apply (the
	// agent stopping, a rollout aborted) must not get that far, even when
	// the copies were quick enough to finish without noticing.
	if err := ctx.Err(); err != nil {
		return err
	}
	entry := layout.SlotEntry(passive, p.Version, p.PartUUID, m.Cmdline)
	if err := writeFileAtomic(filepath.Join(s.entriesDir(), p.Entry), entry.Render(), 0o644); err != nil {
		return fmt.Errorf("write boot entry %s: %w", p.Entry, err)
	}
	crashAt("entry-written")

	if p.DemoteEntry != "" {
		if err := s.demoteBooted(p); err != nil {
			return err
		}
		crashAt("booted-demoted")
	}
	return nil
}

func (s System) writeSlotFrom(ctx context.Context, p Plan, m payload.Manifest, src Source, progress func(done, total int64)) error {
	rc, err := src.Slot()
	if err != nil {
		return fmt.Errorf("open the payload's slot image: %w", err)
	}
	defer rc.Close()
	halfway := false
	report := func(done, total int64) {
		if progress != nil {
			progress(done, total)
		}
		if !halfway && done >= total/2 {
			halfway = true
			crashAt("slot-half-written")
		}
	}
	return writeSlot(ctx, p.Device, rc, m.Slot, report)
}

// writeBootFiles replaces the passive slot's kernel and initrd on the ESP.
// The booted slot's files live in another directory and are not touched.
func (s System) writeBootFiles(ctx context.Context, passive layout.Slot, m payload.Manifest, src Source) error {
	kernel, initrd := s.espFile(layout.KernelPath(passive)), s.espFile(layout.InitrdPath(passive))
	dir := filepath.Dir(kernel)
	if err := removeTemps(dir); err != nil {
		return err
	}
	// Free the old files first: the ESP may only have room for one set
	// per slot, and nothing refers to them since the entries are gone.
	for _, f := range []string{kernel, initrd} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old %s: %w", f, err)
		}
	}
	parts := []struct {
		path string
		blob payload.Blob
		open func() (io.ReadCloser, error)
		name string
	}{
		{kernel, m.Kernel, src.Kernel, "kernel"},
		{initrd, m.Initrd, src.Initrd, "initrd"},
	}
	for _, part := range parts {
		err := replaceFile(part.path, 0o644, func(f *os.File) error {
			rc, err := part.open()
			if err != nil {
				return fmt.Errorf("open the payload's %s: %w", part.name, err)
			}
			defer rc.Close()
			return copyVerified(ctx, f, rc, part.blob, nil)
		})
		if err != nil {
			return fmt.Errorf("write %s: %w", part.name, err)
		}
		crashAt(part.name + "-written")
	}
	return nil
}

// demoteBooted renames the booted entry to one with no tries left, so the
// boot loader prefers the new entry although it does not sort first by
// version.
func (s System) demoteBooted(p Plan) error {
	b, err := s.booted()
	if err != nil {
		return err
	}
	dir := s.entriesDir()
	if err := os.Rename(filepath.Join(dir, b.Entry), filepath.Join(dir, p.DemoteEntry)); err != nil {
		return fmt.Errorf("demote booted entry %s: %w", b.Entry, err)
	}
	return syncDir(dir)
}

// sameFile is true when both paths name the same device or file.
func sameFile(a, b string) bool {
	if ra, err := filepath.EvalSymlinks(a); err == nil {
		a = ra
	}
	if rb, err := filepath.EvalSymlinks(b); err == nil {
		b = rb
	}
	if a == b {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA != nil || errB != nil {
		return false
	}
	if os.SameFile(fa, fb) {
		return true
	}
	// Two device nodes of one partition (e.g. /dev/vda3 and a copy made by
	// mknod) are different files: compare the devices they stand for.
	if fa.Mode()&os.ModeDevice != 0 && fb.Mode()&os.ModeDevice != 0 {
		sa, okA := fa.Sys().(*syscall.Stat_t)
		sb, okB := fb.Sys().(*syscall.Stat_t)
		return okA && okB && sa.Rdev == sb.Rdev
	}
	return false
}

// deviceSize works for block devices (whose Stat size is 0) and files.
func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return n, nil
}
