package spec

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/berth-os/berth/updater/layout"
)

const (
	// maxEpoch: squashfs stores modification times as unsigned 32-bit seconds.
	maxEpoch = 1<<32 - 1
	// maxID is the largest valid uid/gid; (uid_t)-1 means "no change" to chown.
	maxID = 1<<32 - 2
	// MinESPSize is the smallest ESP: FAT32 needs 65525 clusters, and a
	// FAT32 of exactly 64 MiB is known to come out malformed.
	MinESPSize = 66 << 20
	// MaxPartitionSize catches typos like "512GiB" for "512MiB" and keeps
	// the sum of all partitions far from overflowing.
	MaxPartitionSize = 1 << 40
)

var (
	nameRe    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	versionRe = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,3}(-[0-9A-Za-z.]+)?$`)
	suiteRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,63}$`)
	packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	moduleRe  = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	unitRe    = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|target|mount|path)$`)
	localeRe  = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,64}$`)
	userName  = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}\$?$`)
	sizeRe    = regexp.MustCompile(`^([0-9]+)(MiB|M|GiB|G|TiB|T)$`)
	modeRe    = regexp.MustCompile(`^(?:0o?)?([0-7]{3,4})$`)
)

// Variants are mmdebstrap's --variant values the builder supports.
var Variants = []string{"minbase", "essential", "apt", "required", "important", "standard"}

// OnFailActions are what the initrd may do when it cannot boot the slot.
var OnFailActions = []string{"reboot", "shell", "halt"}

// Compressors are the squashfs compressors, all built into Debian's kernel.
var Compressors = []string{"gzip", "xz", "lz4", "lzo", "zstd"}

// compressionLevels are mksquashfs's -Xcompression-level ranges; a zero
// max means the compressor takes no level.
var compressionLevels = map[string]struct{ min, max int64 }{
	"gzip": {1, 9},
	"lzo":  {1, 9},
	"zstd": {1, 22},
	"xz":   {},
	"lz4":  {},
}

func validName(s string) string {
	if nameRe.MatchString(s) {
		return ""
	}
	return quote(s) + " is not a valid name; expected lowercase letters, digits and dashes, starting with a letter, at most 63 characters"
}

func validVersion(s string) string {
	if versionRe.MatchString(s) {
		return ""
	}
	return quote(s) + ` is not a valid version; expected 1 to 4 dotted numbers with an optional -suffix, like "1.0.0" or "2.1-rc1"`
}

func validSuite(s string) string {
	if suiteRe.MatchString(s) {
		return ""
	}
	return quote(s) + " is not a Debian suite; expected a name like bookworm"
}

func validMirror(s string) string {
	expected := "; expected an http, https or file URL like " + DefaultMirror
	u, err := url.Parse(s)
	if err != nil || strings.ContainsAny(s, " \t") {
		return quote(s) + " is not a URL" + expected
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file":
		return quote(s) + " has no supported scheme" + expected
	case u.Scheme != "file" && u.Host == "":
		return quote(s) + " has no host" + expected
	case u.RawQuery != "" || u.Fragment != "":
		return quote(s) + " has a query or fragment" + expected
	}
	return ""
}

func oneOf(list []string, s, what string) string {
	if contains(list, s) {
		return ""
	}
	return fmt.Sprintf("%s is not %s; expected one of %s", quote(s), what, strings.Join(list, ", "))
}

func validVariant(s string) string { return oneOf(Variants, s, "an mmdebstrap variant") }
func validOnFail(s string) string  { return oneOf(OnFailActions, s, "an initrd failure action") }
func validCompression(s string) string {
	return oneOf(Compressors, s, "a squashfs compressor")
}

func validSlotFilesystem(s string) string {
	switch s {
	case "squashfs":
		return ""
	case "erofs":
		return "erofs is not supported yet; expected squashfs"
	}
	return quote(s) + " is not a slot filesystem; expected squashfs"
}

func validPackage(s string) string {
	if packageRe.MatchString(s) {
		return ""
	}
	return quote(s) + " is not a Debian package name; expected lowercase letters, digits, '+', '-' and '.', at least 2 characters"
}

func validModule(s string) string {
	if moduleRe.MatchString(s) {
		return ""
	}
	return quote(s) + ` is not a kernel module name; expected letters, digits, "_" and "-", like virtio_blk`
}

func validUnit(s string) string {
	if unitRe.MatchString(s) && len(s) <= 255 {
		return ""
	}
	return quote(s) + " is not a unit name; expected a name ending in .service, .socket, .timer, .target, .mount or .path"
}

func validLocale(s string) string {
	if localeRe.MatchString(s) {
		return ""
	}
	return quote(s) + " is not a locale name; expected a name like C.UTF-8 or en_US.UTF-8"
}

// reservedCmdline are the kernel arguments the builder writes itself.
var reservedCmdline = map[string]string{
	layout.CmdlineRoot:   "it is set by the builder",
	layout.CmdlineSlot:   "it is set by the builder",
	layout.CmdlineFSType: "it is set by the builder",
	layout.CmdlineOnFail: "use initrd.onfail instead",
}

func validCmdlineArg(s string) string {
	if s == "" {
		return "argument is empty; expected a kernel argument like console=ttyS0"
	}
	if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return quote(s) + " contains whitespace or control characters; expected one argument per list item"
	}
	key, _, _ := strings.Cut(s, "=")
	if why, ok := reservedCmdline[key]; ok {
		return fmt.Sprintf("%s is reserved; expected no %s argument, %s", quote(s), key, why)
	}
	return ""
}

// validAbsPath checks an absolute, clean path other than "/".
func validAbsPath(s, what string) string {
	switch {
	case !strings.HasPrefix(s, "/"):
		return quote(s) + " is not absolute; expected " + what + " starting with /"
	case s == "/":
		return `"/" is the root directory; expected ` + what + " below it"
	case path.Clean(s) != s:
		return fmt.Sprintf("%s is not clean; expected %s", quote(s), quote(path.Clean(s)))
	case strings.ContainsRune(s, 0):
		return quote(s) + " contains a NUL byte; expected " + what
	}
	return ""
}

func validFilePath(s string) string { return validAbsPath(s, "an absolute path") }

func validTrimPath(s string) string {
	if problem := validAbsPath(s, "an absolute path or glob"); problem != "" {
		return problem
	}
	if _, err := path.Match(s, ""); err != nil {
		return quote(s) + " is not a valid glob; expected a pattern using *, ? and [...] as in path.Match"
	}
	return ""
}

// parseMode reads an octal file mode like "0644", "644", "0o755" or "4755".
// Plain YAML numbers arrive here as written, so mode: 0644 works too.
func parseMode(s string) (uint32, string) {
	m := modeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, quote(s) + ` is not an octal mode; expected 3 or 4 octal digits like "0644" or "4755"`
	}
	v, err := strconv.ParseUint(m[1], 8, 32)
	if err != nil {
		return 0, quote(s) + " is not an octal mode: " + err.Error()
	}
	return uint32(v), ""
}

// parseDecimalID accepts a quoted number as a uid/gid ("0" is not a name).
func parseDecimalID(s string) (int, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" || len(s) > 10 {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v > maxID {
		return 0, false
	}
	return int(v), true
}

// ParseSize parses a partition size: a whole number with unit MiB or M,
// GiB or G, TiB or T (binary units in all cases). It returns bytes.
func ParseSize(s string) (int64, error) {
	const expected = `expected a whole number of MiB like "512MiB" or "1GiB"`
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		if s != "" && strings.TrimLeft(s, "0123456789") == "" {
			return 0, fmt.Errorf("%s has no unit; %s", quote(s), expected)
		}
		return 0, fmt.Errorf("%s is not a size; %s", quote(s), expected)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is too large; %s", quote(s), expected)
	}
	shift := map[string]uint{"M": 20, "MiB": 20, "G": 30, "GiB": 30, "T": 40, "TiB": 40}[m[2]]
	if n == 0 {
		return 0, fmt.Errorf("%s is zero; %s", quote(s), expected)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("%s is too large; %s", quote(s), expected)
	}
	return n << shift, nil
}
