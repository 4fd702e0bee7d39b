// Package mountinfo reads /proc/self/mountinfo (proc(5)) and undoes the
// kernel's octal escapes in its paths, for every program that asks what is
// mounted where.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// Mount is one line of mountinfo. Paths are unescaped.
type Mount struct {
	Device     string // "MAJOR:MINOR" of the mounted filesystem
	Root       string // path inside the filesystem that is mounted
	MountPoint string
	FSType     string // "" when the line has no "-" separator
	Source     string // e.g. /dev/vda3; "" when the line has no "-" separator
}

// Read parses the calling process's mountinfo.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads mountinfo lines: ID PARENT MAJOR:MINOR ROOT MOUNTPOINT
// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS. Lines with fewer than
// five fields are skipped rather than failing the whole read.
func Parse(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	// A line holds two paths of up to PATH_MAX escaped four times over.
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		m := Mount{Device: fields[2], Root: Unescape(fields[3]), MountPoint: Unescape(fields[4])}
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				if i+1 < len(fields) {
					m.FSType = fields[i+1]
				}
				if i+2 < len(fields) {
					m.Source = Unescape(fields[i+2])
				}
				break
			}
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return mounts, nil
}

// Unescape undoes the kernel's escapes in a mountinfo path: a backslash and
// three octal digits stand for one byte (\040 a space, \011 a tab, \012 a
// newline, \134 a backslash). Anything else is kept as it is.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) && s[i+1] <= '3' {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
