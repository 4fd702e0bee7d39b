package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/agent/runtime"
)

// TenantUser is the etcd user (and certificate CN) of a tenant.
func TenantUser(tenant string) string { return jobs.TenantUser(tenant) }

// cmdTenantAdd creates a tenant's etcd role (TenantGrants) and user.
func cmdTenantAdd(ctx context.Context, s *session) error {
	if len(s.opts.args) != 2 || s.opts.args[0] != "add" {
		return fail(ExitUsage, "usage: berthctl tenant add NAME [--cpu 4000m] [--memory 8Gi]")
	}
	tenant := s.opts.args[1]
	if err := jobs.CheckTenantName(tenant); err != nil {
		return fail(ExitUsage, "%v", err)
	}
	var q jobs.Quota
	var err error
	if s.opts.cpu != "" {
		if q.CPUMillis, err = jobs.ParseCPU(s.opts.cpu); err != nil {
			return fail(ExitUsage, "--cpu: %v", err)
		}
	}
	if s.opts.memory != "" {
		if q.MemoryBytes, err = jobs.ParseMemory(s.opts.memory); err != nil {
			return fail(ExitUsage, "--memory: %v", err)
		}
	}
	user := TenantUser(tenant)
	quota, _ := json.Marshal(q)
	type step struct {
		what string
		do   func(context.Context) error
	}
	steps := []step{
		{"add role", func(ctx context.Context) error { _, err := s.cli.RoleAdd(ctx, user); return err }},
	}
	for _, g := range TenantGrants(tenant) {
		steps = append(steps, step{"grant " + g.What, func(ctx context.Context) error {
			_, err := s.cli.RoleGrantPermission(ctx, user, g.Key, g.End, g.Perm)
			return err
		}})
	}
	steps = append(steps, []step{
		{"add user", func(ctx context.Context) error {
			_, err := s.cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant role", func(ctx context.Context) error { _, err := s.cli.UserGrantRole(ctx, user, user); return err }},
		{"set quota", func(ctx context.Context) error {
			_, err := s.cli.Put(ctx, jobs.QuotaKey(tenant), string(quota))
			return err
		}},
	}...)
	for _, st := range steps {
		err := s.request(ctx, "tenant add: "+st.what, func(ctx context.Context) error {
			err := st.do(ctx)
			if err != nil && strings.Contains(err.Error(), "already exists") {
				return nil // adding a tenant again only updates its quota
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "user": user, "quota": q})
	}
	fmt.Fprintf(s.sys.Stdout, "tenant %s ready (etcd user %q, quota cpu %s memory %s); issue its certificate on a voter with:\n  berth-agent issue-cert --tenant %s --out DIR\n",
		tenant, user, orUnlimited(q.CPUMillis, jobs.FormatCPU), orUnlimited(q.MemoryBytes, jobs.FormatMemory), tenant)
	return nil
}

func orUnlimited(v int64, format func(int64) string) string {
	if v == 0 {
		return "unlimited"
	}
	return format(v)
}

// imagePushTimeout bounds the upload of one image to one node.
const imagePushTimeout = 10 * time.Minute

// cmdImagePush pushes an image tarball (docker save or oci-archive) into
// the cluster registry served by the agents, so nodes without internet
// access can pull it as berth.local/REPO:TAG.
func cmdImagePush(ctx context.Context, s *session) error {
	if len(s.opts.args) != 3 || s.opts.args[0] != "push" {
		return fail(ExitUsage, "usage: berthctl image push IMAGE.tar REPO:TAG")
	}
	file, target := s.opts.args[1], s.opts.args[2]
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		return fail(ExitUsage, "read %s: %v (want a docker save tarball)", file, err)
	}
	r, err := name.ParseReference(rollout.LocalRegistryHost + "/" + target)
	if err != nil {
		return fail(ExitUsage, "%s: %v (want REPO:TAG)", target, err)
	}
	tag, ok := r.(name.Tag)
	if !ok {
		return fail(ExitUsage, "%s: want REPO:TAG (a tag, not a digest)", target)
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	// The tenant's berth.local/REPO is REPO under its namespace in the
	// cluster registry, as nodes resolve it for the tenant's jobs.
	stored := jobs.ClusterRepository(tenant, tag.Context().RepositoryStr()) + ":" + tag.TagStr()
	n, err := pushToCluster(ctx, s, stored, img, imagePushTimeout)
	if err != nil {
		return err
	}
	digest, _ := img.Digest()
	fmt.Fprintf(s.sys.Stdout, "pushed %s as %s to node %s's registry: use image berth.local/%s@%s (or :%s)\n", file, stored, n, repoOf(target), digest, tag.TagStr())
	return nil
}

func repoOf(target string) string {
	if i := strings.LastIndex(target, ":"); i > strings.LastIndex(target, "/") {
		return target[:i]
	}
	return target
}

// statsRow is one container in `berthctl stats`.
type statsRow struct {
	Node        string  `json:"node"`
	ID          string  `json:"id"`
	Tenant      string  `json:"tenant"`
	Job         string  `json:"job"`
	Replica     int     `json:"replica"`
	CPUCores    float64 `json:"cpu_cores"`
	MemoryBytes uint64  `json:"memory_bytes"`
	MemoryLimit uint64  `json:"memory_limit_bytes"`
	Pids        uint64  `json:"pids"`
	IORead      uint64  `json:"io_read_bytes"`
	IOWrite     uint64  `json:"io_write_bytes"`
}

// nodeContainer is the part of the node API's answer berthctl reads.
type nodeContainer struct {
	ID      string         `json:"id"`
	Tenant  string         `json:"tenant"`
	Job     string         `json:"job"`
	Replica int            `json:"replica"`
	Stats   *runtime.Stats `json:"stats"`
}

// cmdStats samples every node's containers of the tenant twice, one
// second apart, and prints CPU (cores used in that second), memory, pids
// and I/O per container.
func cmdStats(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	client, err := s.apiClient()
	if err != nil {
		return err
	}
	client.Timeout = s.opts.timeout
	apis, err := nodeAPIs(ctx, s)
	if err != nil {
		return err
	}
	sample := func() map[string]nodeContainer {
		out := map[string]nodeContainer{}
		for node, api := range apis {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(api, "/")+"/v1/containers?tenant="+url.QueryEscape(tenant), nil)
			resp, err := client.Do(req)
			if err != nil {
				continue // a node that does not answer has no stats to show
			}
			var list []nodeContainer
			if resp.StatusCode == http.StatusOK {
				_ = json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list)
			}
			resp.Body.Close()
			for _, c := range list {
				if c.Stats != nil {
					out[node+"\x00"+c.ID] = c
				}
			}
		}
		return out
	}
	first := sample()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Second):
	}
	second := sample()
	var rows []statsRow
	for key, c := range second {
		node, _, _ := strings.Cut(key, "\x00")
		r := statsRow{Node: node, ID: c.ID, Tenant: c.Tenant, Job: c.Job, Replica: c.Replica,
			MemoryBytes: c.Stats.MemoryBytes, MemoryLimit: c.Stats.MemoryLimitBytes, Pids: c.Stats.PidsCurrent,
			IORead: c.Stats.IOReadBytes, IOWrite: c.Stats.IOWriteBytes}
		if p, ok := first[key]; ok && c.Stats.Time.After(p.Stats.Time) && c.Stats.CPUUsageNanos >= p.Stats.CPUUsageNanos {
			r.CPUCores = float64(c.Stats.CPUUsageNanos-p.Stats.CPUUsageNanos) / float64(c.Stats.Time.Sub(p.Stats.Time).Nanoseconds())
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b statsRow) int {
		if c := strings.Compare(a.Job, b.Job); c != 0 {
			return c
		}
		return a.Replica - b.Replica
	})
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "items": rows})
	}
	t := s.table("JOB", "REPLICA", "NODE", "CPU", "MEMORY", "LIMIT", "PIDS", "READ", "WRITE")
	for _, r := range rows {
		t.row(r.Job, strconv.Itoa(r.Replica), r.Node, fmt.Sprintf("%.1f%%", r.CPUCores*100),
			jobs.FormatMemory(int64(r.MemoryBytes)), limitText(r.MemoryLimit), strconv.FormatUint(r.Pids, 10),
			jobs.FormatMemory(int64(r.IORead)), jobs.FormatMemory(int64(r.IOWrite)))
	}
	return t.flush()
}

func limitText(v uint64) string {
	if v == 0 || v > 1<<60 {
		return "-"
	}
	return jobs.FormatMemory(int64(v))
}
