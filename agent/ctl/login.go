package ctl

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
)

// maxSecretBytes bounds what login reads from standard input or a config.
const maxSecretBytes = 1 << 20

// cmdRegistry is `berthctl registry login REGISTRY` and `registry logout
// REGISTRY`: the tenant's credentials for a registry outside the cluster,
// stored in etcd under jobs.RegistryAuthKey, which only the tenant's role
// and the nodes (root) may read. Nodes use them for that tenant's pulls.
func cmdRegistry(ctx context.Context, s *session) error {
	if len(s.opts.args) != 2 || (s.opts.args[0] != "login" && s.opts.args[0] != "logout") {
		return fail(ExitUsage, "usage: berthctl registry login REGISTRY [--username USER | --docker-config FILE] < SECRET; berthctl registry logout REGISTRY")
	}
	reg := s.opts.args[1]
	if err := checkRegistryHost(reg); err != nil {
		return fail(ExitUsage, "%v", err)
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	key := jobs.RegistryAuthKey(tenant, reg)
	if s.opts.args[0] == "logout" {
		deleted, err := s.deleteKey(ctx, "remove registry credentials", key)
		if err != nil {
			return err
		}
		if !deleted {
			return fail(ExitNotFound, "tenant %s has no credentials for %s", tenant, reg)
		}
		fmt.Fprintf(s.sys.Stdout, "credentials of tenant %s for %s removed\n", tenant, reg)
		return nil
	}
	auth, err := readLogin(s, reg)
	if err != nil {
		return err
	}
	value, err := json.Marshal(auth)
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	if err := s.request(ctx, "store registry credentials", func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, key, string(value))
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(s.sys.Stdout, "credentials of tenant %s for %s stored (%s); nodes use them for the tenant's pulls\n", tenant, reg, authKind(auth))
	return nil
}

func authKind(a jobs.RegistryAuth) string {
	switch {
	case a.Username != "":
		return "user " + a.Username
	case a.IdentityToken != "":
		return "identity token"
	}
	return "token"
}

// checkRegistryHost accepts HOST[:PORT] as image references name registries.
func checkRegistryHost(reg string) error {
	if reg == "" || strings.ContainsAny(reg, "/@ \t\r\n") || strings.HasPrefix(reg, jobs.ClusterRegistryHost) {
		return fmt.Errorf("registry %q: want HOST[:PORT] of a registry outside the cluster", reg)
	}
	return nil
}

// readLogin reads the secret: a docker config.json's entry for reg
// (--docker-config), or standard input's first line: the password of
// --username, else a registry token.
func readLogin(s *session, reg string) (jobs.RegistryAuth, error) {
	if s.opts.dockerConfig != "" {
		data, err := os.ReadFile(s.opts.dockerConfig)
		if err != nil {
			return jobs.RegistryAuth{}, fail(ExitUsage, "--docker-config: %v", err)
		}
		return fromDockerConfig(data, reg)
	}
	in := s.sys.Stdin
	if in == nil {
		in = os.Stdin
	}
	line, err := bufio.NewReader(io.LimitReader(in, maxSecretBytes)).ReadString('\n')
	if err != nil && err != io.EOF {
		return jobs.RegistryAuth{}, fail(ExitUsage, "read the secret from standard input: %v", err)
	}
	secret := strings.TrimRight(line, "\r\n")
	if secret == "" {
		return jobs.RegistryAuth{}, fail(ExitUsage, "no secret on standard input (the password of --username, or a token)")
	}
	if s.opts.username != "" {
		return jobs.RegistryAuth{Username: s.opts.username, Password: secret}, nil
	}
	return jobs.RegistryAuth{RegistryToken: secret}, nil
}

// fromDockerConfig reads auths[reg] of a docker config.json: "auth"
// (base64 user:password), or username/password, or identitytoken/registrytoken.
func fromDockerConfig(data []byte, reg string) (jobs.RegistryAuth, error) {
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
			RegistryToken string `json:"registrytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return jobs.RegistryAuth{}, fail(ExitUsage, "--docker-config: not a docker config.json: %v", oneLine(err.Error()))
	}
	e, ok := cfg.Auths[reg]
	if !ok {
		e, ok = cfg.Auths["https://"+reg]
	}
	if !ok {
		return jobs.RegistryAuth{}, fail(ExitUsage, "--docker-config: no entry for %s under \"auths\"", reg)
	}
	a := jobs.RegistryAuth{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken, RegistryToken: e.RegistryToken}
	if e.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(e.Auth)
		user, pass, found := strings.Cut(string(raw), ":")
		if err != nil || !found {
			return jobs.RegistryAuth{}, fail(ExitUsage, "--docker-config: the \"auth\" of %s is not base64 of USER:PASSWORD", reg)
		}
		a.Username, a.Password = user, pass
	}
	if a == (jobs.RegistryAuth{}) {
		return jobs.RegistryAuth{}, fail(ExitUsage, "--docker-config: the entry for %s has no credentials (a credential helper's entry cannot be copied)", reg)
	}
	return a, nil
}
