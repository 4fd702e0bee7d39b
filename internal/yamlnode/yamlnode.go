// Package yamlnode is the strict YAML reader under berth's hand-written
// configuration files (image specs, job files, node.yaml): one document,
// read as a yaml.Node tree so that every problem names its file, line and
// field; keys checked against the allowed names, each once; and one error
// type for all of it. Each kind of file keeps its own wording (Words), which
// its users and tests know, while the checks are the same.
package yamlnode

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Error is one problem at a place in a file, printed on one line as
// FILE:LINE: FIELD: what is wrong; what to do. File, Line and Field are
// each left out when empty or zero (a decoder that does not know the file
// name yet prints "LINE: ...", and In adds the file later).
type Error struct {
	File string
	Line int // 1-based; 0 for the whole file
	// Column is 1-based, 0 when unknown. It is kept for callers that point
	// into the file (errors.As) but not printed: berth's messages and their
	// tests name FILE:LINE, which is what an editor's go-to-line takes.
	Column int
	Field  string // dotted path with 0-based indices, e.g. files[2].source
	Msg    string
}

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		if e.File != "" {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(e.Line))
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(OneLine(e.Msg))
	return b.String()
}

// String is Error, for lists of problems printed with %v.
func (e Error) String() string { return e.Error() }

// In formats the problem as found in file.
func (e Error) In(file string) string {
	e.File = file
	return e.Error()
}

// At builds an Error at node n.
func At(n *yaml.Node, field, format string, args ...any) *Error {
	return &Error{Line: n.Line, Column: n.Column, Field: field, Msg: OneLine(fmt.Sprintf(format, args...))}
}

// OneLine keeps the one-line promise even if a message carries a line
// break from somewhere unexpected (an OS error, a YAML message).
func OneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return lineBreaks.Replace(s)
}

var lineBreaks = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

// ErrEmpty is returned by Decode for data without a document, or whose
// only document is empty (comments, "---", "~").
var ErrEmpty = errors.New("no YAML document")

// ExtraDocumentError is returned by Decode when a second document starts
// at Line: one file holds one thing.
type ExtraDocumentError struct{ Line int }

func (e *ExtraDocumentError) Error() string {
	return fmt.Sprintf("a second YAML document starts on line %d", e.Line)
}

// SyntaxError is malformed YAML at Line; Msg is yaml.v3's message without
// its "yaml: line N:" prefix, on one line.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Decode returns the root node of the only document in data, or ErrEmpty,
// an *ExtraDocumentError or a *SyntaxError.
func Decode(data []byte) (*yaml.Node, error) {
	doc, err := decodeDocuments(data)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrEmpty
		}
		var extra *ExtraDocumentError
		if errors.As(err, &extra) {
			return nil, extra
		}
		line, msg := syntaxErrorLine(data, err)
		return nil, &SyntaxError{Line: line, Msg: OneLine(msg)}
	}
	if len(doc.Content) == 0 || IsNull(doc.Content[0]) {
		return nil, ErrEmpty
	}
	return doc.Content[0], nil
}

// DocWords word the problems of a whole document for one kind of file.
type DocWords struct {
	Empty  string // the message for an empty document; "" when empty is allowed
	Extra  string // the message for a second document
	Syntax string // a format with one %s for the parser's message
}

// DecodeDoc is Decode with each problem as one positional Error in the
// file type's words. An allowed empty document returns nil, nil.
func DecodeDoc(data []byte, w DocWords) (*yaml.Node, *Error) {
	root, err := Decode(data)
	var extra *ExtraDocumentError
	var syntax *SyntaxError
	switch {
	case err == nil:
		return root, nil
	case errors.Is(err, ErrEmpty):
		if w.Empty == "" {
			return nil, nil
		}
		return nil, &Error{Line: 1, Msg: w.Empty}
	case errors.As(err, &extra):
		return nil, &Error{Line: extra.Line, Msg: w.Extra}
	case errors.As(err, &syntax):
		return nil, &Error{Line: syntax.Line, Msg: fmt.Sprintf(w.Syntax, syntax.Msg)}
	}
	return nil, &Error{Line: 1, Msg: fmt.Sprintf(w.Syntax, OneLine(err.Error()))}
}

