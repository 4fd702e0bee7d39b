package ctl

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config says how to reach the cluster. It is merged from, lowest first:
// the config file, BERTHCTL_* environment variables, command-line flags.
type Config struct {
	Endpoints []string `yaml:"endpoints"`
	CACert    string   `yaml:"cacert"`
	Cert      string   `yaml:"cert"`
	Key       string   `yaml:"key"`
}

// DefaultEndpoint is the local agent's etcd client URL.
const DefaultEndpoint = "https://127.0.0.1:2379"

// Environment variables read by berthctl.
const (
	EnvConfig    = "BERTHCTL_CONFIG"
	EnvEndpoints = "BERTHCTL_ENDPOINTS" // comma-separated
	EnvCACert    = "BERTHCTL_CACERT"
	EnvCert      = "BERTHCTL_CERT"
	EnvKey       = "BERTHCTL_KEY"
	EnvOutput    = "BERTHCTL_OUTPUT"
)

// defaultConfigPath is $XDG_CONFIG_HOME/berthctl.yaml or
// ~/.config/berthctl.yaml; "" when neither variable is set.
func defaultConfigPath(getenv func(string) string) string {
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "berthctl.yaml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "berthctl.yaml")
	}
	return ""
}

// loadConfigFile reads a YAML config file strictly. A missing file is only
// an error when the user named it (mustExist). Relative certificate paths
// are taken relative to the file's directory, so a config can sit next to
// its certificates.
func loadConfigFile(path string, mustExist bool) (Config, error) {
	var c Config // an empty file (io.EOF from the decoder) is an empty config
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !mustExist {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("config file %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&c.CACert, &c.Cert, &c.Key} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// merge overlays the non-empty fields of o onto c.
func (c Config) merge(o Config) Config {
	if len(o.Endpoints) > 0 {
		c.Endpoints = o.Endpoints
	}
	for _, f := range []struct {
		dst *string
		src string
	}{{&c.CACert, o.CACert}, {&c.Cert, o.Cert}, {&c.Key, o.Key}} {
		if f.src != "" {
			*f.dst = f.src
		}
	}
	return c
}

func (c Config) check() error {
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{DefaultEndpoint}
	}
	for _, e := range c.Endpoints {
		if !strings.HasPrefix(e, "https://") && !strings.HasPrefix(e, "http://") {
			return fmt.Errorf("endpoint %q: want a URL like %s", e, DefaultEndpoint)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("give both a client certificate (--cert) and its key (--key), or neither")
	}
	return nil
}
