package spec

import (
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

// decoder walks the yaml.Node tree with typed, strict decoding. yaml.v3's
// own struct decoding reports unknown fields and type errors in its own
// words and without field paths, so it is not used for the spec.
type decoder struct {
	problems
	dir string // absolute directory of the spec file
}

// entry is one key/value pair of a mapping.
type entry struct {
	key, value *yaml.Node
}

// mapping is a decoded YAML mapping whose keys were checked against the
// allowed field names.
type mapping struct {
	field   string
	line    int // line that introduced the mapping, for "missing" problems
	entries map[string]entry
}

// get returns the value of key, or nil when the key is absent or null:
// for optional fields both mean "use the default".
func (m mapping) get(key string) *yaml.Node {
	e, ok := m.entries[key]
	if !ok || yamlnode.IsNull(e.value) {
		return nil
	}
	return e.value
}

func (m mapping) has(key string) bool { return m.get(key) != nil }

// keyLine is the line of key, or of the mapping when key is absent.
func (m mapping) keyLine(key string) int {
	if e, ok := m.entries[key]; ok {
		return e.key.Line
	}
	return m.line
}

// describe says what a node is, for "got X; expected Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "no value"
		case "!!int":
			return "the integer " + quoteShort(n.Value)
		case "!!float":
			return "the number " + quoteShort(n.Value)
		case "!!bool":
			return "the boolean " + quoteShort(n.Value)
		}
		return "the string " + quote(n.Value)
	}
	return "an unexpected YAML node"
}

// quoteShort prints YAML-typed scalars (numbers, booleans) unquoted when
// they are plain enough, as the user typed them.
func quoteShort(s string) string {
	if strings.ContainsAny(s, " \t\r\n\"") || len(s) > 40 {
		return quote(s)
	}
	return s
}

// usable rejects aliases: resolving them while walking would let a small
// file expand without bound, and a spec has no need for them.
func (d *decoder) usable(n *yaml.Node, field string) bool {
	if n.Kind == yaml.AliasNode {
		d.add(n.Line, field, "YAML alias *%s is not supported; write the value out in full", n.Value)
		return false
	}
	return true
}

// mapping checks that n is a mapping with only the allowed keys, each once.
// at is the line that introduced it (the parent's key), used when a
// required field is missing.
func (d *decoder) mapping(n *yaml.Node, field string, at int, expected string, allowed ...string) (mapping, bool) {
	m := mapping{field: field, line: at, entries: map[string]entry{}}
	if !d.usable(n, field) {
		return m, false
	}
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, field, "got %s; expected %s", describe(n), expected)
		return m, false
	}
	for _, e := range specWords.Mapping(n, field, allowed) {
		if e.Err != nil {
			e.Err.File = d.problems.file
			d.list = append(d.list, e.Err)
			continue
		}
		m.entries[e.Key.Value] = entry{key: e.Key, value: e.Value}
	}
	return m, true
}

// specWords are the spec's phrases for refused keys.
var specWords = yamlnode.Words{
	BadKey: func(field string, k *yaml.Node, _ []string) *yamlnode.Error {
		return yamlnode.At(k, field, "got %s as a key; expected a field name", describe(k))
	},
	Merge: func(field string, k *yaml.Node) *yamlnode.Error {
		return yamlnode.At(k, child(field, k.Value), "YAML merge keys are not supported; write the fields out in full")
	},
	Unknown: func(field string, k *yaml.Node, allowed []string) *yamlnode.Error {
		return yamlnode.At(k, child(field, k.Value), "unknown field; expected one of %s", strings.Join(allowed, ", "))
	},
	Duplicate: func(field string, k *yaml.Node, first int) *yamlnode.Error {
		return yamlnode.At(k, child(field, k.Value), "duplicate key (first set on line %d); expected each field once", first)
	},
}

// required returns the value of a field that must be present.
func (d *decoder) required(m mapping, key string) *yaml.Node {
	e, ok := m.entries[key]
	switch {
	case !ok:
		d.add(m.line, child(m.field, key), "required field is missing")
		return nil
	case yamlnode.IsNull(e.value):
		d.add(e.key.Line, child(m.field, key), "required field has no value")
		return nil
	}
	return e.value
}

// str decodes any non-null scalar as text. Plain scalars keep the text as
// written, so "version: 1.10" stays "1.10" and "mode: 0644" stays "0644".
func (d *decoder) str(n *yaml.Node, field, expected string) (string, bool) {
	if !d.usable(n, field) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || yamlnode.IsNull(n) {
		d.add(n.Line, field, "got %s; expected %s", describe(n), expected)
		return "", false
	}
	return n.Value, true
}

// integer decodes a YAML integer (decimal, 0x, 0o, with _ separators).
// Quoted numbers are strings in YAML and rejected, so types stay honest.
func (d *decoder) integer(n *yaml.Node, field, expected string) (int64, bool) {
	if !d.usable(n, field) {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && digitsOnly.MatchString(n.Value) {
		// yaml.v3 turns integers beyond 64 bits into floats
		d.add(n.Line, field, "%s is out of range; expected %s", quoteShort(n.Value), expected)
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.add(n.Line, field, "got %s; expected %s", describe(n), expected)
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		d.add(n.Line, field, "%s is not an integer that fits in 64 bits; expected %s", quoteShort(n.Value), expected)
		return 0, false
	}
	return v, true
}

var digitsOnly = regexp.MustCompile(`^[-+]?[0-9_]+$`)

// intRange decodes an integer and checks lo <= v <= hi.
func (d *decoder) intRange(n *yaml.Node, field string, lo, hi int64, what string) (int64, bool) {
	expected := fmt.Sprintf("%s from %d to %d", what, lo, hi)
	v, ok := d.integer(n, field, expected)
	if !ok {
		return 0, false
	}
	if v < lo || v > hi {
		d.add(n.Line, field, "%d is out of range; expected %s", v, expected)
		return 0, false
	}
	return v, true
}

// sequence checks that n is a list and returns its items.
func (d *decoder) sequence(n *yaml.Node, field, expected string) ([]*yaml.Node, bool) {
	if !d.usable(n, field) {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n.Line, field, "got %s; expected %s", describe(n), expected)
		return nil, false
	}
	return n.Content, true
}

// stringList decodes a list of strings, each checked by valid, which returns
// a problem ("is not ...; expected ...") or "".
func (d *decoder) stringList(n *yaml.Node, field, what string, valid func(string) string) []string {
	items, ok := d.sequence(n, field, "a list of "+what)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(items))
	for i, item := range items {
		f := index(field, i)
		s, ok := d.str(item, f, "one of "+what)
		if !ok {
			continue
		}
		if problem := valid(s); problem != "" {
			d.add(item.Line, f, "%s", problem)
			continue
		}
		out = append(out, s)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
