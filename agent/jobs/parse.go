package jobs

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

// MaxJobFileBytes bounds what ParseJob reads.
const MaxJobFileBytes = 1 << 20

// ParseJob reads a job file in YAML or JSON. It is strict: unknown keys,
// duplicate keys and wrong types are errors, and every error is one line
// "SOURCE:LINE: FIELD: problem; expected ...". Defaults are filled in. The
// tenant may be left out (berthctl fills it from the caller's identity);
// Validate requires it.
func ParseJob(data []byte, source string) (Job, error) {
	if len(data) > MaxJobFileBytes {
		return Job{}, fmt.Errorf("%s: file is %d bytes; expected at most %d", source, len(data), MaxJobFileBytes)
	}
	root, perr := parseTree(data)
	if perr != nil {
		return Job{}, inFile(perr, source)
	}
	d := &decoder{lines: map[string]int{"": root.Line}}
	j, perr := d.job(root)
	if perr != nil {
		return Job{}, inFile(perr, source)
	}
	if fe := j.validate(false); fe != nil {
		return Job{}, inFile(&yamlnode.Error{Line: d.lineOf(fe.Field), Field: fe.Field, Msg: fe.Problem}, source)
	}
	// New jobs' names are single DNS labels: the job's service name is
	// JOB.TENANT.berth. (Stored jobs of older releases may hold a dot;
	// they keep running, without a service name.)
	if strings.Contains(j.Name, ".") {
		return Job{}, inFile(&yamlnode.Error{Line: d.lineOf("name"), Field: "name",
			Msg: fmt.Sprintf("%q is not a DNS label: '.' is not allowed, the job's service name is JOB.TENANT.berth; use %q", clip(j.Name), strings.ReplaceAll(j.Name, ".", "-"))}, source)
	}
	return j, nil
}

// inFile names the job file in a problem found by the walk.
func inFile(e *yamlnode.Error, source string) error {
	e.File = source
	return e
}

// parseTree returns the top node of the single document in data.
func parseTree(data []byte) (*yaml.Node, *yamlnode.Error) {
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
		root, jerr := jsonTree(data)
		if jerr == nil {
			return root, nil
		}
		// A YAML flow mapping ({name: web}) also starts with '{'.
		if root, yerr := yamlTree(data); yerr == nil {
			return root, nil
		}
		return nil, jerr
	}
	return yamlTree(data)
}

func yamlTree(data []byte) (*yaml.Node, *yamlnode.Error) {
	return yamlnode.DecodeDoc(data, yamlnode.DocWords{
		Empty:  "empty file; expected a job mapping with name, image, resources",
		Extra:  "a second YAML document; expected one job per file",
		Syntax: "%s; expected valid YAML or JSON",
	})
}

// decoder walks the node tree and remembers the line of every field, so a
// validation error found later can point at it.
type decoder struct {
	lines map[string]int
}

// lineOf finds the line of field or of its nearest recorded parent.
func (d *decoder) lineOf(field string) int {
	for {
		if l, ok := d.lines[field]; ok {
			return l
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			return d.lines[""]
		}
		field = field[:i]
	}
}

var jobKeys = []string{"schema", "name", "tenant", "image", "command", "args", "env", "replicas", "resources",
	"read_only_root", "volumes", "ports", "restart", "node_selector", "spread", "stopped", "stop_timeout_seconds"}

