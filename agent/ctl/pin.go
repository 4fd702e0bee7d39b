package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/registry"
)

// pinImage resolves the job's image to the manifest digest it names now and
// stores it in the job: every replica on every node then runs those bytes,
// and a later push of the tag changes nothing until the job is submitted
// again. Cluster images resolve in etcd (the registry's tags live there);
// others at their registry, with the tenant's stored credentials.
func pinImage(ctx context.Context, s *session, job *jobs.Job) error {
	ci, cluster, err := jobs.ParseClusterImage(job.Tenant, job.Image)
	if err != nil {
		return fail(ExitUsage, "%v", err)
	}
	if cluster {
		if ci.Digest != "" {
			job.ImageDigest = ci.Digest
			return nil
		}
		var tag registry.Tag
		found := false
		err := s.request(ctx, "resolve image", func(ctx context.Context) error {
			resp, err := s.cli.Get(ctx, registry.TagKey(ci.Repository, ci.Tag))
			if err != nil || len(resp.Kvs) == 0 {
				return err
			}
			found = json.Unmarshal(resp.Kvs[0].Value, &tag) == nil && jobs.IsDigest(tag.Digest)
			return nil
		})
		if err != nil {
			return err
		}
		if !found {
			return fail(ExitNotFound, "image %s not found: no tag %s in repository %s of the cluster registry (push it with berthctl image push)", job.Image, ci.Tag, ci.Repository)
		}
		job.ImageDigest = tag.Digest
		return nil
	}
	ref, err := name.ParseReference(job.Image)
	if err != nil {
		return fail(ExitUsage, "image %q: %v", job.Image, err)
	}
	if d, ok := ref.(name.Digest); ok {
		job.ImageDigest = d.DigestStr()
		return nil
	}
	auth, err := tenantAuth(ctx, s, job.Tenant, ref.Context().RegistryStr())
	if err != nil {
		return err
	}
	rt, err := s.outsideTransport()
	if err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	desc, err := remote.Head(ref, remote.WithContext(hctx), remote.WithTransport(rt), remote.WithAuth(auth))
	if err != nil {
		return fail(ExitError, "resolve image %s: %s", job.Image, registryMessage(err))
	}
	job.ImageDigest = desc.Digest.String()
	return nil
}

// registryMessage is one line from a registry client error, without the
// request's headers or URL credentials.
func registryMessage(err error) string {
	if te, ok := err.(*transport.Error); ok {
		if te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden {
			return fmt.Sprintf("registry refused access (%d); store credentials with berthctl registry login", te.StatusCode)
		}
		if te.StatusCode == http.StatusNotFound {
			return "not found"
		}
	}
	return oneLine(err.Error())
}

// tenantAuth reads the tenant's stored credentials for a registry;
// anonymous when there are none.
func tenantAuth(ctx context.Context, s *session, tenant, reg string) (authn.Authenticator, error) {
	var a jobs.RegistryAuth
	found := false
	err := s.request(ctx, "read registry credentials", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, jobs.RegistryAuthKey(tenant, reg))
		if err != nil || len(resp.Kvs) == 0 {
			return err
		}
		found = json.Unmarshal(resp.Kvs[0].Value, &a) == nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}), nil
}

// outsideTransport talks to registries outside the cluster: the system's
// roots plus the cluster CA (a private registry may use a certificate of
// it), and no client certificate (a cluster identity is nobody else's business).
func (s *session) outsideTransport() (http.RoundTripper, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if s.opts.cfg.CACert != "" {
		data, err := os.ReadFile(s.opts.cfg.CACert)
		if err != nil {
			return nil, fail(ExitUsage, "--cacert: %v", err)
		}
		pool.AppendCertsFromPEM(data)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}
