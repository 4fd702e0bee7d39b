// Package initrd builds berth's initial ramdisk: a gzip-compressed newc
// cpio archive holding the static Go program /init (see ./init), the kernel
// modules it loads before it can reach the slot partition, and its config.
//
// The output depends only on the inputs: entries are sorted, owned by 0:0,
// stamped with one epoch and numbered in order, and the gzip header carries
// no name or time, so two builds of the same inputs are byte-identical.
package initrd

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/berth-os/berth/builder/initrd/cpio"
)

// Paths inside the initrd that /init reads.
const (
	InitPath    = "init"
	ConfPath    = "etc/berth/initrd.conf"
	ModulesPath = "etc/berth/modules" // one path per line, relative to lib/modules/<kver>, in load order
	ShellPath   = "bin/busybox"
	ShLinkPath  = "bin/sh"
)

// What /init does when it cannot boot the slot.
const (
	OnFailReboot = "reboot"
	OnFailShell  = "shell"
	OnFailHalt   = "halt"
)

// Options are the inputs of Build.
type Options struct {
	InitBinary    string    // path of the static /init program (built elsewhere)
	Root          string    // the built OS root; modules come from Root/lib/modules/<KernelVersion>/
	KernelVersion string    // e.g. "6.1.0-28-cloud-amd64"
	Modules       []string  // requested module names ("virtio_blk", "squashfs"); '-' and '_' are equivalent
	OnFail        string    // reboot (default when empty) | shell | halt, written to ConfPath as "onfail=..."
	Shell         string    // optional static busybox, installed as /bin/busybox with /bin/sh -> busybox
	Epoch         time.Time // mtime of every entry; the zero Time means the Unix epoch
}

// Contents says what Build put in the archive.
type Contents struct {
	Modules []string // paths relative to lib/modules/<kver>, in load order
	Files   []string // every entry (directories, files, links, devices) in archive order, without leading slash
}

// Build writes the gzip-compressed initrd to w.
func Build(w io.Writer, o Options) (Contents, error) {
	mtime, err := o.validate()
	if err != nil {
		return Contents{}, err
	}
	t := newTree()
	if err := checkStaticExecutable(o.InitBinary, "init binary"); err != nil {
		return Contents{}, err
	}
	if err := t.addFileFrom(InitPath, 0o755, o.InitBinary); err != nil {
		return Contents{}, err
	}
	if o.Shell != "" {
		if err := checkStaticExecutable(o.Shell, "shell"); err != nil {
			return Contents{}, err
		}
		if err := t.addFileFrom(ShellPath, 0o755, o.Shell); err != nil {
			return Contents{}, err
		}
		if err := t.addSymlink(ShLinkPath, "busybox"); err != nil {
			return Contents{}, err
		}
	}
	modules, err := t.addModules(o)
	if err != nil {
		return Contents{}, err
	}
	onFail := o.OnFail
	if onFail == "" {
		onFail = OnFailReboot
	}
	if err := t.addFile(ConfPath, 0o644, []byte("onfail="+onFail+"\n")); err != nil {
		return Contents{}, err
	}
	var list strings.Builder
	for _, m := range modules {
		list.WriteString(m + "\n")
	}
	if err := t.addFile(ModulesPath, 0o644, []byte(list.String())); err != nil {
		return Contents{}, err
	}
	if err := t.addSkeleton(); err != nil {
		return Contents{}, err
	}
	files, err := t.write(w, mtime)
	if err != nil {
		return Contents{}, err
	}
	return Contents{Modules: modules, Files: files}, nil
}

