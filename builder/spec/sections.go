package spec

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Defaults applied when a field is omitted.
const (
	DefaultMirror      = "http://deb.debian.org/debian"
	DefaultVariant     = "minbase"
	DefaultOnFail      = "reboot"
	DefaultESPSize     = 256 << 20
	DefaultSlotSize    = 512 << 20
	DefaultStateSize   = 256 << 20
	DefaultFilesystem  = "squashfs"
	DefaultCompression = "zstd"
	DefaultBootTries   = 3
	DefaultFileMode    = 0o644
)

func (d *decoder) spec(root *yaml.Node) *Spec {
	s := &Spec{
		Initrd:     Initrd{OnFail: DefaultOnFail},
		Partitions: Partitions{ESP: DefaultESPSize, Slot: DefaultSlotSize, State: DefaultStateSize},
		Slot:       SlotFS{Filesystem: DefaultFilesystem, Compression: DefaultCompression},
		Boot:       Boot{Tries: DefaultBootTries},
	}
	m, ok := d.mapping(root, "", 1, "a mapping of spec fields (name, version, ...)",
		"name", "version", "epoch", "base", "layers", "files", "units", "kernel", "initrd", "partitions", "slot", "boot", "trim")
	if !ok {
		return s
	}
	if n := d.required(m, "name"); n != nil {
		s.Name = d.checked(n, "name", "a name", validName)
	}
	if n := d.required(m, "version"); n != nil {
		s.Version = d.checked(n, "version", "a version", validVersion)
	}
	if n := d.required(m, "epoch"); n != nil {
		s.Epoch, _ = d.intRange(n, "epoch", 0, maxEpoch, "seconds since 1970 (squashfs stores 32-bit times)")
	}
	if n := d.required(m, "base"); n != nil {
		s.Base = d.base(n, m.keyLine("base"))
	}
	if n := m.get("layers"); n != nil {
		s.Layers = d.layers(n)
	}
	if n := m.get("files"); n != nil {
		s.Files = d.files(n)
	}
	if n := m.get("units"); n != nil {
		s.Units = d.units(n, m.keyLine("units"))
	}
	if n := m.get("kernel"); n != nil {
		s.Kernel = d.kernel(n, m.keyLine("kernel"))
	}
	if n := d.required(m, "initrd"); n != nil {
		s.Initrd = d.initrd(n, m.keyLine("initrd"))
	}
	if n := m.get("partitions"); n != nil {
		s.Partitions = d.partitions(n, m.keyLine("partitions"))
	}
	if n := m.get("slot"); n != nil {
		s.Slot = d.slotFS(n, m.keyLine("slot"))
	}
	if n := m.get("boot"); n != nil {
		s.Boot = d.boot(n, m.keyLine("boot"))
	}
	if n := m.get("trim"); n != nil {
		s.Trim = d.trim(n, m.keyLine("trim"))
	}
	return s
}

// checked decodes a string and validates it; valid returns a problem or "".
func (d *decoder) checked(n *yaml.Node, field, what string, valid func(string) string) string {
	v, ok := d.str(n, field, what)
	if !ok {
		return ""
	}
	if problem := valid(v); problem != "" {
		d.add(n.Line, field, "%s", problem)
		return ""
	}
	return v
}

func (d *decoder) base(n *yaml.Node, at int) Base {
	var b Base
	m, ok := d.mapping(n, "base", at, "a mapping with debian or oci", "debian", "oci")
	if !ok {
		return b
	}
	switch {
	case m.has("debian") && m.has("oci"):
		d.add(m.keyLine("oci"), "base", "both debian and oci are set; expected exactly one")
	case !m.has("debian") && !m.has("oci"):
		d.add(at, "base", "neither debian nor oci is set; expected exactly one")
	}
	if n := m.get("debian"); n != nil {
		b.Debian = d.debian(n, m.keyLine("debian"))
	}
	if n := m.get("oci"); n != nil {
		b.OCI = d.ociRef(n, "base.oci")
	}
	return b
}

