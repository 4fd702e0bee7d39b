package spec

import (
	"errors"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

const emptySpec = "spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"

// parseYAML decodes data into a node tree: exactly one document whose
// root is a mapping (checked later, with the other type checks).
func parseYAML(file string, data []byte) (*yaml.Node, error) {
	root, err := yamlnode.Decode(data)
	var extra *yamlnode.ExtraDocumentError
	var syntax *yamlnode.SyntaxError
	switch {
	case err == nil:
		return root, nil
	case errors.Is(err, yamlnode.ErrEmpty):
		return nil, &Error{File: file, Line: 1, Msg: emptySpec}
	case errors.As(err, &extra):
		return nil, &Error{File: file, Line: extra.Line, Msg: "a second YAML document starts here; expected one spec per file"}
	case errors.As(err, &syntax):
		return nil, &Error{File: file, Line: syntax.Line, Msg: "malformed YAML: " + syntax.Msg}
	}
	return nil, &Error{File: file, Line: 1, Msg: yamlnode.OneLine(err.Error())}
}
