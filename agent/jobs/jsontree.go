package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

// maxJSONDepth bounds nesting; a job is at most three levels deep.
const maxJSONDepth = 32

// jsonTree parses JSON into the same node tree the YAML parser makes, with
// line numbers, so one strict walker serves both. (YAML parsers reject some
// valid JSON, such as the "\/" escape, hence a JSON reader of its own.)
func jsonTree(data []byte) (*yaml.Node, *yamlnode.Error) {
	t := &jsonTreeBuilder{data: data, dec: json.NewDecoder(bytes.NewReader(data)), line: 1}
	t.dec.UseNumber()
	root, err := t.value(0)
	if err != nil {
		return nil, err
	}
	line := t.lineAt(t.dec.InputOffset())
	if _, terr := t.dec.Token(); !errors.Is(terr, io.EOF) {
		return nil, &yamlnode.Error{Line: line, Msg: "data after the JSON object; expected one job per file"}
	}
	return root, nil
}

type jsonTreeBuilder struct {
	data []byte
	dec  *json.Decoder
	pos  int // data[:pos] has been counted into line
	line int
}

// lineAt returns the line of the next token at or after off, skipping the
// white space and separators the decoder has not consumed yet.
func (t *jsonTreeBuilder) lineAt(off int64) int {
	end := int(off)
	for end < len(t.data) && strings.IndexByte(" \t\r\n,:", t.data[end]) >= 0 {
		end++
	}
	if end > t.pos {
		t.line += bytes.Count(t.data[t.pos:end], []byte{'\n'})
		t.pos = end
	}
	return t.line
}

func (t *jsonTreeBuilder) value(depth int) (*yaml.Node, *yamlnode.Error) {
	line := t.lineAt(t.dec.InputOffset())
	if depth > maxJSONDepth {
		return nil, &yamlnode.Error{Line: line, Msg: "JSON nested too deeply; expected a job object"}
	}
	tok, err := t.dec.Token()
	if err != nil {
		return nil, t.syntaxError(err, line)
	}
	switch v := tok.(type) {
	case json.Delim:
		n := &yaml.Node{Line: line, Column: 1}
		switch v {
		case '{':
			n.Kind, n.Tag = yaml.MappingNode, "!!map"
		case '[':
			n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
		default:
			return nil, &yamlnode.Error{Line: line, Msg: fmt.Sprintf("unexpected %q; expected valid JSON", v)}
		}
		for t.dec.More() {
			if n.Kind == yaml.MappingNode {
				key, err := t.value(depth + 1)
				if err != nil {
					return nil, err
				}
				n.Content = append(n.Content, key)
			}
			item, err := t.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, item)
		}
		if _, err := t.dec.Token(); err != nil { // the closing delimiter
			return nil, t.syntaxError(err, t.lineAt(t.dec.InputOffset()))
		}
		return n, nil
	case string:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Style: yaml.DoubleQuotedStyle, Value: v, Line: line, Column: 1}, nil
	case json.Number:
		tag := "!!int"
		if strings.ContainsAny(string(v), ".eE") {
			tag = "!!float"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: string(v), Line: line, Column: 1}, nil
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(v), Line: line, Column: 1}, nil
	case nil:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null", Line: line, Column: 1}, nil
	}
	return nil, &yamlnode.Error{Line: line, Msg: fmt.Sprintf("unexpected token %v; expected valid JSON", tok)}
}

func (t *jsonTreeBuilder) syntaxError(err error, line int) *yamlnode.Error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line = 1 + bytes.Count(t.data[:min(int(se.Offset), len(t.data))], []byte{'\n'})
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &yamlnode.Error{Line: line, Msg: "JSON ends early; expected the rest of the object"}
	}
	return &yamlnode.Error{Line: line, Msg: strings.TrimPrefix(err.Error(), "json: ") + "; expected valid JSON"}
}
