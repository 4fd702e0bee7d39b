package spec

import (
	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/internal/yamlnode"
)

const emptySpec = "spec is empty; expected a YAML mapping with at least name, version, epoch, base and initrd"

// parseYAML decodes data into a node tree: exactly one document whose
// root is a mapping (checked later, with the other type checks).
func parseYAML(file string, data []byte) (*yaml.Node, error) {
	root, perr := yamlnode.DecodeDoc(data, yamlnode.DocWords{
		Empty:  emptySpec,
		Extra:  "a second YAML document starts here; expected one spec per file",
		Syntax: "malformed YAML: %s",
	})
	if perr != nil {
		perr.File = file
		return nil, perr
	}
	return root, nil
}