func (o Options) validate() (mtime int64, err error) {
	if o.InitBinary == "" {
		return 0, errors.New("initrd: no init binary given")
	}
	if o.KernelVersion == "" || strings.ContainsAny(o.KernelVersion, "/\x00") || o.KernelVersion == "." || o.KernelVersion == ".." {
		return 0, fmt.Errorf("initrd: kernel version %q is not a directory name under lib/modules", o.KernelVersion)
	}
	switch o.OnFail {
	case "", OnFailReboot, OnFailHalt:
	case OnFailShell:
		// Without a shell /init could only say so and reboot: refuse the
		// build instead of shipping a rescue mode that cannot work.
		if o.Shell == "" {
			return 0, errors.New("initrd: onfail=shell needs a shell: give a static busybox as Options.Shell")
		}
	default:
		return 0, fmt.Errorf("initrd: onfail %q: want reboot, shell or halt", o.OnFail)
	}
	if !o.Epoch.IsZero() {
		mtime = o.Epoch.Unix()
	}
	if mtime < 0 || mtime > 0xffffffff {
		return 0, fmt.Errorf("initrd: epoch %s does not fit cpio's 32-bit timestamps (1970 to 2106)", o.Epoch.UTC().Format(time.RFC3339))
	}
	return mtime, nil
}

// checkStaticExecutable rejects what the kernel could not run as the first
// process of an initrd that has no shared libraries: a dynamically linked
// ELF fails with an obscure "No working init found" at boot.
func checkStaticExecutable(file, what string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("initrd: %s: %w", what, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initrd: %s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initrd: %s %s is not a regular file", what, file)
	}
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return fmt.Errorf("initrd: %s %s is not an executable (too short)", what, file)
	}
	if string(head[:2]) == "#!" {
		return nil // a script; its interpreter must be in the initrd, which is the caller's business
	}
	if string(head) != elf.ELFMAG {
		return fmt.Errorf("initrd: %s %s is not an executable (neither ELF nor #! script)", what, file)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("initrd: %s %s: bad ELF file: %w", what, file, err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("initrd: %s %s is dynamically linked, but the initrd has no shared libraries; build it statically (Go: CGO_ENABLED=0)", what, file)
		}
	}
	return nil
}

// addModules resolves the requested modules in the root and adds their
// files under lib/modules/<kver>; it returns their initrd paths in order.
func (t *tree) addModules(o Options) ([]string, error) {
	base, err := ModulesDir(o.Root)
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	modDir := filepath.Join(base, o.KernelVersion)
	if _, err := os.Stat(modDir); err != nil {
		have, _ := KernelVersions(o.Root)
		return nil, fmt.Errorf("initrd: kernel %s has no modules in the root (found: %s): %w", o.KernelVersion, strings.Join(have, ", "), err)
	}
	mods, err := ResolveModules(modDir, o.Modules)
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	prefix := path.Join("lib/modules", o.KernelVersion)
	var out []string
	for _, mod := range mods {
		src := filepath.Join(modDir, mod)
		switch ext := path.Ext(mod); ext {
		case ".ko":
			if err := t.addFileFrom(path.Join(prefix, mod), 0o644, src); err != nil {
				return nil, err
			}
			out = append(out, mod)
		case ".gz":
			// Unpacked here because /init loads modules with plain
			// finit_module, and gzip is in the standard library.
			plain := strings.TrimSuffix(mod, ext)
			data, err := gunzipFile(src)
			if err != nil {
				return nil, fmt.Errorf("initrd: compressed module %s: %w", mod, err)
			}
			if err := t.addFile(path.Join(prefix, plain), 0o644, data); err != nil {
				return nil, err
			}
			out = append(out, plain)
		default:
			return nil, fmt.Errorf("initrd: compressed module %s: not supported yet (only .ko and .ko.gz)", mod)
		}
	}
	return out, nil
}

func gunzipFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("gunzip %s: %w", file, err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("gunzip %s: %w", file, err)
	}
	return data, nil
}

