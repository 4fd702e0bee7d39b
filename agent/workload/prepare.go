package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/berth-os/berth/internal/atomicfile"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
	"github.com/berth-os/berth/agent/volume"
)

// prepare gets everything a container needs before it runs: the image
// (pulled once per digest), its root (a writable layer over the image),
// volumes, the network, and the tenant's cgroup quota.
func (m *Manager) prepare(ctx context.Context, w *worker, want *assignment, id string) (runtime.Spec, error) {
	job := want.Spec
	ref, err := m.imageRef(w.ref.Tenant, job)
	if err != nil {
		return runtime.Spec{}, err
	}
	m.imagesInUse.RLock()
	defer m.imagesInUse.RUnlock()
	// A pinned digest is answered from the store when it is there; a tag
	// (a job written without berthctl) is resolved at the registry every
	// time, never from what this node once pulled under that name.
	var img images.Image
	if job.ImageDigest != "" {
		img, err = m.o.Images.Get(job.ImageDigest)
	} else {
		err = images.ErrNotFound
	}
	if err != nil {
		w.report(ctx, want, jobs.ReplicaStatus{State: "pulling", Reason: "pulling " + jobs.PinnedRef(job.Image, job.ImageDigest)})
		pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		img, err = m.pull(pctx, w.ref.Tenant, job.Image, ref)
		cancel()
		if err != nil {
			return runtime.Spec{}, fmt.Errorf("pull: %w", err)
		}
	}
	if job.ImageDigest != "" && img.Digest != job.ImageDigest {
		return runtime.Spec{}, fmt.Errorf("image %s: got manifest %s, the job is pinned to %s", job.Image, img.Digest, job.ImageDigest)
	}
	rootfs, err := m.o.Images.Mount(ctx, img.Digest, id)
	if err != nil {
		return runtime.Spec{}, fmt.Errorf("container root: %w", err)
	}
	if err := m.claimVolumes(ctx, w.ref, job.Volumes); err != nil {
		return runtime.Spec{}, err
	}
	group := path.Join(m.o.TenantCgroups, w.ref.Tenant)
	m.applyQuota(w.ref.Tenant)

	readOnly := job.ReadOnlyRoot == nil || *job.ReadOnlyRoot
	spec := runtime.Spec{
		ID:           id,
		Rootfs:       rootfs,
		Args:         commandLine(job, img),
		Env:          environment(job, img),
		Cwd:          img.WorkingDir,
		Hostname:     fmt.Sprintf("%s-%d", job.Name, w.ref.Replica),
		ReadOnlyRoot: readOnly,
		CPUMillis:    job.Resources.CPUMillis,
		MemoryBytes:  job.Resources.MemoryBytes,
		PidsMax:      job.Resources.Pids,
		CgroupParent: group,
		StopTimeout:  time.Duration(job.StopTimeoutSeconds) * time.Second,
		Labels: map[string]string{
			labelTenant:     w.ref.Tenant,
			labelJob:        w.ref.Job,
			labelReplica:    strconv.Itoa(w.ref.Replica),
			labelGeneration: strconv.FormatInt(want.Generation, 10),
			labelJobRev:     strconv.FormatInt(want.JobRevision, 10),
			labelRestarts:   strconv.Itoa(w.restarts),
			labelImage:      img.Digest,
		},
	}
	if len(spec.Args) == 0 {
		return runtime.Spec{}, fmt.Errorf("image %s has no entrypoint or cmd and the job gives no command", job.Image)
	}
	for _, v := range job.Volumes {
		src := m.volumeDir(w.ref, v.Name)
		if v.Replicated() {
			if m.o.Replicated == nil {
				return runtime.Spec{}, fmt.Errorf("volume %s: this node cannot hold replicated volumes", v.Name)
			}
			id := volume.ID{Tenant: w.ref.Tenant, Job: w.ref.Job, Replica: w.ref.Replica, Name: v.Name}
			if src, err = m.o.Replicated.Attach(ctx, id, v.SizeBytes); err != nil {
				return runtime.Spec{}, err
			}
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: src, Target: v.Path})
	}
	if m.o.ResolvConf != nil {
		file := m.resolvConfPath(id)
		if err := atomicfile.WriteFile(file, m.o.ResolvConf(w.ref.Tenant), 0o644); err != nil {
			return runtime.Spec{}, fmt.Errorf("resolv.conf: %w", err)
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: file, Target: "/etc/resolv.conf", ReadOnly: true})
	}
	n, err := m.network()
	if err != nil {
		return runtime.Spec{}, err
	}
	if n != nil {
		att, err := n.Attach(id)
		if err != nil {
			return runtime.Spec{}, fmt.Errorf("network: %w", err)
		}
		spec.NetNSPath = att.NetNSPath
		if att.IPv4.IsValid() {
			spec.ContainerIP = att.IPv4.String()
		}
		m.rememberAddress(id, att)
		// Known to the node network before the container runs: its
		// tenant rules fail closed for an address they do not know.
		m.noteEndpoint(id, w.ref, job.Ports)
	}
	for _, p := range job.Ports {
		if spec.ContainerIP == "" {
			return runtime.Spec{}, fmt.Errorf("port %d: this node has no container network", p.Container)
		}
		if m.o.KernelPorts {
			continue // published by the node network (Endpoints)
		}
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		spec.Ports = append(spec.Ports, runtime.Port{HostIP: m.o.PortBindIP, HostPort: p.Host, ContainerPort: p.Container, Proto: proto})
	}
	return spec, nil
}