func (d *decoder) job(n *yaml.Node) (Job, *yamlnode.Error) {
	var j Job
	replicasSet := false
	perr := d.mapping(n, "", jobKeys, func(key string, v *yaml.Node) *yamlnode.Error {
		var err *yamlnode.Error
		switch key {
		case "schema":
			j.Schema, err = str(v, key)
		case "name":
			j.Name, err = str(v, key)
		case "tenant":
			j.Tenant, err = str(v, key)
		case "image":
			j.Image, err = str(v, key)
		case "command":
			j.Command, err = d.strList(v, key)
		case "args":
			j.Args, err = d.strList(v, key)
		case "env":
			j.Env, err = d.strMap(v, key)
		case "replicas":
			var r int64
			r, err = integer(v, key)
			if err == nil && (r < 0 || r > MaxReplicas) {
				err = &yamlnode.Error{Line: v.Line, Field: key, Msg: fmt.Sprintf("%d is out of range; expected 0..%d", r, MaxReplicas)}
			}
			j.Replicas, replicasSet = int(r), true
		case "resources":
			j.Resources, err = d.resources(v)
		case "read_only_root":
			var b bool
			b, err = boolean(v, key)
			j.ReadOnlyRoot = &b
		case "volumes":
			j.Volumes, err = d.volumes(v)
		case "ports":
			j.Ports, err = d.ports(v)
		case "restart":
			j.Restart, err = str(v, key)
		case "node_selector":
			j.NodeSelector, err = d.strMap(v, key)
		case "spread":
			var b bool
			b, err = boolean(v, key)
			j.Spread = &b
		case "stopped":
			j.Stopped, err = boolean(v, key)
		case "stop_timeout_seconds":
			var t int64
			t, err = integer(v, key)
			if err == nil && (t < 1 || t > MaxStopTimeoutSeconds) {
				err = &yamlnode.Error{Line: v.Line, Field: key, Msg: fmt.Sprintf("%d is out of range; expected 1..%d", t, MaxStopTimeoutSeconds)}
			}
			j.StopTimeoutSeconds = int(t)
		}
		return err
	})
	if perr != nil {
		return Job{}, perr
	}
	if !replicasSet {
		j.Replicas = 1
	}
	return j.WithDefaults(), nil
}

func (d *decoder) resources(n *yaml.Node) (Resources, *yamlnode.Error) {
	var r Resources
	keys := []string{"cpu", "cpu_millis", "memory", "memory_bytes", "pids"}
	seen := map[string]string{}
	perr := d.mapping(n, "resources", keys, func(key string, v *yaml.Node) *yamlnode.Error {
		field := "resources." + key
		// cpu and cpu_millis are one field in two spellings; so are memory and memory_bytes.
		canon := strings.TrimSuffix(strings.TrimSuffix(key, "_millis"), "_bytes")
		if other, dup := seen[canon]; dup {
			return &yamlnode.Error{Line: v.Line, Field: field, Msg: fmt.Sprintf("given together with %s; expected only one of them", other)}
		}
		seen[canon] = key
		d.lines["resources."+canon] = v.Line
		switch key {
		case "cpu", "memory":
			s, err := quantity(v, field)
			if err != nil {
				return err
			}
			parse := ParseCPU
			if key == "memory" {
				parse = ParseMemory
			}
			q, perr := parse(s)
			if perr != nil {
				return &yamlnode.Error{Line: v.Line, Field: field, Msg: perr.Error()}
			}
			if key == "cpu" {
				r.CPUMillis = q
			} else {
				r.MemoryBytes = q
			}
		case "cpu_millis", "memory_bytes", "pids":
			i, err := integer(v, field)
			if err != nil {
				return err
			}
			switch key {
			case "cpu_millis":
				r.CPUMillis = i
			case "memory_bytes":
				r.MemoryBytes = i
			default:
				r.Pids = i
			}
		}
		return nil
	})
	return r, perr
}

