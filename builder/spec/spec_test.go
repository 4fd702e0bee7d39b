package spec

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// workspace makes a directory with an images/ tree holding the files the
// test specs refer to, and makes it the working directory so that messages
// name "images/x.yaml" as a user would see them.
func workspace(t *testing.T) (imagesDir string) {
	t.Helper()
	root := t.TempDir()
	imagesDir = filepath.Join(root, "images")
	for name, content := range map[string]string{
		"files/motd":              "hello\n",
		"layers/site.tar":         "not really a tar, only its existence is checked",
		"layers/extra/oci-layout": `{"imageLayoutVersion":"1.0.0"}`,
		"layers/noimage/readme":   "a directory without oci-layout",
		"base.tar":                "archive",
	} {
		p := filepath.Join(imagesDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(root)
	return imagesDir
}

const fullSpec = `# every field set
name: berth-minimal
version: 1.0.0-rc.1
epoch: 1700000000
base:
  debian:
    suite: bookworm
    mirror: http://deb.example.org/debian/
    variant: apt
    packages: [systemd-sysv, linux-image-cloud-amd64]
layers:
  - oci: "oci-layout:layers/extra:v1"
  - tar: layers/site.tar
files:
  - path: /etc/berth/motd
    source: files/motd
  - path: /usr/local/bin/tool
    content: "#!/bin/sh\n"
    mode: "4755"
    owner: nobody
    group: adm
  - path: /etc/empty
    content: ""
    mode: 0600
    owner: 1000
    group: "100"
units:
  enable: [systemd-networkd.service, getty@ttyS0.service]
  disable: [apt-daily.timer]
  mask: [tmp.mount]
kernel:
  cmdline: [console=ttyS0, quiet]
initrd:
  modules: [virtio_pci, virtio_blk, squashfs, overlay, vfat]
  onfail: shell
partitions:
  esp: 66M
  slot: 1GiB
  state: 300MiB
slot:
  filesystem: squashfs
  compression: gzip
  level: 9
boot:
  timeout: 5
  tries: 2
trim:
  paths: [/usr/share/doc/*, /var/cache/apt]
  keep_locales: [C.UTF-8, en_US.UTF-8]
`

func TestParseFullSpec(t *testing.T) {
	images := workspace(t)
	got, err := Parse("images/full.yaml", []byte(fullSpec))
	if err != nil {
		t.Fatal(err)
	}
	shebang, empty := "#!/bin/sh\n", ""
	want := &Spec{
		Name:    "berth-minimal",
		Version: "1.0.0-rc.1",
		Epoch:   1700000000,
		Base: Base{Debian: &Debian{
			Suite:    "bookworm",
			Mirror:   "http://deb.example.org/debian",
			Variant:  "apt",
			Packages: []string{"systemd-sysv", "linux-image-cloud-amd64"},
		}},
		Layers: []Layer{
			{OCI: "oci-layout:" + filepath.Join(images, "layers/extra") + ":v1"},
			{Tar: filepath.Join(images, "layers/site.tar")},
		},
		Files: []File{
			{Path: "/etc/berth/motd", Source: filepath.Join(images, "files/motd"), Mode: 0o644, Line: 15},
			{Path: "/usr/local/bin/tool", Content: &shebang, Mode: 0o4755, UID: -1, GID: -1, Owner: "nobody", Group: "adm", Line: 17},
			{Path: "/etc/empty", Content: &empty, Mode: 0o600, UID: 1000, GID: 100, Line: 22},
		},
		Units: Units{
			Enable:  []string{"systemd-networkd.service", "getty@ttyS0.service"},
			Disable: []string{"apt-daily.timer"},
			Mask:    []string{"tmp.mount"},
		},
		Kernel:     Kernel{Cmdline: []string{"console=ttyS0", "quiet"}},
		Initrd:     Initrd{Modules: []string{"virtio_pci", "virtio_blk", "squashfs", "overlay", "vfat"}, OnFail: "shell"},
		Partitions: Partitions{ESP: 66 << 20, Slot: 1 << 30, State: 300 << 20},
		Slot:       SlotFS{Filesystem: "squashfs", Compression: "gzip", Level: 9},
		Boot:       Boot{Timeout: 5, Tries: 2},
		Trim:       Trim{Paths: []string{"/usr/share/doc/*", "/var/cache/apt"}, KeepLocales: []string{"C.UTF-8", "en_US.UTF-8"}},
		Dir:        images,
		Path:       "images/full.yaml",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parsed spec differs\n got: %+v\nwant: %+v", got, want)
		for i := range min(len(got.Files), len(want.Files)) {
			if !reflect.DeepEqual(got.Files[i], want.Files[i]) {
				t.Errorf("files[%d]\n got: %+v\nwant: %+v", i, got.Files[i], want.Files[i])
			}
		}
	}
}

func TestParseAppliesDefaults(t *testing.T) {
	images := workspace(t)
	got, err := Parse("images/min.yaml", []byte(`name: tiny
version: "2"
epoch: 0
base:
  debian:
    suite: bookworm
files:
  - path: /etc/motd
    content: hi
initrd:
  modules: [squashfs]
# optional sections present but empty mean "defaults" too
kernel:
partitions: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	hi := "hi"
	want := &Spec{
		Name: "tiny", Version: "2", Epoch: 0,
		Base:       Base{Debian: &Debian{Suite: "bookworm", Mirror: DefaultMirror, Variant: "minbase"}},
		Files:      []File{{Path: "/etc/motd", Content: &hi, Mode: 0o644, Line: 8}},
		Initrd:     Initrd{Modules: []string{"squashfs"}, OnFail: "reboot"},
		Partitions: Partitions{ESP: 256 << 20, Slot: 512 << 20, State: 256 << 20},
		Slot:       SlotFS{Filesystem: "squashfs", Compression: "zstd", Level: 0},
		Boot:       Boot{Timeout: 0, Tries: 3},
		Dir:        images,
		Path:       "images/min.yaml",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parsed spec differs\n got: %+v\nwant: %+v", got, want)
	}
}

func TestParseAcceptedForms(t *testing.T) {
	images := workspace(t)
	for _, tc := range []struct {
		name, yaml string
		check      func(*Spec) bool
	}{
		{"unquoted version that YAML reads as a float keeps its text", "version: 1.10\n", func(s *Spec) bool { return s.Version == "1.10" }},
		{"oci base from a registry", "base: {oci: docker.io/library/debian:bookworm}\n", func(s *Spec) bool {
			return s.Base.OCI == "docker.io/library/debian:bookworm" && s.Base.Debian == nil
		}},
		{"oci base from a registry with port and digest", "base: {oci: \"localhost:5000/x/y@sha256:" + strings.Repeat("ab", 32) + "\"}\n", func(s *Spec) bool {
			return strings.HasPrefix(s.Base.OCI, "localhost:5000/x/y@sha256:")
		}},
		{"docker-archive path made absolute", "base: {oci: \"docker-archive:base.tar\"}\n", func(s *Spec) bool {
			return s.Base.OCI == "docker-archive:"+filepath.Join(images, "base.tar")
		}},
		{"absolute source kept", "files: [{path: /x, source: " + filepath.Join(images, "files/motd") + "}]\n", func(s *Spec) bool {
			return s.Files[0].Source == filepath.Join(images, "files/motd")
		}},
		{"mode forms", "files: [{path: /a, content: x, mode: 0o755}, {path: /b, content: x, mode: 644}, {path: /c, content: x, mode: \"1777\"}]\n", func(s *Spec) bool {
			return s.Files[0].Mode == 0o755 && s.Files[1].Mode == 0o644 && s.Files[2].Mode == 0o1777
		}},
		{"integers in YAML notations", "epoch: 1_700_000_000\nboot: {timeout: 0x10}\n", func(s *Spec) bool {
			return s.Epoch == 1700000000 && s.Boot.Timeout == 16
		}},
		{"size units", "partitions: {esp: 1G, slot: 1TiB, state: 1T}\n", func(s *Spec) bool {
			return s.Partitions.ESP == 1<<30 && s.Partitions.Slot == 1<<40 && s.Partitions.State == 1<<40
		}},
		{"level for lzo", "slot: {compression: lzo, level: 1}\n", func(s *Spec) bool { return s.Slot.Level == 1 }},
		{"compression without level", "slot: {compression: xz}\n", func(s *Spec) bool { return s.Slot.Compression == "xz" && s.Slot.Level == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Later keys override the defaults of this base document, so
			// each case only writes what it tests.
			doc := mergeDoc(map[string]string{
				"name": "name: t\n", "version": "version: 1\n", "epoch": "epoch: 1\n",
				"base": "base: {oci: debian}\n", "initrd": "initrd: {modules: [squashfs]}\n",
			}, tc.yaml)
			s, err := Parse("images/t.yaml", []byte(doc))
			if err != nil {
				t.Fatalf("%v\n%s", err, doc)
			}
			if !tc.check(s) {
				t.Errorf("unexpected result %+v", s)
			}
		})
	}
}

// mergeDoc replaces the top-level lines of base whose key the extra text
// sets, so a case can override one field without duplicating keys.
func mergeDoc(base map[string]string, extra string) string {
	var b strings.Builder
	for _, key := range []string{"name", "version", "epoch", "base", "initrd"} {
		if !strings.Contains("\n"+extra, "\n"+key+":") {
			b.WriteString(base[key])
		}
	}
	b.WriteString(extra)
	return b.String()
}

// head is a valid spec of five lines; cases append from line 6.
const head = "name: n\nversion: 1.0.0\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [squashfs]}\n"

func TestParseErrors(t *testing.T) {
	images := workspace(t)
	topFields := "name, version, epoch, base, layers, files, units, kernel, initrd, partitions, slot, boot, trim"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		// unknown fields at every depth
		{"unknown top-level field", head + "nmae: x\n",
			"images/x.yaml:6: nmae: unknown field; expected one of " + topFields},
		{"unknown nested field", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian:\n    suite: bookworm\n    packagez: [a]\ninitrd: {modules: [m]}\n",
			"images/x.yaml:7: base.debian.packagez: unknown field; expected one of suite, mirror, variant, packages"},
		{"unknown field in a list item", head + "files:\n  - path: /a\n    content: x\n    sorce: y\n",
			"images/x.yaml:9: files[0].sorce: unknown field; expected one of path, source, content, mode, owner, group"},
		{"odd key is quoted in the path", head + "\"a b\": 1\n",
			`images/x.yaml:6: "a b": unknown field; expected one of ` + topFields},

		// wrong types
		{"string where a list is expected", head + "units:\n  enable: foo.service\n",
			`images/x.yaml:7: units.enable: got the string "foo.service"; expected a list of unit names`},
		{"list where a mapping is expected", head + "boot: [1]\n",
			"images/x.yaml:6: boot: got a list; expected a mapping with timeout and tries"},
		{"mapping where a string is expected", head + "kernel:\n  cmdline:\n    - {a: 1}\n",
			"images/x.yaml:8: kernel.cmdline[0]: got a mapping; expected one of kernel arguments"},
		{"top level is a list", "- name\n",
			"images/x.yaml:1: got a list; expected a mapping of spec fields (name, version, ...)"},
		{"quoted integer", "name: n\nversion: 1\nepoch: \"17\"\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:3: epoch: got the string "17"; expected seconds since 1970 (squashfs stores 32-bit times) from 0 to 4294967295`},
		{"float integer", head + "boot: {tries: 2.5}\n",
			"images/x.yaml:6: boot.tries: got the number 2.5; expected a number of tries from 1 to 9"},
		{"boolean where a mapping is expected", head + "trim: true\n",
			"images/x.yaml:6: trim: got the boolean true; expected a mapping with paths and keep_locales"},
		{"null list item", head + "units:\n  mask:\n    -\n",
			"images/x.yaml:8: units.mask[0]: got no value; expected one of unit names"},
		{"size as a bare number", head + "partitions:\n  slot: 512\n",
			`images/x.yaml:7: partitions.slot: "512" has no unit; expected a whole number of MiB like "512MiB" or "1GiB"`},

		// missing required fields
		{"missing top-level field", "name: n\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:1: version: required field is missing"},
		{"missing top-level field after comments", "# a spec\n\nname: n\nversion: 1\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:1: epoch: required field is missing"},
		{"missing nested field", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian:\n    mirror: http://x/debian\ninitrd: {modules: [m]}\n",
			"images/x.yaml:5: base.debian.suite: required field is missing"},
		{"missing field of a list item", head + "files:\n  - content: x\n",
			"images/x.yaml:7: files[0].path: required field is missing"},
		{"required field without value", "name:\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:1: name: required field has no value"},
		{"missing initrd", "name: n\nversion: 1\nepoch: 0\nbase: {oci: debian}\n",
			"images/x.yaml:1: initrd: required field is missing"},

		// exclusive fields
		{"base with both", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian: {suite: bookworm}\n  oci: debian\ninitrd: {modules: [m]}\n",
			"images/x.yaml:6: base: both debian and oci are set; expected exactly one"},
		{"base with neither", "name: n\nversion: 1\nepoch: 0\nbase: {}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:4: base: neither debian nor oci is set; expected exactly one"},
		{"layer with both", head + "layers:\n  - oci: debian\n    tar: layers/site.tar\n",
			"images/x.yaml:7: layers[0]: both oci and tar are set; expected exactly one"},
		{"layer with neither", head + "layers:\n  - {}\n",
			"images/x.yaml:7: layers[0]: neither oci nor tar is set; expected exactly one"},
		{"file with both", head + "files:\n  - path: /a\n    source: files/motd\n    content: x\n",
			"images/x.yaml:7: files[0]: both source and content are set; expected exactly one"},
		{"file with neither", head + "files:\n  - path: /a\n",
			"images/x.yaml:7: files[0]: neither source nor content is set; expected exactly one"},

		// bad values and ranges
		{"bad name", "name: Berth_1\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:1: name: "Berth_1" is not a valid name; expected lowercase letters, digits and dashes, starting with a letter, at most 63 characters`},
		{"bad version", "name: n\nversion: 1.x\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:2: version: "1.x" is not a valid version; expected 1 to 4 dotted numbers with an optional -suffix, like "1.0.0" or "2.1-rc1"`},
		{"negative epoch", "name: n\nversion: 1\nepoch: -1\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:3: epoch: -1 is out of range; expected seconds since 1970 (squashfs stores 32-bit times) from 0 to 4294967295"},
		{"bad variant", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian: {suite: bookworm, variant: tiny}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:5: base.debian.variant: "tiny" is not an mmdebstrap variant; expected one of minbase, essential, apt, required, important, standard`},
		{"bad package", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian:\n    suite: bookworm\n    packages:\n      - systemd\n      - Foo_Bar\ninitrd: {modules: [m]}\n",
			`images/x.yaml:9: base.debian.packages[1]: "Foo_Bar" is not a Debian package name; expected lowercase letters, digits, '+', '-' and '.', at least 2 characters`},
		{"bad mirror", "name: n\nversion: 1\nepoch: 0\nbase:\n  debian: {suite: bookworm, mirror: \"ftp://x/debian\"}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:5: base.debian.mirror: "ftp://x/debian" has no supported scheme; expected an http, https or file URL like http://deb.debian.org/debian`},
		{"bad registry reference", "name: n\nversion: 1\nepoch: 0\nbase: {oci: \"Docker.io/Library/Debian:bookworm\"}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:4: base.oci: "Docker.io/Library/Debian:bookworm" is not an image reference; expected "REGISTRY/REPO:TAG", "oci-layout:DIR[:TAG|@sha256:HEX]" or "docker-archive:FILE"`},
		{"bad oci-layout digest", head + "layers: [{oci: \"oci-layout:layers/extra@sha256:12\"}]\n",
			`images/x.yaml:6: layers[0].oci: "oci-layout:layers/extra@sha256:12" has a bad digest; expected "REGISTRY/REPO:TAG", "oci-layout:DIR[:TAG|@sha256:HEX]" or "docker-archive:FILE"`},
		{"relative file path", head + "files:\n  - path: etc/motd\n    content: x\n",
			`images/x.yaml:7: files[0].path: "etc/motd" is not absolute; expected an absolute path starting with /`},
		{"unclean file path", head + "files:\n  - path: /etc/../etc//motd\n    content: x\n",
			`images/x.yaml:7: files[0].path: "/etc/../etc//motd" is not clean; expected "/etc/motd"`},
		{"root as file path", head + "files:\n  - path: /\n    content: x\n",
			`images/x.yaml:7: files[0].path: "/" is the root directory; expected an absolute path below it`},
		{"bad mode", head + "files:\n  - path: /a\n    content: x\n    mode: \"0999\"\n",
			`images/x.yaml:9: files[0].mode: "0999" is not an octal mode; expected 3 or 4 octal digits like "0644" or "4755"`},
		{"negative uid", head + "files:\n  - path: /a\n    content: x\n    owner: -5\n",
			"images/x.yaml:9: files[0].owner: -5 is out of range; expected a user id from 0 to 4294967294"},
		{"bad user name", head + "files:\n  - path: /a\n    content: x\n    group: \"Wheel Group\"\n",
			`images/x.yaml:9: files[0].group: "Wheel Group" is not a group name; expected a number from 0 to 4294967294 or a group name`},
		{"unit without suffix", head + "units:\n  enable: [sshd]\n",
			`images/x.yaml:7: units.enable[0]: "sshd" is not a unit name; expected a name ending in .service, .socket, .timer, .target, .mount or .path`},
		{"unit in two lists", head + "units:\n  enable: [a.service]\n  mask:\n    - b.socket\n    - a.service\n",
			"images/x.yaml:10: units.mask[1]: a.service is already listed as units.enable[0] on line 7; expected each unit in one place"},
		{"cmdline with whitespace", head + "kernel:\n  cmdline: [\"console=ttyS0 quiet\"]\n",
			`images/x.yaml:7: kernel.cmdline[0]: "console=ttyS0 quiet" contains whitespace or control characters; expected one argument per list item`},
		{"cmdline sets a builder key", head + "kernel:\n  cmdline: [berth.root=PARTLABEL=X]\n",
			`images/x.yaml:7: kernel.cmdline[0]: "berth.root=PARTLABEL=X" is reserved; expected no berth.root argument, it is set by the builder`},
		{"cmdline sets onfail", head + "kernel:\n  cmdline: [berth.onfail=shell]\n",
			`images/x.yaml:7: kernel.cmdline[0]: "berth.onfail=shell" is reserved; expected no berth.onfail argument, use initrd.onfail instead`},
		{"empty module list", "name: n\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd:\n  modules: []\n",
			"images/x.yaml:6: initrd.modules: list is empty; expected the modules needed to mount the slot, like [virtio_blk, squashfs]"},
		{"bad module name", "name: n\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd:\n  modules: [virtio/blk]\n",
			`images/x.yaml:6: initrd.modules[0]: "virtio/blk" is not a kernel module name; expected letters, digits, "_" and "-", like virtio_blk`},
		{"bad onfail", "name: n\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd:\n  modules: [m]\n  onfail: panic\n",
			`images/x.yaml:7: initrd.onfail: "panic" is not an initrd failure action; expected one of reboot, shell, halt`},
		{"bad size unit", head + "partitions:\n  esp: 300MiB\n  slot: 512XB\n",
			`images/x.yaml:8: partitions.slot: "512XB" is not a size; expected a whole number of MiB like "512MiB" or "1GiB"`},
		{"zero size", head + "partitions:\n  state: 0MiB\n",
			`images/x.yaml:7: partitions.state: "0MiB" is zero; expected a whole number of MiB like "512MiB" or "1GiB"`},
		{"esp too small", head + "partitions:\n  esp: 64MiB\n",
			"images/x.yaml:7: partitions.esp: 64MiB is too small; expected at least 66MiB (FAT32 needs it)"},
		{"slot too large", head + "partitions:\n  slot: 2T\n",
			"images/x.yaml:7: partitions.slot: 2T is too large; expected at most 1024GiB"},
		{"erofs reserved", head + "slot:\n  filesystem: erofs\n",
			"images/x.yaml:7: slot.filesystem: erofs is not supported yet; expected squashfs"},
		{"unknown filesystem", head + "slot:\n  filesystem: ext4\n",
			`images/x.yaml:7: slot.filesystem: "ext4" is not a slot filesystem; expected squashfs`},
		{"unknown compressor", head + "slot:\n  compression: brotli\n",
			`images/x.yaml:7: slot.compression: "brotli" is not a squashfs compressor; expected one of gzip, xz, lz4, lzo, zstd`},
		{"zstd level out of range", head + "slot:\n  level: 23\n",
			"images/x.yaml:7: slot.level: 23 is out of range; expected a zstd level from 1 to 22"},
		{"gzip level out of range", head + "slot:\n  compression: gzip\n  level: 0\n",
			"images/x.yaml:8: slot.level: 0 is out of range; expected a gzip level from 1 to 9"},
		{"xz takes no level", head + "slot:\n  compression: xz\n  level: 6\n",
			"images/x.yaml:8: slot.level: xz takes no level; expected no slot.level, or a compressor that has levels (gzip, lzo, zstd)"},
		{"timeout out of range", head + "boot:\n  timeout: 61\n",
			"images/x.yaml:7: boot.timeout: 61 is out of range; expected seconds from 0 to 60"},
		{"tries out of range", head + "boot:\n  tries: 0\n",
			"images/x.yaml:7: boot.tries: 0 is out of range; expected a number of tries from 1 to 9"},
		{"relative trim path", head + "trim:\n  paths: [usr/share/doc]\n",
			`images/x.yaml:7: trim.paths[0]: "usr/share/doc" is not absolute; expected an absolute path or glob starting with /`},
		{"bad trim glob", head + "trim:\n  paths: [\"/usr/[a\"]\n",
			`images/x.yaml:7: trim.paths[0]: "/usr/[a" is not a valid glob; expected a pattern using *, ? and [...] as in path.Match`},
		{"bad locale", head + "trim:\n  keep_locales: [\"en US\"]\n",
			`images/x.yaml:7: trim.keep_locales[0]: "en US" is not a locale name; expected a name like C.UTF-8 or en_US.UTF-8`},

		// duplicates
		{"duplicate file path", head + "files:\n  - path: /etc/a\n    content: x\n  - path: /etc/b\n    content: y\n  - path: /etc/a\n    source: files/motd\n",
			"images/x.yaml:11: files[2].path: /etc/a is already set by files[0] on line 7; expected each path once"},
		{"duplicate top-level key", head + "name: m\n",
			"images/x.yaml:6: name: duplicate key (first set on line 1); expected each field once"},
		{"duplicate nested key", head + "boot:\n  tries: 2\n  timeout: 1\n  tries: 3\n",
			"images/x.yaml:9: boot.tries: duplicate key (first set on line 7); expected each field once"},

		// referenced files
		{"missing source", head + "files:\n  - path: /etc/motd\n    source: files/nope\n",
			"images/x.yaml:8: files[0].source: files/nope does not exist (looked in " + filepath.Join(images, "files/nope") + ")"},
		{"source is a directory", head + "files:\n  - path: /etc/motd\n    source: files\n",
			"images/x.yaml:8: files[0].source: files is a directory (looked in " + filepath.Join(images, "files") + "); expected a file"},
		{"missing layer tar", head + "layers:\n  - tar: layers/nope.tar\n",
			"images/x.yaml:7: layers[0].tar: layers/nope.tar does not exist (looked in " + filepath.Join(images, "layers/nope.tar") + ")"},
		{"missing oci layout", head + "layers:\n  - oci: oci-layout:layers/gone\n",
			"images/x.yaml:7: layers[0].oci: layers/gone does not exist (looked in " + filepath.Join(images, "layers/gone") + ")"},
		{"directory that is no oci layout", head + "layers:\n  - oci: oci-layout:layers/noimage\n",
			`images/x.yaml:7: layers[0].oci: "layers/noimage" is not an OCI image layout (no oci-layout file in ` + filepath.Join(images, "layers/noimage") + "); expected a directory written by an OCI tool"},

		// YAML features a spec does not use
		{"alias", head + "kernel:\n  cmdline: [&q quiet, *q]\n",
			"images/x.yaml:7: kernel.cmdline[1]: YAML alias *q is not supported; write the value out in full"},
		{"merge key", head + "boot:\n  <<: {tries: 2}\n",
			`images/x.yaml:7: boot."<<": YAML merge keys are not supported; write the fields out in full`},
		{"second document", head + "---\nname: other\n",
			"images/x.yaml:6: a second YAML document starts here; expected one spec per file"},

		// malformed YAML and empty files
		{"unclosed flow list", head + "boot: {tries: [1}\n",
			"images/x.yaml:6: malformed YAML: did not find expected ',' or ']'"},
		{"mapping value in a plain scalar", head + "name2: a: b\n",
			"images/x.yaml:6: malformed YAML: mapping values are not allowed in this context"},
		{"tab indentation", head + "boot:\n\ttries: 2\n",
			"images/x.yaml:7: malformed YAML: found character that cannot start any token"},
		{"control character", head + "kernel:\n  cmdline: [\"a\x01\"]\n",
			"images/x.yaml:7: malformed YAML: control characters are not allowed"},
		{"invalid UTF-8", head + "kernel:\n  cmdline: [\"\xc3(\"]\n",
			"images/x.yaml:7: malformed YAML: invalid trailing UTF-8 octet"},
		{"integer too large", "name: n\nversion: 1\nepoch: 99999999999999999999\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:3: epoch: 99999999999999999999 is out of range; expected seconds since 1970 (squashfs stores 32-bit times) from 0 to 4294967295"},
		{"bad block indentation", head + "trim:\n  paths:\n    - /a\n  - /b\n",
			"images/x.yaml:9: malformed YAML: did not find expected key"},
		{"unterminated quote", head + "name2: 'abc\n",
			"images/x.yaml:6: malformed YAML: found unexpected end of stream"},
		{"empty file", "",
			"images/x.yaml:1: spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"},
		{"only comments", "# nothing yet\n\n",
			"images/x.yaml:1: spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"},
		{"only a document marker", "---\n",
			"images/x.yaml:1: spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"},

		// several problems: the first by line wins, whatever the walk order
		{"first problem by line", "trim: {paths: [relative]}\nname: BAD\nversion: 1\nepoch: 0\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			`images/x.yaml:1: trim.paths[0]: "relative" is not absolute; expected an absolute path or glob starting with /`},
		{"missing field beats later problems", "name: n\nepoch: -1\nbase: {oci: debian}\ninitrd: {modules: [m]}\n",
			"images/x.yaml:1: version: required field is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("images/x.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error for\n%s\nparsed: %+v", tc.yaml, s)
			}
			if s != nil {
				t.Errorf("got a spec together with the error")
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", got, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err.Error())
			}
			var specErr *Error
			if !errors.As(err, &specErr) || specErr.File != "images/x.yaml" || specErr.Line < 1 {
				t.Errorf("error is not a *spec.Error with file and line: %#v", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	images := workspace(t)
	if err := os.WriteFile(filepath.Join(images, "ok.yaml"), []byte(head), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load("images/ok.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Path != "images/ok.yaml" || s.Dir != images || s.Name != "n" {
		t.Errorf("Load: path %q dir %q name %q", s.Path, s.Dir, s.Name)
	}

	_, err = Load("images/missing.yaml")
	if err == nil || err.Error() != "read spec images/missing.yaml: no such file or directory" {
		t.Errorf("missing file: %v", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error does not match fs.ErrNotExist: %v", err)
	}

	if _, err := Load("images"); err == nil || !strings.HasPrefix(err.Error(), "read spec images: ") {
		t.Errorf("directory: %v", err)
	}

	big := filepath.Join(images, "big.yaml")
	if err := os.WriteFile(big, []byte(head+"# "+strings.Repeat("x", maxSpecSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
		t.Errorf("oversized spec: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"256MiB", 256 << 20, ""},
		{"512M", 512 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"3G", 3 << 30, ""},
		{"2TiB", 2 << 40, ""},
		{"1T", 1 << 40, ""},
		{"0MiB", 0, `"0MiB" is zero`},
		{"512", 0, `"512" has no unit`},
		{"512MB", 0, `"512MB" is not a size`},
		{"1.5GiB", 0, `"1.5GiB" is not a size`},
		{"-1MiB", 0, `"-1MiB" is not a size`},
		{" 1MiB", 0, `" 1MiB" is not a size`},
		{"", 0, `"" is not a size`},
		{"99999999999999999999MiB", 0, "is too large"},
		{"9000000TiB", 0, "is too large"},
	} {
		got, err := ParseSize(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseSize(%q) error %v; want it to contain %q", tc.in, err, tc.err)
		}
	}
}

func TestBaseKey(t *testing.T) {
	workspace(t)
	parse := func(t *testing.T, doc string) *Spec {
		t.Helper()
		s, err := Parse("images/k.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		return s
	}
	const tail = "initrd: {modules: [squashfs]}\n"
	debian := func(epoch, suite, extra, packages string) string {
		return "name: k\nversion: 1\nepoch: " + epoch + "\nbase:\n  debian:\n    suite: " + suite + "\n" + extra +
			"    packages: " + packages + "\n" + tail
	}
	ref := parse(t, debian("100", "bookworm", "", "[systemd-sysv, kmod, udev]")).BaseKey()
	if len(ref) != 64 || strings.Trim(ref, "0123456789abcdef") != "" {
		t.Fatalf("BaseKey %q is not a hex sha256", ref)
	}

	same := map[string]string{
		"same spec again":    debian("100", "bookworm", "", "[systemd-sysv, kmod, udev]"),
		"packages reordered": debian("100", "bookworm", "", "[udev, systemd-sysv, kmod]"),
		"package repeated":   debian("100", "bookworm", "", "[udev, kmod, systemd-sysv, kmod]"),
		"default variant and mirror spelled out": debian("100", "bookworm",
			"    variant: minbase\n    mirror: http://deb.debian.org/debian/\n", "[systemd-sysv, kmod, udev]"),
		"files, units, kernel, slot and name changed": strings.Replace(debian("100", "bookworm", "", "[systemd-sysv, kmod, udev]"),
			"name: k\nversion: 1\n", "name: other\nversion: 2\nfiles: [{path: /a, content: x}]\nunits: {enable: [a.service]}\n"+
				"kernel: {cmdline: [quiet]}\nslot: {compression: xz}\npartitions: {slot: 1GiB}\n", 1),
	}
	for name, doc := range same {
		if got := parse(t, doc).BaseKey(); got != ref {
			t.Errorf("%s: BaseKey changed", name)
		}
	}

	different := map[string]string{
		"package added":   debian("100", "bookworm", "", "[systemd-sysv, kmod, udev, curl]"),
		"package removed": debian("100", "bookworm", "", "[systemd-sysv, kmod]"),
		"epoch":           debian("101", "bookworm", "", "[systemd-sysv, kmod, udev]"),
		"suite":           debian("100", "trixie", "", "[systemd-sysv, kmod, udev]"),
		"variant":         debian("100", "bookworm", "    variant: apt\n", "[systemd-sysv, kmod, udev]"),
		"mirror":          debian("100", "bookworm", "    mirror: http://mirror.example/debian\n", "[systemd-sysv, kmod, udev]"),
		"oci base":        "name: k\nversion: 1\nepoch: 100\nbase: {oci: debian}\n" + tail,
	}
	seen := map[string]string{ref: "reference"}
	for name, doc := range different {
		got := parse(t, doc).BaseKey()
		if other, dup := seen[got]; dup {
			t.Errorf("%s: BaseKey equals the one of %s", name, other)
		}
		seen[got] = name
	}

	// Packages joined differently must not collide ("a b" vs "ab").
	a := &Spec{Base: Base{Debian: &Debian{Suite: "s", Packages: []string{"ab", "c"}}}}
	b := &Spec{Base: Base{Debian: &Debian{Suite: "s", Packages: []string{"a", "bc"}}}}
	if a.BaseKey() == b.BaseKey() {
		t.Error("BaseKey does not separate package names")
	}
	ociA := parse(t, "name: k\nversion: 1\nepoch: 100\nbase: {oci: \"debian:bookworm\"}\n"+tail).BaseKey()
	ociB := parse(t, "name: k\nversion: 1\nepoch: 100\nbase: {oci: \"debian:trixie\"}\n"+tail).BaseKey()
	if ociA == ociB {
		t.Error("BaseKey ignores the OCI reference")
	}
}

func TestErrorAt(t *testing.T) {
	s := &Spec{Path: "images/x.yaml"}
	err := s.ErrorAt(14, "files[2].source", "cannot read %s:\n%v", "files/motd", errors.New("permission denied"))
	if got, want := err.Error(), "images/x.yaml:14: files[2].source: cannot read files/motd: permission denied"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(fullSpec))
	f.Add([]byte(head))
	f.Add([]byte(head + "files:\n  - path: /a\n    content: x\n    mode: 0644\n    owner: root\n"))
	f.Add([]byte(head + "kernel:\n  cmdline: [&q quiet, *q]\n"))
	f.Add([]byte(head + "boot:\n  <<: {tries: 2}\n"))
	f.Add([]byte(head + "---\nname: x\n"))
	f.Add([]byte(head + "partitions: {esp: 99999999999999999999GiB}\n"))
	f.Add([]byte("a: b: c\n"))
	f.Add([]byte("- [\n"))
	f.Add([]byte("? [a]\n: b\n"))
	f.Add([]byte("\t\x01\xff"))
	f.Add([]byte(head + "name2: \"\xc3(\"\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			if s != nil {
				t.Fatal("spec returned together with an error")
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") || !strings.HasPrefix(msg, "fuzz.yaml:") {
				t.Fatalf("error is not one FILE:LINE line: %q", msg)
			}
			return
		}
		if s.Name == "" || s.Version == "" || len(s.Initrd.Modules) == 0 || (s.Base.Debian == nil) == (s.Base.OCI == "") {
			t.Fatalf("accepted an incomplete spec: %+v", s)
		}
		_ = s.BaseKey()
	})
}
