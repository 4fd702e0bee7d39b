package spec

import (
	"fmt"
	"regexp"
	"sort"

	"github.com/berth-os/berth/internal/yamlnode"
)

// Error is one problem in a spec, rendered on one line as
// FILE:LINE: FIELD: what is wrong; what is expected. Field is a dotted path
// with 0-based indices, e.g. files[2].source; empty for document-level
// problems. Callers can match it with errors.As to point at the spec
// themselves. It is the one error type of berth's strict YAML readers.
type Error = yamlnode.Error

// ErrorAt builds an error in the spec's own style, so that later stages
// (the builder) can blame a line of the spec, e.g. a File's Line.
func (s *Spec) ErrorAt(line int, field, format string, args ...any) *Error {
	return &Error{File: s.Path, Line: line, Field: field, Msg: yamlnode.OneLine(fmt.Sprintf(format, args...))}
}

// problems collects every problem found while walking the document; only
// the first by line is reported, so the user fixes the file top to bottom.
type problems struct {
	file string
	list []*Error
}

func (p *problems) add(line int, field, format string, args ...any) {
	p.list = append(p.list, &Error{File: p.file, Line: line, Field: field, Msg: yamlnode.OneLine(fmt.Sprintf(format, args...))})
}

func (p *problems) first() error {
	if len(p.list) == 0 {
		return nil
	}
	sort.SliceStable(p.list, func(i, j int) bool { return p.list[i].Line < p.list[j].Line })
	return p.list[0]
}

// quote renders a user value for a message: quoted (so newlines and
// control characters are escaped) and shortened.
func quote(s string) string {
	const max = 60
	r := []rune(s)
	if len(r) > max {
		return fmt.Sprintf("%q...", string(r[:max]))
	}
	return fmt.Sprintf("%q", s)
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// child extends a dotted field path with a mapping key.
func child(field, key string) string {
	if !plainKey.MatchString(key) {
		key = quote(key)
	}
	if field == "" {
		return key
	}
	return field + "." + key
}

// index extends a field path with a list index.
func index(field string, i int) string {
	return fmt.Sprintf("%s[%d]", field, i)
}