func (d *decoder) volumes(n *yaml.Node) ([]Volume, *yamlnode.Error) {
	var vols []Volume
	err := d.sequence(n, "volumes", func(i int, item *yaml.Node) *yamlnode.Error {
		field := fmt.Sprintf("volumes[%d]", i)
		var v Volume
		sized := ""
		err := d.mapping(item, field, []string{"name", "path", "size", "size_bytes", "replicas"}, func(key string, val *yaml.Node) *yamlnode.Error {
			switch key {
			case "size", "size_bytes":
				// One field in two spellings, like memory and memory_bytes.
				if sized != "" {
					return &yamlnode.Error{Line: val.Line, Field: field + "." + key, Msg: fmt.Sprintf("given together with %s; expected only one of them", sized)}
				}
				sized = key
				if key == "size_bytes" {
					n, err := integer(val, field+".size_bytes")
					v.SizeBytes = n
					return err
				}
				s, err := quantity(val, field+".size")
				if err != nil {
					return err
				}
				b, perr := ParseMemory(s)
				if perr != nil {
					return &yamlnode.Error{Line: val.Line, Field: field + ".size", Msg: perr.Error()}
				}
				v.SizeBytes = b
				return nil
			case "replicas":
				n, err := integer(val, field+".replicas")
				v.Replicas = int(n)
				return err
			}
			s, err := str(val, field+"."+key)
			if key == "name" {
				v.Name = s
			} else {
				v.Path = s
			}
			return err
		})
		vols = append(vols, v)
		return err
	})
	return vols, err
}

func (d *decoder) ports(n *yaml.Node) ([]Port, *yamlnode.Error) {
	var ports []Port
	err := d.sequence(n, "ports", func(i int, item *yaml.Node) *yamlnode.Error {
		field := fmt.Sprintf("ports[%d]", i)
		var p Port
		err := d.mapping(item, field, []string{"container", "host", "protocol"}, func(key string, val *yaml.Node) *yamlnode.Error {
			if key == "protocol" {
				s, err := str(val, field+"."+key)
				p.Protocol = s
				return err
			}
			v, err := integer(val, field+"."+key)
			if err == nil && (v < 1 || v > 65535) {
				return &yamlnode.Error{Line: val.Line, Field: field + "." + key, Msg: fmt.Sprintf("%d is not a port; expected 1..65535", v)}
			}
			if key == "container" {
				p.Container = int(v)
			} else {
				p.Host = int(v)
			}
			return err
		})
		ports = append(ports, p)
		return err
	})
	return ports, err
}

// jobWords are the job file's phrases for refused keys. A key is a plain
// string: "1: x" or "<<: *a" is refused as not a name.
var jobWords = yamlnode.Words{
	StringKeys: true,
	BadKey: func(field string, k *yaml.Node, allowed []string) *yamlnode.Error {
		if allowed == nil {
			return yamlnode.At(k, field, "key %s is not a name; expected a plain name", describe(k))
		}
		return yamlnode.At(k, field, "key %s is not a plain name; expected one of %s", describe(k), strings.Join(allowed, ", "))
	},
	Unknown: func(field string, k *yaml.Node, allowed []string) *yamlnode.Error {
		return yamlnode.At(k, join(field, printable(clip(k.Value))), "unknown key; expected one of %s", strings.Join(allowed, ", "))
	},
	Duplicate: func(field string, k *yaml.Node, _ int) *yamlnode.Error {
		return yamlnode.At(k, join(field, printable(clip(k.Value))), "given twice; expected each key once")
	},
}

