package config

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"
)

// Duration is a duration setting, written "30s" in the file and on the
// command line (a bare number is refused: it has no unit). The text is
// kept until Validate parses it, so that the error names the setting.
type Duration struct {
	time.Duration
	text string
}

func (d *Duration) isSet() bool { return d.text != "" || d.Duration != 0 }

// parse turns the text given in the file or on the command line into the
// duration; like is an example for the error.
func (d *Duration) parse(name, like string) error {
	if d.text == "" {
		return nil
	}
	v, err := time.ParseDuration(d.text)
	if err != nil {
		return fmt.Errorf("%s: %q is not a duration like %s", name, d.text, like)
	}
	*d = Duration{Duration: v}
	return nil
}

func (d *Duration) String() string {
	if d.text != "" {
		return d.text
	}
	return d.Duration.String()
}

// Set keeps the text; Validate parses it.
func (d *Duration) Set(s string) error { *d = Duration{text: s}; return nil }
func (*Duration) Type() string         { return "duration" }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration like 30s", n.Line)
	}
	return d.Set(n.Value)
}

// Size is a byte size setting like 2GiB; like Duration, its text is
// parsed by Validate.
type Size struct {
	Bytes int64
	text  string
}

func (s *Size) isSet() bool { return s.text != "" || s.Bytes != 0 }

func (s *Size) String() string {
	if s.text != "" {
		return s.text
	}
	return humanize.IBytes(uint64(max(s.Bytes, 0)))
}

func (s *Size) Set(v string) error { *s = Size{text: v}; return nil }
func (*Size) Type() string         { return "size" }

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size like 2GiB", n.Line)
	}
	return s.Set(n.Value)
}

// listValue is a comma-separated flag (--join A,B).
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }
func (l *listValue) Set(s string) error {
	*l = splitList(s)
	return nil
}
func (*listValue) Type() string { return "urls" }

// labelsValue is --labels KEY=VALUE,...; it replaces the file's labels.
type labelsValue map[string]string

func (m *labelsValue) String() string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(*m)) {
		out = append(out, k+"="+(*m)[k])
	}
	return strings.Join(out, ",")
}

func (m *labelsValue) Set(s string) error {
	*m = map[string]string{}
	for _, kv := range splitList(s) {
		k, v, _ := strings.Cut(kv, "=")
		(*m)[k] = v
	}
	return nil
}
func (*labelsValue) Type() string { return "labels" }

// boolFlag is --containers[=false] on a *bool (nil: not set).
type boolFlag struct{ p **bool }

func (b boolFlag) String() string {
	if *b.p == nil {
		return "true"
	}
	return strconv.FormatBool(**b.p)
}

func (b boolFlag) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b.p = &v
	return nil
}
func (boolFlag) Type() string     { return "bool" }
func (boolFlag) IsBoolFlag() bool { return true }

// tokenValue is --token or --token-file: giving one drops the other (from
// the file, or given before it on the command line).
type tokenValue struct {
	c    *Config
	file bool
}

func (t *tokenValue) String() string {
	if t.c == nil {
		return ""
	}
	if t.file {
		return t.c.TokenFile
	}
	return t.c.Token
}

func (t *tokenValue) Set(s string) error {
	if t.file {
		t.c.TokenFile, t.c.Token = s, ""
	} else {
		t.c.Token, t.c.TokenFile = s, ""
	}
	return nil
}
func (*tokenValue) Type() string { return "string" }