// addSkeleton adds the mount points /init uses and the two device nodes
// the kernel needs before /init runs: it opens /dev/console for the first
// process's stdin, stdout and stderr.
func (t *tree) addSkeleton() error {
	dirs := []struct {
		name string
		perm uint32
	}{
		{"dev", 0o755},
		{"etc", 0o755},
		{"lib", 0o755},
		{"proc", 0o555},
		{"run", 0o755},
		{"sys", 0o555},
		{"sysroot", 0o755},
		{"tmp", 0o1777},
	}
	for _, d := range dirs {
		if err := t.addDir(d.name, d.perm); err != nil {
			return err
		}
	}
	if err := t.addCharDevice("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	return t.addCharDevice("dev/null", 0o666, 1, 3)
}

// entry is one archive member before it is written.
type entry struct {
	mode         uint32 // cpio type bits | permissions
	data         []byte // content of small files, target of symlinks
	src          string // regular file copied from disk, when data is nil
	size         int64
	major, minor uint32
}

type tree struct{ entries map[string]*entry }

func newTree() *tree { return &tree{entries: map[string]*entry{}} }

// add inserts an entry and any missing parent directories (0755).
// Re-adding a directory keeps the explicit mode; anything else added twice
// is a conflict.
func (t *tree) add(name string, e *entry) error {
	if name == "" || path.Clean(name) != name || path.IsAbs(name) || name == "." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("initrd: bad path %q", name)
	}
	if dir := path.Dir(name); dir != "." {
		if err := t.add(dir, &entry{mode: cpio.TypeDir | 0o755}); err != nil {
			return err
		}
	}
	old, ok := t.entries[name]
	if !ok {
		t.entries[name] = e
		return nil
	}
	if old.mode&cpio.TypeMask != cpio.TypeDir || e.mode&cpio.TypeMask != cpio.TypeDir {
		return fmt.Errorf("initrd: %s is added twice", name)
	}
	if e.mode != cpio.TypeDir|0o755 { // an explicit mode wins over an implied parent
		old.mode = e.mode
	}
	return nil
}

func (t *tree) addDir(name string, perm uint32) error {
	return t.add(name, &entry{mode: cpio.TypeDir | perm})
}

func (t *tree) addFile(name string, perm uint32, data []byte) error {
	if data == nil {
		data = []byte{}
	}
	return t.add(name, &entry{mode: cpio.TypeReg | perm, data: data, size: int64(len(data))})
}

func (t *tree) addFileFrom(name string, perm uint32, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initrd: %s: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initrd: %s: source %s is not a regular file", name, src)
	}
	return t.add(name, &entry{mode: cpio.TypeReg | perm, src: src, size: st.Size()})
}

func (t *tree) addSymlink(name, target string) error {
	return t.add(name, &entry{mode: cpio.TypeSymlink | 0o777, data: []byte(target), size: int64(len(target))})
}

func (t *tree) addCharDevice(name string, perm, major, minor uint32) error {
	return t.add(name, &entry{mode: cpio.TypeChar | perm, major: major, minor: minor})
}

// write emits the sorted entries as gzip(newc cpio). Sorting full paths
// puts every directory before its contents, as the kernel needs.
func (t *tree) write(w io.Writer, mtime int64) ([]string, error) {
	names := make([]string, 0, len(t.entries))
	for name := range t.entries {
		names = append(names, name)
	}
	sort.Strings(names)

	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return nil, fmt.Errorf("initrd: gzip: %w", err)
	}
	// Name and ModTime stay zero: the gzip header then depends on nothing.
	cw := cpio.NewWriter(zw)
	for _, name := range names {
		e := t.entries[name]
		h := cpio.Header{Name: name, Mode: e.mode, Mtime: mtime, Size: e.size, RdevMajor: e.major, RdevMinor: e.minor}
		if err := cw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		if err := writeData(cw, e); err != nil {
			return nil, fmt.Errorf("initrd: %s: %w", name, err)
		}
	}
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("initrd: gzip: %w", err)
	}
	return names, nil
}

func writeData(w io.Writer, e *entry) error {
	if e.src == "" {
		_, err := io.Copy(w, bytes.NewReader(e.data))
		return err
	}
	f, err := os.Open(e.src)
	if err != nil {
		return err
	}
	defer f.Close()
	// Copy exactly the size announced in the header; a file that shrank
	// since it was listed shows up as a short copy.
	if _, err := io.CopyN(w, f, e.size); err != nil {
		return fmt.Errorf("copy %s: %w", e.src, err)
	}
	return nil
}
