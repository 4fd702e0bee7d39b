package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/runtime"
)

// worker owns one replica on this node: it starts, restarts, replaces and
// removes its container, one step at a time, so two actions on one replica
// never race. Replicas do not wait for each other (one slow pull does not
// hold up the rest).
type worker struct {
	m   *Manager
	ref replicaRef

	mu      sync.Mutex
	want    *assignment // nil: run nothing
	known   bool        // want was read from etcd (adopted containers wait for it)
	cid     string      // the container on the node, "" when none
	cidGen  int64
	cidRev  int64
	poke    chan struct{}
	quit    chan struct{}
	stopped bool

	restarts   int
	retryAt    time.Time
	failures   int
	lastStatus string // JSON of the last status written, to skip repeats
	statusGen  int64  // generation whose status we wrote last
}

func newWorker(m *Manager, ref replicaRef) *worker {
	return &worker{m: m, ref: ref, poke: make(chan struct{}, 1), quit: make(chan struct{})}
}

func (w *worker) adopt(st runtime.State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cid != "" && w.cid != st.ID {
		// Two containers for one replica (an agent died between starting
		// a new generation and removing the old one): the worker keeps
		// the newer and removes the other now.
		older := st.ID
		if gen(st.Labels) > w.cidGen {
			older, w.cid = w.cid, st.ID
			w.cidGen, w.cidRev = gen(st.Labels), rev(st.Labels)
		}
		go w.m.removeContainer(context.Background(), older)
		return
	}
	w.cid, w.cidGen, w.cidRev = st.ID, gen(st.Labels), rev(st.Labels)
	w.restarts, _ = strconv.Atoi(st.Labels[labelRestarts])
}

func gen(l map[string]string) int64 { v, _ := strconv.ParseInt(l[labelGeneration], 10, 64); return v }
func rev(l map[string]string) int64 { v, _ := strconv.ParseInt(l[labelJobRev], 10, 64); return v }

func (w *worker) setWant(a *assignment) {
	w.mu.Lock()
	w.want, w.known = a, true
	w.mu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

func (w *worker) stopLoop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.stopped = true
		close(w.quit)
	}
}

// idle: nothing wanted and nothing left on the node.
func (w *worker) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.known && w.want == nil && w.cid == ""
}

func (w *worker) loop(ctx context.Context) {
	tick := time.NewTicker(w.m.o.PollInterval)
	defer tick.Stop()
	for {
		w.step(ctx)
		if w.idle() && w.m.forget(w) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-w.quit:
			return
		case <-w.poke:
		case <-tick.C:
		}
	}
}

func (w *worker) snapshot() (want *assignment, known bool, cid string, cidGen, cidRev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.want, w.known, w.cid, w.cidGen, w.cidRev
}

// step moves the replica one step towards what is wanted.
func (w *worker) step(ctx context.Context) {
	want, known, cid, cidGen, cidRev := w.snapshot()
	if !known {
		return // adopted; wait for the assignments before touching it
	}
	if want == nil {
		if cid != "" {
			w.m.removeContainer(ctx, cid)
			w.setCID("", 0, 0)
			w.m.releaseVolumes(ctx, w.ref)
		}
		w.deleteStatus(ctx)
		return
	}
	if cid != "" && (cidGen != want.Generation || cidRev != want.JobRevision) {
		w.m.log.Info("replacing container", "replica", w.ref.String(), "old", cid, "generation", want.Generation, "job_revision", want.JobRevision)
		w.m.removeContainer(ctx, cid)
		w.setCID("", 0, 0)
		w.restarts, w.failures, w.retryAt = 0, 0, time.Time{}
		cid = ""
	}
	if cid == "" {
		if time.Now().Before(w.retryAt) {
			return
		}
		w.start(ctx, want)
		return
	}
	st, err := w.m.o.Runtime.Get(ctx, cid)
	if errors.Is(err, runtime.ErrNotFound) {
		w.setCID("", 0, 0)
		return
	}
	if err != nil {
		w.m.log.Warn("container state unreadable", "id", cid, "err", err)
		return
	}
	switch st.Status {
	case runtime.StatusRunning:
		if !st.StartedAt.IsZero() && time.Since(st.StartedAt) > time.Minute {
			w.failures = 0 // a minute of running resets the restart backoff
		}
		w.report(ctx, want, statusFrom(st, "running", ""))
	case runtime.StatusExited:
		w.exited(ctx, want, st)
	}
}

func (w *worker) setCID(cid string, g, r int64) {
	w.mu.Lock()
	w.cid, w.cidGen, w.cidRev = cid, g, r
	w.mu.Unlock()
}

