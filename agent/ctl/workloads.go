package ctl

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/registry"
	"github.com/berth-os/berth/internal/progress"
)

// EnvTenant names the tenant of job commands when --tenant is not given.
const EnvTenant = "BERTHCTL_TENANT"

// DefaultTenant is the tenant of cluster administrators' jobs.
const DefaultTenant = "default"

// tenant picks the tenant of a job command: --tenant, BERTHCTL_TENANT, the
// tenant in the client certificate's CN (tenant:NAME), else "default".
func (s *session) tenant() (string, error) {
	t := s.opts.tenant
	if t == "" {
		t = s.sys.Getenv(EnvTenant)
	}
	if t == "" {
		t = certTenant(s.opts.cfg.Cert)
	}
	if t == "" {
		t = DefaultTenant
	}
	if err := jobs.CheckTenantName(t); err != nil {
		return "", fail(ExitUsage, "--tenant: %v", err)
	}
	return t, nil
}

// certTenant returns NAME when the client certificate's CN is tenant:NAME.
func certTenant(certFile string) string {
	if certFile == "" {
		return ""
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return ""
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return ""
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	t, _ := jobs.TenantFromCN(leaf.Subject.CommonName)
	return t
}

func cmdRun(ctx context.Context, s *session) error {
	if s.opts.file == "" {
		return fail(ExitUsage, "run needs FILE (a job in YAML or JSON; - reads standard input; -f FILE works too)")
	}
	var data []byte
	var err error
	if s.opts.file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(s.opts.file)
	}
	if err != nil {
		return fail(ExitUsage, "read job: %v", err)
	}
	job, err := jobs.ParseJob(data, s.opts.file)
	if err != nil {
		return fail(ExitUsage, "%v", err)
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	if job.Tenant == "" {
		job.Tenant = tenant
	}
	if s.opts.tenant != "" && job.Tenant != s.opts.tenant {
		return fail(ExitUsage, "the job names tenant %q but --tenant is %q", job.Tenant, s.opts.tenant)
	}
	if err := pinImage(ctx, s, &job); err != nil {
		return err
	}
	value, err := job.Marshal()
	if err != nil {
		return err
	}
	var rev int64
	err = s.request(ctx, "submit job", func(ctx context.Context) error {
		resp, err := s.cli.Put(ctx, jobs.JobKey(job.Tenant, job.Name), string(value))
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	if err != nil {
		return err
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, job)
	}
	fmt.Fprintf(s.sys.Stdout, "job %s/%s submitted (revision %d): %d replica(s) of %s pinned to %s\n", job.Tenant, job.Name, rev, job.Replicas, job.Image, job.ImageDigest)
	return nil
}

// jobRow is one job in `berthctl jobs`.
type jobRow struct {
	Job       jobs.Job           `json:"job"`
	Error     string             `json:"error,omitempty"` // the stored document is invalid: nothing runs it
	Placement *jobs.JobPlacement `json:"placement,omitempty"`
	Running   int                `json:"running"`
}

func cmdJobs(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	var resp *clientv3.TxnResponse
	err = s.request(ctx, "list jobs", func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Txn(ctx).Then(
			clientv3.OpGet(jobs.JobsPrefix(tenant), clientv3.WithPrefix()),
			clientv3.OpGet(jobs.PlacementPrefix(tenant), clientv3.WithPrefix()),
			clientv3.OpGet(jobs.StatusPrefix(tenant), clientv3.WithPrefix()),
		).Commit()
		return err
	})
	if err != nil {
		return err
	}
	rows := map[string]*jobRow{}
	var names []string
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		j, err := jobs.DecodeJob(kv.Value)
		if err != nil {
			// Written around berthctl (straight into etcd): shown with
			// why the scheduler ignores it, not hidden.
			ref, ok := jobs.ParseJobKey(string(kv.Key))
			if !ok {
				continue
			}
			rows[ref.Job] = &jobRow{Job: jobs.Job{Name: ref.Job, Tenant: ref.Tenant}, Error: oneLine(err.Error())}
			names = append(names, ref.Job)
			continue
		}
		rows[j.Name] = &jobRow{Job: j}
		names = append(names, j.Name)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var p jobs.JobPlacement
		if json.Unmarshal(kv.Value, &p) == nil && rows[p.Job] != nil {
			rows[p.Job].Placement = &p
		}
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		var st jobs.ReplicaStatus
		if json.Unmarshal(kv.Value, &st) == nil && rows[st.Job] != nil && st.State == jobs.StateRunning && st.Replica < rows[st.Job].Job.Replicas {
			rows[st.Job].Running++
		}
	}
	slices.Sort(names)
	list := make([]jobRow, 0, len(names))
	for _, n := range names {
		list = append(list, *rows[n])
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "items": list})
	}
	t := s.table("JOB", "IMAGE", "WANT", "PLACED", "RUNNING", "CPU", "MEMORY", "STATUS")
	for _, r := range list {
		placed, msg := "-", ""
		if r.Placement != nil {
			placed, msg = strconv.Itoa(r.Placement.Placed), r.Placement.Message
		}
		want := strconv.Itoa(r.Job.Replicas)
		if r.Job.Stopped {
			want, msg = "0 (stopped)", "stopped"
		}
		if r.Error != "" {
			want, msg = "-", "invalid: "+r.Error
		}
		t.row(r.Job.Name, r.Job.Image, want, placed, strconv.Itoa(r.Running),
			jobs.FormatCPU(r.Job.Resources.CPUMillis), jobs.FormatMemory(r.Job.Resources.MemoryBytes), orDash(msg))
	}
	return t.flush()
}

