package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultAgentConfig is where berth-node-config writes the agent's settings;
// without it the node runs no agent and the check passes.
const DefaultAgentConfig = "/etc/berth/agent.yaml"

// AgentHealthy returns a readiness test for Gate.Ready: when the node is
// configured to run berth-agent, the agent's /healthz must answer 200
// within wait. It asks for the agent's health, not its readiness: a new OS
// that runs the agent is good even while the rest of the cluster is
// unreachable (blessing must not depend on other nodes).
func AgentHealthy(configPath string, wait time.Duration) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		data, err := os.ReadFile(configPath)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("agent config: %w", err)
		}
		var cfg struct {
			MetricsURL string `yaml:"metrics_url"`
		}
		_ = yaml.Unmarshal(data, &cfg) // the agent itself reports a bad file
		url := cfg.MetricsURL
		if url == "" {
			url = "http://127.0.0.1:7481"
		}
		url += "/healthz"
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		client := &http.Client{Timeout: 3 * time.Second}
		var last error
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
				err = fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			last = err
			select {
			case <-ctx.Done():
				return fmt.Errorf("berth-agent not healthy within %s at %s: %v", wait, url, last)
			case <-time.After(time.Second):
			}
		}
	}
}