// exited applies the restart policy to a container that ended.
func (w *worker) exited(ctx context.Context, want *assignment, st runtime.State) {
	failed := st.ExitCode != 0 || st.OOMKilled || st.Error != ""
	restart := false
	switch want.Spec.Restart {
	case "", "always":
		restart = true
	case "on-failure":
		restart = failed
	}
	state := "exited"
	if failed {
		state = "failed"
	}
	reason := exitReason(st)
	if !restart {
		w.report(ctx, want, statusFrom(st, state, reason))
		return
	}
	if w.retryAt.IsZero() || st.FinishedAt.After(w.retryAt) {
		w.m.log.Info("container exited", "id", st.ID, "exit_code", st.ExitCode, "signal", st.Signal, "oom", st.OOMKilled, "error", st.Error, "ran", st.FinishedAt.Sub(st.StartedAt).Round(time.Millisecond))
		delay := restartDelay(w.failures)
		w.failures++
		w.retryAt = time.Now().Add(delay)
		w.report(ctx, want, statusFrom(st, state, fmt.Sprintf("%s; restarting in %s", reason, delay.Round(100*time.Millisecond))))
	}
	if time.Now().Before(w.retryAt) {
		return
	}
	w.restarts++
	if err := w.m.o.Runtime.Remove(ctx, st.ID); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		w.m.log.Warn("remove exited container", "id", st.ID, "err", err)
		return
	}
	w.setCID("", 0, 0)
	w.start(ctx, want) // the writable layer, volumes and address are kept
}

func restartDelay(failures int) time.Duration {
	d := time.Second << min(failures, 5)
	return min(d, 30*time.Second)
}

func exitReason(st runtime.State) string {
	switch {
	case st.Error != "":
		return st.Error
	case st.OOMKilled:
		return "killed: out of memory (raise resources.memory)"
	case st.Signal != "":
		return "killed by " + st.Signal
	default:
		return fmt.Sprintf("exit code %d", st.ExitCode)
	}
}

// start prepares and runs the container of want; a failure is reported in
// the replica's status and retried with backoff.
func (w *worker) start(ctx context.Context, want *assignment) {
	id := jobs.ContainerID(w.ref.Tenant, w.ref.Job, w.ref.Replica, want.Generation)
	spec, err := w.m.prepare(ctx, w, want, id)
	if err == nil {
		var st runtime.State
		st, err = w.m.o.Runtime.Run(ctx, spec)
		if err == nil {
			w.setCID(id, want.Generation, want.JobRevision)
			w.m.log.Info("container started", "id", id, "replica", w.ref.String(), "pid", st.Pid)
			w.report(ctx, want, statusFrom(st, "running", ""))
			return
		}
		// A container that could not start leaves nothing running; its
		// state dir goes so the next try starts clean.
		_ = w.m.o.Runtime.Remove(ctx, id)
	}
	if ctx.Err() != nil {
		return
	}
	delay := restartDelay(w.failures)
	w.failures++
	w.retryAt = time.Now().Add(delay)
	w.m.log.Warn("container did not start", "replica", w.ref.String(), "err", err, "retry_in", delay)
	w.report(ctx, want, jobs.ReplicaStatus{State: "failed", Reason: err.Error()})
}

func statusFrom(st runtime.State, state, reason string) jobs.ReplicaStatus {
	rs := jobs.ReplicaStatus{State: state, ContainerID: st.ID, Reason: reason, ImageDigest: st.Labels[labelImage]}
	if !st.StartedAt.IsZero() {
		t := st.StartedAt
		rs.StartedAt = &t
	}
	if st.Status == runtime.StatusExited {
		code := st.ExitCode
		rs.ExitCode = &code
		if !st.FinishedAt.IsZero() {
			t := st.FinishedAt
			rs.FinishedAt = &t
		}
	}
	return rs
}

