// Package osrelease reads os-release files (os-release(5)): KEY=VALUE lines
// whose values follow shell quoting, so that the updater and the agent read
// the same values a shell sourcing the file would.
package osrelease

import (
	"fmt"
	"os"
	"strings"
)

// Read parses the os-release file at path.
func Read(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read os-release: %w", err)
	}
	return Parse(data), nil
}

// Parse returns the variables of an os-release file. Blank lines, comments
// and lines that are not an assignment to a variable name are skipped, as
// os-release(5) asks of readers.
func Parse(data []byte) map[string]string {
	vars := map[string]string{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !isName(k) {
			continue
		}
		vars[k] = Unquote(v)
	}
	return vars
}

// Unquote undoes shell quoting of one value: single quotes keep everything
// literally, double quotes honour the escapes \$ \" \\ \` (a backslash
// before anything else stays), and outside quotes a backslash escapes the
// next character. Quoted and unquoted parts may follow each other
// ("a"'b'c is abc). An unterminated quote runs to the end of the value, so
// a sloppy file still gives its text rather than nothing.
func Unquote(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\'':
			end := strings.IndexByte(v[i+1:], '\'')
			if end < 0 {
				b.WriteString(v[i+1:])
				return b.String()
			}
			b.WriteString(v[i+1 : i+1+end])
			i += 1 + end
		case '"':
			i++
			for ; i < len(v) && v[i] != '"'; i++ {
				if v[i] == '\\' && i+1 < len(v) && strings.IndexByte("$\"\\`", v[i+1]) >= 0 {
					i++
				}
				b.WriteByte(v[i])
			}
		case '\\':
			if i+1 < len(v) {
				i++
				b.WriteByte(v[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// isName reports whether k is a shell variable name.
func isName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		letter := c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}