// decodeDocuments returns the only document of data, io.EOF when there is
// none, or a YAML syntax error. yaml.v3 panics only on its own bugs; those
// become errors too, since bad input must never crash a program.
func decodeDocuments(data []byte) (doc *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			doc, err = nil, fmt.Errorf("yaml: the YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var first yaml.Node
	if err := dec.Decode(&first); err != nil {
		return nil, err
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case errors.Is(err, io.EOF):
		return &first, nil
	case err != nil:
		return nil, err
	}
	return nil, &ExtraDocumentError{Line: second.Line}
}

var yamlLinePrefix = regexp.MustCompile(`^yaml: line ([0-9]+): `)

// searchBudget bounds the bytes the prefix search below may parse (it
// parses the file once per line): real files need far less, and a huge
// pathological file gets yaml's own line instead of a long wait.
const searchBudget = 32 << 20

// syntaxErrorLine finds the line of a YAML syntax error and the message
// without yaml's prefix. yaml.v3 counts lines from 0 for parser errors and
// from 1 for scanner errors, and omits the line for errors on its line 0
// and for reader errors (bad UTF-8, control characters). So the line it
// gives is only a hint, and it may name the start of the enclosing block
// rather than the offending line. The true line is the first one, from the
// hint on, whose prefix of the file fails with the same message.
func syntaxErrorLine(data []byte, err error) (int, string) {
	msg := err.Error()
	hint := 0
	if m := yamlLinePrefix.FindStringSubmatch(msg); m != nil {
		hint, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if readerErrors[msg] && !isUTF16(data) {
		if line := firstBadCharLine(data); line > 0 {
			return line, msg
		}
	}
	lineEnds := lineEndOffsets(data)
	failsAt := func(line int) bool {
		if line < 1 || line > len(lineEnds) {
			return false
		}
		_, err := decodeDocuments(data[:lineEnds[line-1]])
		if err == nil || errors.Is(err, io.EOF) {
			return false
		}
		got := yamlLinePrefix.ReplaceAllString(err.Error(), "")
		return strings.TrimPrefix(got, "yaml: ") == msg
	}
	start := max(hint, 1)
	budget := searchBudget
	for line := start; line <= len(lineEnds) && budget > 0; line++ {
		if failsAt(line) {
			return line, msg
		}
		budget -= lineEnds[line-1]
	}
	return min(start, max(len(lineEnds), 1)), msg
}

// readerErrors are yaml.v3's complaints about bytes, not syntax; it gives
// no line for them, but the offending character is easy to find.
var readerErrors = map[string]bool{
	"control characters are not allowed": true,
	"invalid leading UTF-8 octet":        true,
	"invalid trailing UTF-8 octet":       true,
	"incomplete UTF-8 octet sequence":    true,
	"invalid Unicode character":          true,
}

func isUTF16(data []byte) bool {
	return bytes.HasPrefix(data, []byte{0xFF, 0xFE}) || bytes.HasPrefix(data, []byte{0xFE, 0xFF})
}

// firstBadCharLine returns the line of the first byte sequence that is not
// UTF-8 or not a character YAML allows, or 0 when there is none.
func firstBadCharLine(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 || !yamlAllows(r) {
			return line
		}
		if r == '\n' {
			line++
		}
		i += size
	}
	return 0
}

// yamlAllows is YAML's set of printable characters (YAML 1.2, 5.1).
func yamlAllows(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		(r >= 0x20 && r <= 0x7E) || r == 0x85 ||
		(r >= 0xA0 && r <= 0xD7FF) || (r >= 0xE000 && r <= 0xFFFD) ||
		(r >= 0x10000 && r <= 0x10FFFF)
}

// lineEndOffsets returns, for each line, the offset just past its end.
func lineEndOffsets(data []byte) []int {
	var ends []int
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		ends = append(ends, len(data))
	}
	return ends
}

// IsNull reports whether n is an empty value (~, null, nothing).
func IsNull(n *yaml.Node) bool {
	return n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Deref follows aliases to the node they name.
func Deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}