// report writes the replica's status if it changed, fenced by the
// assignment: once the scheduler moved the replica away, this node can no
// longer overwrite the new node's status.
func (w *worker) report(ctx context.Context, want *assignment, rs jobs.ReplicaStatus) {
	rs.Schema = jobs.ReplicaSchema
	rs.Tenant, rs.Job, rs.Replica = w.ref.Tenant, w.ref.Job, w.ref.Replica
	rs.Node, rs.Generation, rs.Restarts = w.m.o.Node, want.Generation, w.restarts
	if ip, ip6 := w.m.addresses(rs.ContainerID); ip != "" || ip6 != "" {
		rs.IPv4, rs.IPv6 = ip, ip6
		w.m.noteEndpoint(rs.ContainerID, w.ref, want.Spec.Ports)
	}
	probe, _ := json.Marshal(rs)
	if string(probe) == w.lastStatus {
		return
	}
	rs.Updated = time.Now().UTC()
	data, err := json.Marshal(rs)
	if err != nil {
		return
	}
	key := jobs.StatusKey(w.ref.Tenant, w.ref.Job, w.ref.Replica)
	assignKey := jobs.AssignKey(w.m.o.Node, w.ref.Tenant, w.ref.Job, w.ref.Replica)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := w.m.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(assignKey), "=", want.createRev)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		w.m.log.Debug("status not written (etcd unreachable?)", "replica", w.ref.String(), "err", err)
		return
	}
	if resp.Succeeded {
		w.lastStatus = string(probe)
		w.statusGen = want.Generation
	}
}

// deleteStatus removes the replica's status once it is not ours any more,
// but only if it is still the one this node wrote.
func (w *worker) deleteStatus(ctx context.Context) {
	if w.lastStatus == "" {
		return
	}
	key := jobs.StatusKey(w.ref.Tenant, w.ref.Job, w.ref.Replica)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := w.m.cli.Get(cctx, key)
	if err != nil {
		return
	}
	if len(resp.Kvs) == 1 {
		var rs jobs.ReplicaStatus
		if json.Unmarshal(resp.Kvs[0].Value, &rs) == nil && rs.Node == w.m.o.Node && rs.Generation == w.statusGen {
			_, err = w.m.cli.Txn(cctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpDelete(key)).Commit()
			if err != nil {
				return
			}
		}
	}
	w.lastStatus = ""
}

// removeContainer stops and removes a container and releases its writable
// layer and network address. Volumes stay.
func (m *Manager) removeContainer(ctx context.Context, id string) {
	// 0: the container's own stop timeout (the job's stop_timeout_seconds).
	if err := m.o.Runtime.Stop(ctx, id, 0); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		m.log.Warn("stop container", "id", id, "err", err)
	}
	if err := m.o.Runtime.Remove(ctx, id); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		m.log.Warn("remove container", "id", id, "err", err)
	}
	if err := m.o.Images.Unmount(id); err != nil {
		m.log.Warn("unmount container root", "id", id, "err", err)
	}
	if n, err := m.network(); err == nil && n != nil {
		if err := n.Detach(id); err != nil {
			m.log.Warn("detach container network", "id", id, "err", err)
		}
	}
	m.forgetAddress(id)
	if m.o.ResolvConf != nil {
		if err := os.Remove(m.resolvConfPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("remove container resolv.conf", "id", id, "err", err)
		}
	}
	m.log.Info("container removed", "id", id)
}

// volumeDir is where a replica's named volume lives on this node.
func (m *Manager) volumeDir(ref replicaRef, name string) string {
	return filepath.Join(m.o.VolumesDir, ref.Tenant, ref.Job, strconv.Itoa(ref.Replica), name)
}

// releaseVolumes gives up the replica's replicated volumes once its
// container is gone (moved elsewhere, or its job removed).
func (m *Manager) releaseVolumes(ctx context.Context, ref replicaRef) {
	if m.o.Replicated == nil {
		return
	}
	if err := m.o.Replicated.Release(ctx, ref.Tenant, ref.Job, ref.Replica); err != nil {
		m.log.Warn("release replicated volumes", "replica", ref.String(), "err", err)
	}
}

// claimVolumes records this node as the home of the replica's volumes the
// first time they are created, so the scheduler brings the replica back here.
func (m *Manager) claimVolumes(ctx context.Context, ref replicaRef, vols []jobs.Volume) error {
	var local []jobs.Volume
	for _, v := range vols {
		if !v.Replicated() { // a replicated volume's record says where it lives
			local = append(local, v)
		}
	}
	if len(local) == 0 {
		return nil
	}
	for _, v := range local {
		if err := os.MkdirAll(m.volumeDir(ref, v.Name), 0o755); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	key := jobs.VolumeHomeKey(ref.Tenant, ref.Job, ref.Replica)
	home, _ := json.Marshal(jobs.VolumeHome{Node: m.o.Node})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := m.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(home))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("record volume home: %w", err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		var h jobs.VolumeHome
		if len(kvs) == 1 && json.Unmarshal(kvs[0].Value, &h) == nil && h.Node != m.o.Node {
			return fmt.Errorf("the volumes of replica %s live on node %s, not here", ref, h.Node)
		}
	}
	return nil
}