func cmdPs(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	prefix := jobs.StatusPrefix(tenant)
	if len(s.opts.args) == 1 {
		if err := jobs.CheckJobName(s.opts.args[0]); err != nil {
			return fail(ExitUsage, "%v", err)
		}
		prefix = jobs.JobStatusPrefix(tenant, s.opts.args[0])
	}
	var resp *clientv3.TxnResponse
	err = s.request(ctx, "list replicas", func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Txn(ctx).Then(
			clientv3.OpGet(prefix, clientv3.WithPrefix()),
			clientv3.OpGet(jobs.JobsPrefix(tenant), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		return err
	})
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		if ref, ok := jobs.ParseJobKey(string(kv.Key)); ok {
			live[ref.Job] = true
		}
	}
	var list []jobs.ReplicaStatus
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var st jobs.ReplicaStatus
		if json.Unmarshal(kv.Value, &st) == nil && live[st.Job] {
			list = append(list, st)
		}
	}
	slices.SortFunc(list, func(a, b jobs.ReplicaStatus) int {
		if c := strings.Compare(a.Job, b.Job); c != 0 {
			return c
		}
		return a.Replica - b.Replica
	})
	if len(s.opts.args) == 1 && !live[s.opts.args[0]] {
		return fail(ExitNotFound, "job %s/%s not found", tenant, s.opts.args[0])
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "items": list})
	}
	now := s.sys.Now()
	t := s.table("JOB", "REPLICA", "NODE", "STATE", "RESTARTS", "EXIT", "IP", "DIGEST", "AGE", "REASON")
	for _, st := range list {
		exit, age := "-", "-"
		if st.ExitCode != nil {
			exit = strconv.Itoa(*st.ExitCode)
		}
		if st.StartedAt != nil {
			age = HumanDuration(now.Sub(*st.StartedAt))
		}
		t.row(st.Job, strconv.Itoa(st.Replica), st.Node, st.State, strconv.Itoa(st.Restarts), exit, orDash(st.IPv4), orDash(st.ImageDigest), age, orDash(st.Reason))
	}
	return t.flush()
}

