package yamlnode

import (
	"slices"

	"gopkg.in/yaml.v3"
)

// Words are one kind of file's phrases for the key problems Mapping finds,
// and its choices where the kinds of file differ. Each func gets the field
// path of the mapping ("" at the top) and the offending key node.
type Words struct {
	// FollowAliases resolves aliases in keys and values (node.yaml);
	// otherwise they are left for the value checks to refuse.
	FollowAliases bool
	// StringKeys takes only !!str keys as names, so "1: x" is a bad key
	// rather than an unknown one.
	StringKeys bool
	BadKey     func(field string, key *yaml.Node, allowed []string) *Error
	// Merge words a "<<" merge key; nil treats it as a bad key.
	Merge     func(field string, key *yaml.Node) *Error
	Unknown   func(field string, key *yaml.Node, allowed []string) *Error
	Duplicate func(field string, key *yaml.Node, firstLine int) *Error
}

// Entry is one key: value pair of a mapping, in document order. Err is set
// when the key is refused (not a name, unknown, given twice); the caller
// reports it in its own way (first one, or all of them).
type Entry struct {
	Key, Value *yaml.Node
	Err        *Error
}

// Mapping checks the keys of the mapping n against allowed (nil allows any
// name). The caller checks first that n is a mapping, in its own words.
func (w *Words) Mapping(n *yaml.Node, field string, allowed []string) []Entry {
	entries := make([]Entry, 0, len(n.Content)/2)
	first := map[string]int{} // key -> line of its first use
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if w.FollowAliases {
			k, v = Deref(k), Deref(v)
		}
		e := Entry{Key: k, Value: v}
		line, dup := first[k.Value]
		switch {
		case k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" && w.Merge != nil:
			e.Err = w.Merge(field, k)
		case k.Kind != yaml.ScalarNode || w.StringKeys && k.ShortTag() != "!!str":
			e.Err = w.BadKey(field, k, allowed)
		case dup:
			e.Err = w.Duplicate(field, k, line)
		default:
			// Unknown keys count as used too, so a second one is "given twice".
			first[k.Value] = k.Line
			if allowed != nil && !slices.Contains(allowed, k.Value) {
				e.Err = w.Unknown(field, k, allowed)
			}
		}
		if e.Err != nil && e.Err.Column == 0 {
			e.Err.Column = k.Column
		}
		entries = append(entries, e)
	}
	return entries
}