func (d *decoder) debian(n *yaml.Node, at int) *Debian {
	const field = "base.debian"
	deb := &Debian{Mirror: DefaultMirror, Variant: DefaultVariant}
	m, ok := d.mapping(n, field, at, "a mapping with suite, mirror, variant and packages", "suite", "mirror", "variant", "packages")
	if !ok {
		return deb
	}
	if n := d.required(m, "suite"); n != nil {
		deb.Suite = d.checked(n, field+".suite", "a Debian suite", validSuite)
	}
	if n := m.get("mirror"); n != nil {
		if mirror := d.checked(n, field+".mirror", "a mirror URL", validMirror); mirror != "" {
			deb.Mirror = strings.TrimRight(mirror, "/")
		}
	}
	if n := m.get("variant"); n != nil {
		deb.Variant = d.checked(n, field+".variant", "an mmdebstrap variant", validVariant)
	}
	if n := m.get("packages"); n != nil {
		deb.Packages = d.stringList(n, field+".packages", "Debian package names", validPackage)
	}
	return deb
}

func (d *decoder) layers(n *yaml.Node) []Layer {
	items, ok := d.sequence(n, "layers", "a list of layers, each with oci or tar")
	if !ok {
		return nil
	}
	var out []Layer
	for i, item := range items {
		field := index("layers", i)
		m, ok := d.mapping(item, field, item.Line, "a mapping with oci or tar", "oci", "tar")
		if !ok {
			continue
		}
		var l Layer
		switch {
		case m.has("oci") && m.has("tar"):
			d.add(item.Line, field, "both oci and tar are set; expected exactly one")
		case !m.has("oci") && !m.has("tar"):
			d.add(item.Line, field, "neither oci nor tar is set; expected exactly one")
		}
		if n := m.get("oci"); n != nil {
			l.OCI = d.ociRef(n, field+".oci")
		}
		if n := m.get("tar"); n != nil {
			if p, ok := d.str(n, field+".tar", "a path to a tar file"); ok {
				l.Tar = d.localPath(n, field+".tar", p, false)
			}
		}
		out = append(out, l)
	}
	return out
}

// ociRef validates an image reference and makes local paths absolute.
func (d *decoder) ociRef(n *yaml.Node, field string) string {
	s, ok := d.str(n, field, "an image reference")
	if !ok {
		return ""
	}
	ref, problem := parseImageRef(s)
	if problem != "" {
		d.add(n.Line, field, "%s", problem)
		return ""
	}
	switch ref.transport {
	case transportOCILayout:
		dir := d.localPath(n, field, ref.path, true)
		if dir == "" {
			return ""
		}
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			d.add(n.Line, field, "%s is not an OCI image layout (no oci-layout file in %s); expected a directory written by an OCI tool", quote(ref.path), dir)
			return ""
		}
		ref.path = dir
	case transportDockerArchive:
		if ref.path = d.localPath(n, field, ref.path, false); ref.path == "" {
			return ""
		}
	}
	return ref.String()
}

// localPath resolves p against the spec's directory and checks that it
// exists as a directory (wantDir) or a file. It returns "" after a problem.
func (d *decoder) localPath(n *yaml.Node, field, p string, wantDir bool) string {
	if p == "" {
		d.add(n.Line, field, "path is empty; expected a path relative to the spec file or absolute")
		return ""
	}
	abs := p
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(d.dir, p)
	}
	abs = filepath.Clean(abs)
	info, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.add(n.Line, field, "%s does not exist (looked in %s)", p, abs)
		return ""
	case err != nil:
		d.add(n.Line, field, "cannot check %s: %v", p, unwrapPath(err))
		return ""
	case wantDir && !info.IsDir():
		d.add(n.Line, field, "%s is not a directory (looked in %s); expected a directory", p, abs)
		return ""
	case !wantDir && info.IsDir():
		d.add(n.Line, field, "%s is a directory (looked in %s); expected a file", p, abs)
		return ""
	}
	return abs
}

func (d *decoder) files(n *yaml.Node) []File {
	items, ok := d.sequence(n, "files", "a list of files, each with path and source or content")
	if !ok {
		return nil
	}
	var out []File
	seen := map[string]int{} // path -> index in items
	for i, item := range items {
		field := index("files", i)
		f, ok := d.file(item, field)
		if !ok {
			continue
		}
		if j, dup := seen[f.Path]; dup {
			d.add(item.Line, field+".path", "%s is already set by %s on line %d; expected each path once", f.Path, index("files", j), items[j].Line)
			continue
		}
		seen[f.Path] = i
		out = append(out, f)
	}
	return out
}