// setStopped flips a job's stopped flag with a compare-and-swap.
func setStopped(ctx context.Context, s *session, stopped bool) error {
	if len(s.opts.args) != 1 {
		return fail(ExitUsage, "%s takes one JOB", s.opts.command)
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	key := jobs.JobKey(tenant, s.opts.args[0])
	var done bool
	var written jobs.Job
	err = s.request(ctx, s.opts.command+" job", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		j, err := jobs.DecodeJob(resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		j.Stopped = stopped
		value, err := j.Marshal()
		if err != nil {
			return err
		}
		tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, string(value))).Commit()
		if err != nil {
			return err
		}
		if !tx.Succeeded {
			return errors.New("the job changed meanwhile; try again")
		}
		done, written = true, j
		return nil
	})
	if err != nil {
		return err
	}
	if !done {
		return fail(ExitNotFound, "job %s/%s not found", tenant, s.opts.args[0])
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, written)
	}
	verb := "stopped: its containers are being stopped"
	if !stopped {
		verb = "started again"
	}
	fmt.Fprintf(s.sys.Stdout, "job %s/%s %s\n", tenant, s.opts.args[0], verb)
	return nil
}

func cmdStop(ctx context.Context, s *session) error  { return setStopped(ctx, s, true) }
func cmdStart(ctx context.Context, s *session) error { return setStopped(ctx, s, false) }

func cmdRm(ctx context.Context, s *session) error {
	if len(s.opts.args) != 1 {
		return fail(ExitUsage, "rm takes one JOB")
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	deleted, err := s.deleteKey(ctx, "remove job", jobs.JobKey(tenant, s.opts.args[0]))
	if err != nil {
		return err
	}
	if !deleted {
		return fail(ExitNotFound, "job %s/%s not found", tenant, s.opts.args[0])
	}
	fmt.Fprintf(s.sys.Stdout, "job %s/%s removed: its containers are being stopped (volumes are kept)\n", tenant, s.opts.args[0])
	return nil
}

// usageRow is one node's share of a tenant's usage.
type usageRow struct {
	Node string `json:"node"`
	jobs.Usage
}

func cmdUsage(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	var resp *clientv3.GetResponse
	err = s.request(ctx, "read usage", func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Get(ctx, jobs.UsagePrefix(tenant), clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return err
	}
	var rows []usageRow
	var total jobs.Usage
	for _, kv := range resp.Kvs {
		var u jobs.Usage
		if json.Unmarshal(kv.Value, &u) != nil {
			continue
		}
		node := strings.TrimPrefix(string(kv.Key), jobs.UsagePrefix(tenant))
		rows = append(rows, usageRow{Node: node, Usage: u})
		total.CPUSeconds += u.CPUSeconds
		total.MemoryGiBHours += u.MemoryGiBHours
		if u.Updated.After(total.Updated) {
			total.Updated = u.Updated
		}
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "nodes": rows, "total": total})
	}
	t := s.table("TENANT", "NODE", "CPU-SECONDS", "MEMORY-GIB-HOURS", "UPDATED")
	for _, r := range rows {
		t.row(tenant, r.Node, fmt.Sprintf("%.3f", r.CPUSeconds), fmt.Sprintf("%.6f", r.MemoryGiBHours), r.Updated.Format(time.RFC3339))
	}
	t.row(tenant, "TOTAL", fmt.Sprintf("%.3f", total.CPUSeconds), fmt.Sprintf("%.6f", total.MemoryGiBHours), "")
	return t.flush()
}

