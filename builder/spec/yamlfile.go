package spec

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

// parseYAML decodes data into a node tree: exactly one document whose
// root is a mapping (checked later, with the other type checks).
func parseYAML(file string, data []byte) (*yaml.Node, error) {
	doc, err := decodeDocuments(data)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: file, Line: 1, Problem: "spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"}
		}
		var extra *extraDocument
		if errors.As(err, &extra) {
			return nil, &Error{File: file, Line: extra.line, Problem: "a second YAML document starts here; expected one spec per file"}
		}
		line, msg := syntaxErrorLine(data, err)
		return nil, &Error{File: file, Line: line, Problem: oneLine("malformed YAML: " + msg)}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, &Error{File: file, Line: 1, Problem: "spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"}
	}
	return doc.Content[0], nil
}

type extraDocument struct{ line int }

func (e *extraDocument) Error() string { return fmt.Sprintf("second document on line %d", e.line) }

// decodeDocuments returns the only document of data, io.EOF when there is
// none, or a YAML syntax error. yaml.v3 panics only on its own bugs; those
// become errors too, since bad input must never crash the builder.
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
	return nil, &extraDocument{line: second.Line}
}

var yamlLinePrefix = regexp.MustCompile(`^yaml: line ([0-9]+): `)

// searchBudget bounds the bytes the prefix search below may parse (it
// parses the file once per line): real specs need far less, and a huge
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