func (d *decoder) file(item *yaml.Node, field string) (File, bool) {
	f := File{Mode: DefaultFileMode, Line: item.Line}
	m, ok := d.mapping(item, field, item.Line, "a mapping with path and source or content",
		"path", "source", "content", "mode", "owner", "group")
	if !ok {
		return f, false
	}
	before := len(d.list)
	if n := d.required(m, "path"); n != nil {
		f.Path = d.checked(n, field+".path", "an absolute path", validFilePath)
	}
	// A bare "content:" is reported as having no value rather than
	// silently counting as absent, so presence is judged on the raw entry.
	_, hasContent := m.entries["content"]
	switch {
	case m.has("source") && hasContent:
		d.add(item.Line, field, "both source and content are set; expected exactly one")
	case !m.has("source") && !hasContent:
		d.add(item.Line, field, "neither source nor content is set; expected exactly one")
	}
	if n := m.get("source"); n != nil {
		if p, ok := d.str(n, field+".source", "a path to a file"); ok {
			f.Source = d.localPath(n, field+".source", p, false)
		}
	}
	if e, ok := m.entries["content"]; ok {
		if c, ok := d.str(e.value, field+".content", "the file's text as a string"); ok {
			f.Content = &c
		}
	}
	if n := m.get("mode"); n != nil {
		if s, ok := d.str(n, field+".mode", "an octal mode"); ok {
			mode, problem := parseMode(s)
			if problem != "" {
				d.add(n.Line, field+".mode", "%s", problem)
			}
			f.Mode = mode
		}
	}
	if n := m.get("owner"); n != nil {
		f.UID, f.Owner = d.owner(n, field+".owner", "user")
	}
	if n := m.get("group"); n != nil {
		f.GID, f.Group = d.owner(n, field+".group", "group")
	}
	return f, len(d.list) == before
}

// owner decodes a numeric id or a user/group name (then the id is -1).
func (d *decoder) owner(n *yaml.Node, field, kind string) (int, string) {
	expected := "a number from 0 to 4294967294 or a " + kind + " name"
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		id, ok := d.intRange(n, field, 0, maxID, "a "+kind+" id")
		if !ok {
			return 0, ""
		}
		return int(id), ""
	}
	s, ok := d.str(n, field, expected)
	if !ok {
		return 0, ""
	}
	if id, ok := parseDecimalID(s); ok {
		return id, ""
	}
	if !userName.MatchString(s) {
		d.add(n.Line, field, "%s is not a %s name; expected %s", quote(s), kind, expected)
		return 0, ""
	}
	return -1, s
}

func (d *decoder) units(n *yaml.Node, at int) Units {
	var u Units
	m, ok := d.mapping(n, "units", at, "a mapping with enable, disable and mask", "enable", "disable", "mask")
	if !ok {
		return u
	}
	// A unit in two lists (or twice in one) is a contradiction or a typo.
	type place struct {
		field string
		line  int
	}
	seen := map[string]place{}
	list := func(key string) []string {
		n := m.get(key)
		if n == nil {
			return nil
		}
		field := "units." + key
		names := d.stringList(n, field, "unit names", validUnit)
		if n.Kind != yaml.SequenceNode {
			return names
		}
		for i, item := range n.Content {
			if item.Kind != yaml.ScalarNode || validUnit(item.Value) != "" {
				continue // already reported by stringList
			}
			here := index(field, i)
			if p, dup := seen[item.Value]; dup {
				d.add(item.Line, here, "%s is already listed as %s on line %d; expected each unit in one place", item.Value, p.field, p.line)
				continue
			}
			seen[item.Value] = place{here, item.Line}
		}
		return names
	}
	u.Enable = list("enable")
	u.Disable = list("disable")
	u.Mask = list("mask")
	return u
}

func (d *decoder) kernel(n *yaml.Node, at int) Kernel {
	var k Kernel
	m, ok := d.mapping(n, "kernel", at, "a mapping with cmdline", "cmdline")
	if !ok {
		return k
	}
	if n := m.get("cmdline"); n != nil {
		k.Cmdline = d.stringList(n, "kernel.cmdline", "kernel arguments", validCmdlineArg)
	}
	return k
}

