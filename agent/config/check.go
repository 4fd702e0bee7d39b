package config

import "fmt"

// placeholderIP stands in for an advertise IP that is not set: the agent
// detects its address when it starts, but CheckFile runs before the node's
// network is up (berth-node-config), so detection would fail there. It is a
// documentation address (RFC 5737) and never ends up in a Config.
const placeholderIP = "192.0.2.1"

// CheckFile validates the text of an agent configuration file as Parse
// would read it, without flags and without looking at the network. A
// missing name is checked as hostname (the name the agent will default
// to). The error is one line naming the offending setting; YAML errors
// carry "line N" of data.
func CheckFile(data []byte, hostname string) error {
	var merged Config
	if err := decodeStrict(data, &merged); err != nil {
		return err
	}
	if merged.Name == "" {
		if hostname == "" {
			return fmt.Errorf("name: not set and no host name to default to")
		}
		merged.Name = hostname
	}
	if merged.AdvertiseIP == "" && (merged.PeerURL == "" || merged.ClientURL == "" || merged.APIURL == "") {
		merged.AdvertiseIP = placeholderIP
	}
	return merged.Validate()
}
