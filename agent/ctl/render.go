package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"
)

type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)}
	t.row(header...)
	return t
}

// table is a table on standard output, with its header unless --no-headers.
func (s *session) table(header ...string) *table {
	if s.opts.noHeaders {
		return &table{tw: tabwriter.NewWriter(s.sys.Stdout, 0, 0, 3, ' ', 0)}
	}
	return newTable(s.sys.Stdout, header...)
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// writeStructured prints v as indented JSON or as YAML with the same field
// names (YAML is made from the JSON so the two never disagree).
func writeStructured(w io.Writer, format string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if format == "yaml" {
		var generic any
		if err := json.Unmarshal(data, &generic); err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		if data, err = yaml.Marshal(generic); err != nil {
			return fmt.Errorf("encode output as YAML: %w", err)
		}
	} else {
		data = append(data, '\n')
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// writeFields prints a document as FIELD VALUE lines with dotted paths
// (os.version, cpu.load1), sorted, for reading in a terminal.
func writeFields(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	var generic any
	if err := json.Unmarshal(data, &generic); err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	fields := map[string]string{}
	flatten("", generic, fields)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	t := newTable(w, "FIELD", "VALUE")
	for _, k := range keys {
		t.row(k, fields[k])
	}
	return t.flush()
}

func flatten(prefix string, v any, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, sub := range x {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			flatten(key, sub, out)
		}
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			b, _ := json.Marshal(e)
			parts[i] = strings.Trim(string(b), `"`)
		}
		out[prefix] = strings.Join(parts, ",")
	case nil:
		out[prefix] = "-"
	case string:
		out[prefix] = orDash(x)
	default:
		b, _ := json.Marshal(x)
		out[prefix] = string(b)
	}
}