// resolvConfPath is where a container's /etc/resolv.conf is kept on the node.
func (m *Manager) resolvConfPath(id string) string {
	return filepath.Join(m.o.StateDir, "resolv", id+".conf")
}

// ClusterRegistryHost names the cluster-local registry in image references.
const ClusterRegistryHost = jobs.ClusterRegistryHost

// imageRef is what this node pulls for a job of tenant: the image with its
// pinned digest, and berth.local/PATH pointed at this node's agent, in the
// tenant's namespace of the cluster registry (berth.local/web of acme is
// acme/web), so a job can only name its own tenant's or shared images.
func (m *Manager) imageRef(tenant string, job jobs.Job) (string, error) {
	ref := jobs.PinnedRef(job.Image, job.ImageDigest)
	ci, ok, err := jobs.ParseClusterImage(tenant, ref)
	if err != nil || !ok || m.o.LocalRegistry == "" {
		return ref, err
	}
	if ci.Digest != "" {
		return m.o.LocalRegistry + "/" + ci.Repository + "@" + ci.Digest, nil
	}
	return m.o.LocalRegistry + "/" + ci.Repository + ":" + ci.Tag, nil
}

// pull fetches ref for tenant. An image outside the cluster is pulled
// with the tenant's stored credentials for its registry, if any: one
// tenant's credentials never serve another tenant's pull.
func (m *Manager) pull(ctx context.Context, tenant, image, ref string) (images.Image, error) {
	if strings.HasPrefix(image, ClusterRegistryHost+"/") {
		return m.o.Images.Pull(ctx, ref)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return images.Image{}, fmt.Errorf("image %q: %w", image, err)
	}
	reg := r.Context().RegistryStr()
	resp, err := m.cli.Get(ctx, jobs.RegistryAuthKey(tenant, reg))
	if err != nil {
		return images.Image{}, fmt.Errorf("read tenant %s's credentials for %s: %w", tenant, reg, err)
	}
	if len(resp.Kvs) == 0 {
		return m.o.Images.Pull(ctx, ref)
	}
	var a jobs.RegistryAuth
	if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
		// Say which record, never what is in it.
		return images.Image{}, fmt.Errorf("tenant %s's credentials for %s are unreadable (store them again with berthctl registry login)", tenant, reg)
	}
	auth := authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken})
	return m.o.Images.PullWithAuth(ctx, ref, auth)
}

// commandLine follows Docker's rules: the job's command replaces the
// image's entrypoint, the job's args replace the image's cmd.
func commandLine(job jobs.Job, img images.Image) []string {
	if len(job.Command) > 0 {
		return append(slices.Clone(job.Command), job.Args...)
	}
	args := job.Args
	if len(args) == 0 {
		args = img.Cmd
	}
	return append(slices.Clone(img.Entrypoint), args...)
}

// environment is the image's environment overridden by the job's, sorted
// for a stable container spec.
func environment(job jobs.Job, img images.Image) []string {
	env := map[string]string{}
	for _, kv := range img.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	maps.Copy(env, job.Env)
	if _, ok := env["PATH"]; !ok {
		env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}