// nodeAPIs maps node names to their agent API URLs (role entries).
func nodeAPIs(ctx context.Context, s *session) (map[string]string, error) {
	var resp *clientv3.GetResponse
	err := s.request(ctx, "read node addresses", func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Get(ctx, nodedoc.RolesPrefix, clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		name, ok := nodedoc.NameFromKey(nodedoc.RolesPrefix, string(kv.Key))
		var r nodedoc.RoleEntry
		if ok && json.Unmarshal(kv.Value, &r) == nil && r.APIURL != "" {
			out[name] = r.APIURL
		}
	}
	return out, nil
}

// apiClient talks to agents' HTTPS APIs with berthctl's certificate.
func (s *session) apiClient() (*http.Client, error) {
	if s.opts.cfg.CACert == "" || s.opts.cfg.Cert == "" || s.opts.cfg.Key == "" {
		return nil, fail(ExitUsage, "this command talks to the nodes' agents: it needs --cacert, --cert and --key")
	}
	tc, err := clientTLS(transport.TLSInfo{CertFile: s.opts.cfg.Cert, KeyFile: s.opts.cfg.Key, TrustedCAFile: s.opts.cfg.CACert})
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, nil
}

// clusterRegistry is a registry client with berthctl's certificate and
// the nodes' registries in the order commands try them.
func (s *session) clusterRegistry(ctx context.Context) (*registry.Client, []registry.Node, error) {
	client, err := s.apiClient()
	if err != nil {
		return nil, nil, err
	}
	apis, err := nodeAPIs(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	return &registry.Client{Transport: client.Transport}, registry.SortedNodes(apis), nil
}

// pushToCluster stores img as target (REPO:TAG) in the cluster registry,
// trying the nodes in name order until one takes it (the others fetch it
// from that one when asked), with its progress and each failure on
// stderr. It returns the node that took it, or the last node's error.
func pushToCluster(ctx context.Context, s *session, target string, img v1.Image, timeout time.Duration) (string, error) {
	reg, nodes, err := s.clusterRegistry(ctx)
	if err != nil {
		return "", err
	}
	if len(nodes) == 0 {
		return "", fail(ExitError, "no agent API address is known in the cluster: nowhere to push to")
	}
	n, err := reg.PushToAny(ctx, nodes, target, img, registry.PushOptions{
		Timeout: timeout,
		Progress: func(n registry.Node) registry.Progress {
			return progress.New(s.sys.Stderr, "pushing to node "+n.Name)
		},
		Failed: func(err error, next *registry.Node) {
			if next != nil {
				fmt.Fprintf(s.sys.Stderr, "berthctl: %s; trying node %s\n", oneLine(err.Error()), next.Name)
			}
		},
	})
	return n.Name, err
}

func cmdLogs(ctx context.Context, s *session) error {
	if len(s.opts.args) != 1 {
		return fail(ExitUsage, "logs takes JOB or JOB/REPLICA")
	}
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	jobName, replicaText, _ := strings.Cut(s.opts.args[0], "/")
	replica := 0
	if replicaText != "" {
		if replica, err = strconv.Atoi(replicaText); err != nil || replica < 0 {
			return fail(ExitUsage, "logs %s: the replica after / must be a number", s.opts.args[0])
		}
	}
	var st jobs.ReplicaStatus
	found := false
	err = s.request(ctx, "find replica", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, jobs.StatusKey(tenant, jobName, replica))
		if err != nil || len(resp.Kvs) == 0 {
			return err
		}
		found = json.Unmarshal(resp.Kvs[0].Value, &st) == nil
		return nil
	})
	if err != nil {
		return err
	}
	if !found || st.ContainerID == "" {
		return fail(ExitNotFound, "replica %s/%s/%d has no container (see berthctl ps)", tenant, jobName, replica)
	}
	apis, err := nodeAPIs(ctx, s)
	if err != nil {
		return err
	}
	api, ok := apis[st.Node]
	if !ok {
		return fail(ExitNotFound, "node %s of replica %s/%d has no API address", st.Node, jobName, replica)
	}
	client, err := s.apiClient()
	if err != nil {
		return err
	}
	u := fmt.Sprintf("%s/v1/containers/%s/logs?tail=%d", strings.TrimSuffix(api, "/"), st.ContainerID, s.opts.tail)
	if s.opts.follow {
		u += "&follow=1"
	} else {
		client.Timeout = s.opts.timeout * 4
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("logs from node %s: %w", st.Node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("logs from node %s: %s: %s", st.Node, resp.Status, strings.TrimSpace(string(msg)))
	}
	_, err = io.Copy(s.sys.Stdout, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
