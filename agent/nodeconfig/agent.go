package nodeconfig

import (
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/internal/yamlnode"
)

// agentHeader starts every agent.yaml this package writes; a file without
// it was written by someone else and is never removed.
const agentHeader = "# Written by berth-node-config from node.yaml at every boot: edit node.yaml\n# (seed disk /node.yaml or ESP /berth/node.yaml), not this file.\n"

// agent renders the agent section as /etc/berth/agent.yaml and validates it
// with the agent's own configuration reader, so a node never gets a file
// its agent would refuse. Errors point at node.yaml's lines.
func (p *parser) agent(key, v *yaml.Node, name string) {
	if v.Kind != yaml.MappingNode {
		if yamlnode.IsNull(v) {
			p.fail(v.Line, "agent: is empty (leave it out to keep the agent off)")
		} else {
			p.fail(v.Line, "agent: must be a mapping of berth-agent settings (voters:, join:, token:, ...)")
		}
		return
	}
	doc := &yaml.Node{Kind: yaml.MappingNode, Line: v.Line, Content: append([]*yaml.Node(nil), v.Content...)}
	if !hasKey(v, "name") && p.cfg.Hostname != "" {
		// The node's name follows the configured host name.
		doc.Content = append([]*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "name", Line: key.Line},
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: name, Line: key.Line},
		}, doc.Content...)
	}
	body, err := yaml.Marshal(doc)
	if err != nil {
		p.fail(key.Line, "agent: cannot render: "+err.Error())
		return
	}
	lines := map[int]int{}
	var back yaml.Node
	if err := yaml.Unmarshal(body, &back); err == nil && len(back.Content) == 1 {
		mapLines(back.Content[0], doc, lines)
	}
	if err := config.CheckFile(body, name); err != nil {
		p.agentProblems(err.Error(), key, v, lines)
		return
	}
	p.cfg.AgentYAML = append([]byte(agentHeader), body...)
}

var (
	yamlAtLineRE   = regexp.MustCompile(`line (\d+): `)
	unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)
)

// agentProblems turns the agent config reader's one-line error into
// problems at node.yaml lines: YAML errors carry lines of the rendered
// file, which lines maps back; validation errors start with the setting's
// flag name, which is found among the section's keys.
func (p *parser) agentProblems(msg string, key, v *yaml.Node, lines map[int]int) {
	if locs := yamlAtLineRE.FindAllStringSubmatchIndex(msg, -1); locs != nil {
		for i, loc := range locs {
			end := len(msg)
			if i+1 < len(locs) {
				end = locs[i+1][0]
			}
			n, _ := strconv.Atoi(msg[loc[2]:loc[3]])
			line, ok := lines[n]
			if !ok || line == 0 {
				line = key.Line
			}
			text := strings.TrimSpace(msg[loc[1]:end])
			text = unknownFieldRE.ReplaceAllString(text, `unknown setting "$1"`)
			p.fail(line, "agent: "+text)
		}
		return
	}
	line := key.Line
	setting, _, _ := strings.Cut(msg, ":")
	setting, _, _ = strings.Cut(setting, "/") // "peer-url/client-url/api-url"
	yamlKey := strings.ReplaceAll(strings.TrimSpace(setting), "-", "_")
	for i := 0; i+1 < len(v.Content); i += 2 {
		if k := yamlnode.Deref(v.Content[i]); k.Value == yamlKey {
			line = k.Line
		}
	}
	p.fail(line, "agent: "+msg)
}

func hasKey(m *yaml.Node, name string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if yamlnode.Deref(m.Content[i]).Value == name {
			return true
		}
	}
	return false
}

// mapLines records, for each node of the re-parsed rendering, the line of
// the same node in the source; both trees have the same shape.
func mapLines(rendered, source *yaml.Node, lines map[int]int) {
	source = yamlnode.Deref(source)
	if _, seen := lines[rendered.Line]; !seen && source.Line != 0 {
		lines[rendered.Line] = source.Line
	}
	if len(rendered.Content) != len(source.Content) {
		return
	}
	for i := range rendered.Content {
		mapLines(rendered.Content[i], source.Content[i], lines)
	}
}
