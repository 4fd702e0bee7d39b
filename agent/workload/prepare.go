package workload

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
)

// prepare gets everything a container needs before it runs: the image
// (pulled once per digest), its root (a writable layer over the image),
// volumes, the network, and the tenant's cgroup quota.
func (m *Manager) prepare(ctx context.Context, w *worker, want *assignment, id string) (runtime.Spec, error) {
	job := want.Spec
	ref := m.imageRef(job.Image)
	m.imagesInUse.RLock()
	defer m.imagesInUse.RUnlock()
	img, err := m.o.Images.Get(ref)
	if err != nil {
		w.report(ctx, want, jobs.ReplicaStatus{State: "pulling", Reason: "pulling " + job.Image})
		pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		img, err = m.o.Images.Pull(pctx, ref)
		cancel()
		if err != nil {
			return runtime.Spec{}, fmt.Errorf("pull: %w", err)
		}
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
		},
	}
	if len(spec.Args) == 0 {
		return runtime.Spec{}, fmt.Errorf("image %s has no entrypoint or cmd and the job gives no command", job.Image)
	}
	for _, v := range job.Volumes {
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: m.volumeDir(w.ref, v.Name), Target: v.Path})
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
	}
	for _, p := range job.Ports {
		if spec.ContainerIP == "" {
			return runtime.Spec{}, fmt.Errorf("port %d: this node has no container network", p.Container)
		}
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		spec.Ports = append(spec.Ports, runtime.Port{HostIP: m.o.PortBindIP, HostPort: p.Host, ContainerPort: p.Container, Proto: proto})
	}
	return spec, nil
}

// ClusterRegistryHost names the cluster-local registry in image references.
const ClusterRegistryHost = "berth.local"

// imageRef points references to the cluster registry at this node's agent.
func (m *Manager) imageRef(ref string) string {
	if rest, ok := strings.CutPrefix(ref, ClusterRegistryHost+"/"); ok && m.o.LocalRegistry != "" {
		return m.o.LocalRegistry + "/" + rest
	}
	return ref
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
