// Package spec reads berth image specs: YAML files that say which base
// root to build, what to add to it, and how to lay out the disk. Parsing is
// strict (unknown fields, wrong types and duplicate keys are errors) and
// every problem is reported as one line, FILE:LINE: FIELD: problem;
// expectation, for the first problem in the file.
package spec

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Spec is a parsed, validated image spec with defaults applied.
type Spec struct {
	Name    string
	Version string
	// Epoch is SOURCE_DATE_EPOCH: every timestamp in the image is clamped to it.
	Epoch      int64
	Base       Base
	Layers     []Layer
	Files      []File
	Units      Units
	Kernel     Kernel
	Initrd     Initrd
	Partitions Partitions
	Slot       SlotFS
	Boot       Boot
	Trim       Trim

	Dir  string // absolute directory of the spec file, for relative sources; not from YAML
	Path string // the spec file path as given; not from YAML
}

// Base is the root filesystem the image starts from: exactly one is set.
type Base struct {
	Debian *Debian
	// OCI is an image reference: a registry reference such as
	// "docker.io/library/debian:bookworm", "oci-layout:DIR[:TAG|@sha256:HEX]"
	// or "docker-archive:FILE". Local DIR and FILE are made absolute
	// (relative ones are taken from the spec's directory) and checked to exist.
	OCI string
}

// Debian is a base root built with mmdebstrap.
type Debian struct {
	Suite    string
	Mirror   string // without trailing slash
	Variant  string
	Packages []string
}

// Layer is applied on top of the base root: exactly one field is set.
type Layer struct {
	OCI string // every layer of that image, same forms as Base.OCI
	Tar string // absolute path of a plain tar (optionally gzip-compressed)
}

// File is a file the builder writes into the root.
type File struct {
	Path    string  // absolute, clean, not "/"
	Source  string  // absolute path on the build machine; "" when Content is set
	Content *string // the file's bytes; nil when Source is set
	// Mode holds unix permission bits plus setuid/setgid/sticky, e.g. 04755.
	Mode uint32
	// UID and GID are numeric ids; when the YAML names a user or group
	// instead, Owner or Group holds the name and UID or GID is -1, so a
	// builder that forgets to resolve names fails instead of writing root.
	UID, GID     int
	Owner, Group string
	Line         int // line of the YAML item, for later error messages (see Spec.ErrorAt)
}

// Units are systemd unit names to enable, disable or mask in the root.
type Units struct {
	Enable, Disable, Mask []string
}

// Kernel holds extra kernel command line arguments, one per item.
type Kernel struct {
	Cmdline []string
}

// Initrd says what the berth initrd loads and does on failure.
type Initrd struct {
	Modules []string
	OnFail  string // reboot, shell or halt
}

// Partitions are sizes in bytes, each a whole number of MiB.
type Partitions struct {
	ESP, Slot, State int64
}

// SlotFS is how the read-only OS slot filesystem is made.
type SlotFS struct {
	Filesystem  string // squashfs
	Compression string // gzip, xz, lz4, lzo or zstd
	Level       int    // 0 means the compressor's default
}

// Boot configures systemd-boot.
type Boot struct {
	Timeout int // menu timeout in seconds
	Tries   int // boot counter of a new entry
}

// Trim lists what the builder removes from the root on top of its defaults.
type Trim struct {
	Paths       []string // absolute paths or globs
	KeepLocales []string
}

// maxSpecSize bounds what Load reads: a spec is text, large payloads belong
// in files referenced by source.
const maxSpecSize = 4 << 20

// Load reads and parses the spec file at path.
func Load(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read spec %s: %w", path, unwrapPath(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSpecSize+1))
	if err != nil {
		return nil, fmt.Errorf("read spec %s: %w", path, unwrapPath(err))
	}
	if len(data) > maxSpecSize {
		return nil, fmt.Errorf("read spec %s: larger than %d MiB; move big contents into files and use source", path, maxSpecSize>>20)
	}
	return Parse(path, data)
}

// unwrapPath drops the *fs.PathError wrapper, whose text repeats the path
// the caller already names; errors.Is(err, fs.ErrNotExist) still works.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Parse parses and validates spec data. path is used in messages and to
// resolve relative sources; referenced files must exist.
func Parse(path string, data []byte) (*Spec, error) {
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("spec %s: resolve its directory: %w", path, err)
	}
	d := &decoder{problems: problems{file: path}, dir: dir}
	root, err := parseYAML(path, data)
	if err != nil {
		return nil, err
	}
	s := d.spec(root)
	if err := d.first(); err != nil {
		return nil, err
	}
	s.Dir, s.Path = dir, path
	return s, nil
}