// mapping calls fn for each key of a mapping, after rejecting non-mappings,
// aliases, non-string, duplicate and unknown keys; it stops at the first
// problem.
func (d *decoder) mapping(n *yaml.Node, field string, allowed []string, fn func(key string, v *yaml.Node) *yamlnode.Error) *yamlnode.Error {
	if err := expectKind(n, field, yaml.MappingNode, "a mapping of key: value"); err != nil {
		return err
	}
	for _, e := range jobWords.Mapping(n, field, allowed) {
		if e.Err != nil {
			return e.Err
		}
		d.lines[join(field, e.Key.Value)] = e.Key.Line
		if err := fn(e.Key.Value, e.Value); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) sequence(n *yaml.Node, field string, fn func(i int, item *yaml.Node) *yamlnode.Error) *yamlnode.Error {
	if err := expectKind(n, field, yaml.SequenceNode, "a list"); err != nil {
		return err
	}
	if len(n.Content) > MaxListLen {
		return &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("has %d entries; expected at most %d", len(n.Content), MaxListLen)}
	}
	for i, item := range n.Content {
		d.lines[fmt.Sprintf("%s[%d]", field, i)] = item.Line
		if err := fn(i, item); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) strList(n *yaml.Node, field string) ([]string, *yamlnode.Error) {
	var list []string
	err := d.sequence(n, field, func(i int, item *yaml.Node) *yamlnode.Error {
		s, err := str(item, fmt.Sprintf("%s[%d]", field, i))
		list = append(list, s)
		return err
	})
	return list, err
}

// strMap reads a mapping of names to text; numbers and booleans as values
// are taken as written (PORT: 8080), since env values and labels are text.
func (d *decoder) strMap(n *yaml.Node, field string) (map[string]string, *yamlnode.Error) {
	if err := expectKind(n, field, yaml.MappingNode, "a mapping of NAME: value"); err != nil {
		return nil, err
	}
	if len(n.Content)/2 > MaxListLen {
		return nil, &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("has %d entries; expected at most %d", len(n.Content)/2, MaxListLen)}
	}
	var m map[string]string
	for _, e := range jobWords.Mapping(n, field, nil) {
		if e.Err != nil {
			return nil, e.Err
		}
		k, v := e.Key, e.Value
		name := field + "." + printable(clip(k.Value))
		d.lines[name] = k.Line
		if err := expectKind(v, name, yaml.ScalarNode, "a value"); err != nil {
			return nil, err
		}
		switch v.ShortTag() {
		case "!!str", "!!int", "!!float", "!!bool":
		default:
			return nil, &yamlnode.Error{Line: v.Line, Field: name, Msg: fmt.Sprintf("got %s; expected text (quote it)", describe(v))}
		}
		if m == nil {
			m = map[string]string{}
		}
		m[k.Value] = v.Value
	}
	return m, nil
}

func expectKind(n *yaml.Node, field string, kind yaml.Kind, want string) *yamlnode.Error {
	if n.Kind == yaml.AliasNode {
		return &yamlnode.Error{Line: n.Line, Field: field, Msg: "aliases (*name) are not supported; expected the value written out"}
	}
	if n.Kind != kind {
		return &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("got %s; expected %s", describe(n), want)}
	}
	return nil
}

func str(n *yaml.Node, field string) (string, *yamlnode.Error) {
	if err := expectKind(n, field, yaml.ScalarNode, "text"); err != nil {
		return "", err
	}
	if n.ShortTag() != "!!str" {
		return "", &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("got %s; expected text (quote it)", describe(n))}
	}
	return n.Value, nil
}

func integer(n *yaml.Node, field string) (int64, *yamlnode.Error) {
	if err := expectKind(n, field, yaml.ScalarNode, "a whole number"); err != nil {
		return 0, err
	}
	if n.ShortTag() != "!!int" {
		return 0, &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("got %s; expected a whole number", describe(n))}
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		return 0, &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("%q is out of range; expected a smaller whole number", n.Value)}
	}
	return v, nil
}

func boolean(n *yaml.Node, field string) (bool, *yamlnode.Error) {
	if err := expectKind(n, field, yaml.ScalarNode, "true or false"); err != nil {
		return false, err
	}
	var v bool
	if n.ShortTag() != "!!bool" || n.Decode(&v) != nil {
		return false, &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("got %s; expected true or false", describe(n))}
	}
	return v, nil
}

// quantity returns the text of a number or a string like "500m" or "1Gi".
func quantity(n *yaml.Node, field string) (string, *yamlnode.Error) {
	if err := expectKind(n, field, yaml.ScalarNode, "an amount"); err != nil {
		return "", err
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float":
		return n.Value, nil
	}
	return "", &yamlnode.Error{Line: n.Line, Field: field, Msg: fmt.Sprintf("got %s; expected an amount like 500m, 0.5, 256Mi", describe(n))}
}

// describe names what a node is, for "got X; expected Y".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing (null)"
	case "!!int", "!!float":
		return "the number " + printable(v)
	case "!!bool":
		return "the boolean " + printable(v)
	case "!!str":
		return strconv.Quote(v)
	}
	return fmt.Sprintf("a value tagged %s", printable(n.ShortTag()))
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}
