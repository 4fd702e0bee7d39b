package qemu

import (
	"bytes"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/berth-os/berth/builder/seed"
	"github.com/berth-os/berth/internal/atomicfile"
)

// NodeConfig is the node.yaml a cluster node boots with (the schema of
// agent/nodeconfig; only what the harness sets).
type NodeConfig struct {
	Hostname          string       `yaml:"hostname"`
	SSHAuthorizedKeys []string     `yaml:"ssh_authorized_keys,omitempty"`
	Network           *NodeNetwork `yaml:"network,omitempty"`
	Agent             *NodeAgent   `yaml:"agent,omitempty"`
}

// NodeNetwork is node.yaml's network section.
type NodeNetwork struct {
	Interfaces []NodeInterface `yaml:"interfaces"`
}

// NodeInterface is one interface of node.yaml's network section.
type NodeInterface struct {
	Name      string   `yaml:"name,omitempty"`
	DHCP      bool     `yaml:"dhcp"`
	Addresses []string `yaml:"addresses,omitempty"`
	Gateway4  string   `yaml:"gateway4,omitempty"`
	Gateway6  string   `yaml:"gateway6,omitempty"`
}

// NodeAgent is node.yaml's agent section (keys of berth-agent's config).
type NodeAgent struct {
	Name        string            `yaml:"name,omitempty"`
	Voters      int               `yaml:"voters"`
	AdvertiseIP string            `yaml:"advertise_ip"`
	Join        []string          `yaml:"join,omitempty"`
	Token       string            `yaml:"token"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	// etcd's raft timing, set for emulated nodes (see DefaultNodeConfig).
	HeartbeatInterval string `yaml:"heartbeat_interval,omitempty"`
	ElectionTimeout   string `yaml:"election_timeout,omitempty"`
}

// YAML renders the configuration.
func (nc NodeConfig) YAML() ([]byte, error) {
	data, err := yaml.Marshal(nc)
	if err != nil {
		return nil, fmt.Errorf("marshal node config: %w", err)
	}
	return data, nil
}

// DefaultNodeConfig is node i's configuration: hostname node-i, static
// addresses on the cluster bridge, root's key sshKey, and an agent that
// bootstraps (node-1) or joins node-1 with the cluster's secret.
func (c *Cluster) DefaultNodeConfig(i int, sshKey string) NodeConfig {
	n := c.Nodes[i-1]
	voters := 3
	if len(c.Nodes) < 3 {
		voters = 1
	}
	agent := &NodeAgent{Name: n.Name, Voters: voters, AdvertiseIP: n.IPv4, Token: c.Secret}
	if i > 1 {
		agent.Join = []string{"https://" + c.Nodes[0].IPv4 + ":7480"}
	}
	if c.Accel == AccelTCG {
		// Software emulation is a slow machine: etcd's tuning advice for
		// one is a longer heartbeat and election timeout. The defaults
		// (100 ms, 1 s) cost an emulated node about 15% more CPU in raft
		// traffic alone, and a node starved for a second loses its leader.
		agent.HeartbeatInterval, agent.ElectionTimeout = "500ms", "5s"
	}
	nc := NodeConfig{
		Hostname: n.Name,
		Network: &NodeNetwork{Interfaces: []NodeInterface{{
			Name:      "en* eth*",
			Addresses: []string{n.IPv4 + "/24", n.IPv6 + "/64"},
			Gateway4:  BridgeIPv4,
			Gateway6:  BridgeIPv6,
		}}},
		Agent: agent,
	}
	if sshKey != "" {
		nc.SSHAuthorizedKeys = []string{sshKey}
	}
	return nc
}

// NodeConfig returns node i's configuration as the harness made it, with
// the harness's ssh key; tests change it and give it to WriteNodeConfig.
func (c *Cluster) NodeConfig(i int) (NodeConfig, error) {
	if _, err := c.Node(i); err != nil {
		return NodeConfig{}, err
	}
	pub, err := os.ReadFile(c.SSHKey() + ".pub")
	if err != nil {
		return NodeConfig{}, fmt.Errorf("read the cluster's ssh key: %w", err)
	}
	return c.DefaultNodeConfig(i, string(bytes.TrimSpace(pub))), nil
}

// WriteNodeConfig writes node i's node.yaml (any bytes: tests give broken
// ones too) and its seed disk; the node reads it at its next boot. It
// refuses while the node runs: the guest has the seed disk attached.
func (c *Cluster) WriteNodeConfig(i int, nodeYAML []byte) error {
	n, err := c.Node(i)
	if err != nil {
		return err
	}
	if pid := n.pid(); pid != 0 {
		return fmt.Errorf("%s is running (qemu pid %d): kill it before changing its seed disk", n.Name, pid)
	}
	if err := atomicfile.WriteFile(n.NodeYAML(), nodeYAML, 0o600); err != nil {
		return err
	}
	if err := seed.Write(n.Seed(), nodeYAML); err != nil {
		return fmt.Errorf("%s: seed disk: %w", n.Name, err)
	}
	return nil
}