func (d *decoder) initrd(n *yaml.Node, at int) Initrd {
	i := Initrd{OnFail: DefaultOnFail}
	m, ok := d.mapping(n, "initrd", at, "a mapping with modules and onfail", "modules", "onfail")
	if !ok {
		return i
	}
	if n := d.required(m, "modules"); n != nil {
		i.Modules = d.stringList(n, "initrd.modules", "kernel module names", validModule)
		if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
			d.add(n.Line, "initrd.modules", "list is empty; expected the modules needed to mount the slot, like [virtio_blk, squashfs]")
		}
	}
	if n := m.get("onfail"); n != nil {
		i.OnFail = d.checked(n, "initrd.onfail", "reboot, shell or halt", validOnFail)
	}
	return i
}

func (d *decoder) partitions(n *yaml.Node, at int) Partitions {
	p := Partitions{ESP: DefaultESPSize, Slot: DefaultSlotSize, State: DefaultStateSize}
	m, ok := d.mapping(n, "partitions", at, "a mapping with esp, slot and state sizes", "esp", "slot", "state")
	if !ok {
		return p
	}
	size := func(key string, minimum int64, why string, into *int64) {
		n := m.get(key)
		if n == nil {
			return
		}
		field := "partitions." + key
		s, ok := d.str(n, field, `a size like "512MiB"`)
		if !ok {
			return
		}
		v, err := ParseSize(s)
		switch {
		case err != nil:
			d.add(n.Line, field, "%v", err)
		case v < minimum:
			d.add(n.Line, field, "%s is too small; expected at least %dMiB%s", s, minimum>>20, why)
		case v > MaxPartitionSize:
			d.add(n.Line, field, "%s is too large; expected at most %dGiB", s, MaxPartitionSize>>30)
		default:
			*into = v
		}
	}
	size("esp", MinESPSize, " (FAT32 needs it)", &p.ESP)
	size("slot", 1<<20, "", &p.Slot)
	size("state", 1<<20, "", &p.State)
	return p
}

func (d *decoder) slotFS(n *yaml.Node, at int) SlotFS {
	s := SlotFS{Filesystem: DefaultFilesystem, Compression: DefaultCompression}
	m, ok := d.mapping(n, "slot", at, "a mapping with filesystem, compression and level", "filesystem", "compression", "level")
	if !ok {
		return s
	}
	if n := m.get("filesystem"); n != nil {
		s.Filesystem = d.checked(n, "slot.filesystem", "a filesystem", validSlotFilesystem)
	}
	compressionOK := true
	if n := m.get("compression"); n != nil {
		s.Compression = d.checked(n, "slot.compression", "a squashfs compressor", validCompression)
		compressionOK = s.Compression != ""
	}
	if n := m.get("level"); n != nil && compressionOK {
		levels := compressionLevels[s.Compression]
		if levels.max == 0 {
			d.add(n.Line, "slot.level", "%s takes no level; expected no slot.level, or a compressor that has levels (gzip, lzo, zstd)", s.Compression)
		} else if v, ok := d.intRange(n, "slot.level", levels.min, levels.max, "a "+s.Compression+" level"); ok {
			s.Level = int(v)
		}
	}
	return s
}

func (d *decoder) boot(n *yaml.Node, at int) Boot {
	b := Boot{Tries: DefaultBootTries}
	m, ok := d.mapping(n, "boot", at, "a mapping with timeout and tries", "timeout", "tries")
	if !ok {
		return b
	}
	if n := m.get("timeout"); n != nil {
		if v, ok := d.intRange(n, "boot.timeout", 0, 60, "seconds"); ok {
			b.Timeout = int(v)
		}
	}
	if n := m.get("tries"); n != nil {
		if v, ok := d.intRange(n, "boot.tries", 1, 9, "a number of tries"); ok {
			b.Tries = int(v)
		}
	}
	return b
}

func (d *decoder) trim(n *yaml.Node, at int) Trim {
	var t Trim
	m, ok := d.mapping(n, "trim", at, "a mapping with paths and keep_locales", "paths", "keep_locales")
	if !ok {
		return t
	}
	if n := m.get("paths"); n != nil {
		t.Paths = d.stringList(n, "trim.paths", "absolute paths or globs", validTrimPath)
	}
	if n := m.get("keep_locales"); n != nil {
		t.KeepLocales = d.stringList(n, "trim.keep_locales", "locale names", validLocale)
	}
	return t
}
