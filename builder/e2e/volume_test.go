package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/volume"
)

const (
	dbPort      = 18090
	dbLocalPort = 18091
)

// scenarioReplicatedVolume: a database (netcheck commitd: every commit
// fsync'd before it is acknowledged) on a replicas: 2 volume. A client
// outside the cluster commits numbered rows without pause; the owner's
// node is killed mid-stream; the database runs on the other copy's node
// with every acknowledged row; etcd shows the new owner, the next epoch
// and the dead copy outdated (fenced). The dead node then returns and
// resyncs only what changed while it was away. Leaves three Ready nodes.
func scenarioReplicatedVolume(t *testing.T, e *clusterEnv) {
	const tenant = "store"
	e.addTenant(t, tenant)
	// Every node holds the image first: the registry keeps a pushed image
	// on the node that took the push (and the nodes that pulled it), and
	// the node about to be killed must not be the only one (a known
	// limitation of the registry, see README).
	e.warmImage(t, tenant)
	// The same database on a node-local volume, for the latency ratio.
	e.submit(t, testJob{name: "dblocal", tenant: tenant, args: []string{"commitd", "/data/log"}, memory: "48Mi",
		ports:   []jobs.Port{{Container: 8080, Host: dbLocalPort, Protocol: "tcp"}},
		volumes: []jobs.Volume{{Name: "data", Path: "/data"}}})
	local := e.waitReplicas(t, tenant, "dblocal", 5*time.Minute, allRunning(1))[0]
	lw := e.startCommits(e.c.Nodes[nodeIndex(t, local.Node)-1].IPv4, dbLocalPort, 1)
	time.Sleep(10 * time.Second)
	localAcked, localLat := lw.stop()

	e.submit(t, testJob{name: "db", tenant: tenant, args: []string{"commitd", "/data/log"}, memory: "48Mi",
		ports:   []jobs.Port{{Container: 8080, Host: dbPort, Protocol: "tcp"}},
		volumes: []jobs.Volume{{Name: "data", Path: "/data", Replicas: 2, SizeBytes: 256 << 20}}})
	submitted := time.Now()
	running := e.waitReplicas(t, tenant, "db", 5*time.Minute, allRunning(1))
	first := running[0]
	t.Logf("measured: db on a new replicated volume running %.1f s after submission (create, DRBD pair up, mkfs)", time.Since(submitted).Seconds())
	id := volume.ID{Tenant: tenant, Job: "db", Replica: 0, Name: "data"}
	rec := e.volumeRecord(t, id)
	if rec.Owner != first.Node || rec.Epoch != 1 || len(rec.Copies) != 2 {
		t.Fatalf("volume record after the first start: %+v, want owner %s at epoch 1 with 2 copies", rec, first.Node)
	}
	var peer string
	for _, c := range rec.Copies {
		if c.State != volume.UpToDate {
			t.Errorf("new volume's copy on %s is %s, want up-to-date", c.Node, c.State)
		}
		if c.Node != first.Node {
			peer = c.Node
		}
	}
	t.Logf("volume %s: minor %d, copies on %s (owner) and %s", id, rec.Minor, first.Node, peer)

	owner := nodeIndex(t, first.Node)
	ownerIP := e.c.Nodes[owner-1].IPv4
	// Replicated commit latency, before the kill: fsync on a protocol C
	// pair waits for the peer's disk.
	w := e.startCommits(ownerIP, dbPort, 1)
	time.Sleep(15 * time.Second)
	if err := e.c.Kill(owner); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	e.down, e.downAt = owner, killed
	acked, lat := w.stop()
	if acked < 3 {
		t.Fatalf("only %d commits acknowledged in 15 s before the kill (%v)", acked, w.lastErr())
	}
	t.Logf("measured: commit (write + fsync, over HTTP from the host) p50 / p90: replicated volume %.1f / %.1f ms (%d commits), node-local volume %.1f / %.1f ms (%d commits); p50 ratio %.2f",
		lat.p50, lat.p90, acked, localLat.p50, localLat.p90, localAcked, lat.p50/max(localLat.p50, 0.001))
	peerIdx := nodeIndex(t, peer)
	atKill := e.drbdState(t, peerIdx, rec.Minor)

	moved := e.waitReplicas(t, tenant, "db", 5*time.Minute, func(list []jobs.ReplicaStatus) error {
		if err := allRunning(1)(list); err != nil {
			return err
		}
		if list[0].Node == first.Node {
			return fmt.Errorf("db still on %s", first.Node)
		}
		return nil
	})
	now := moved[0]
	t.Logf("measured: %s killed: db running on %s %.1f s later", first.Node, now.Node, time.Since(killed).Seconds())
	if now.Node != peer {
		t.Errorf("db runs on %s, which holds no copy (copies on %s and %s)", now.Node, first.Node, peer)
	}
	newIP := e.c.Nodes[nodeIndex(t, now.Node)-1].IPv4
	var check string
	if err := e.poll(2*time.Minute, func() error {
		var err error
		check, err = e.dbGet(newIP, dbPort, fmt.Sprintf("/check?upto=%d", acked))
		return err
	}); err != nil {
		t.Fatalf("db on %s does not answer: %v", now.Node, err)
	}
	t.Logf("measured: %s killed: the database answers on %s %.1f s later", first.Node, now.Node, time.Since(killed).Seconds())
	if kv := keyValues(check); kv["missing"] != "0" {
		t.Fatalf("acknowledged commits lost in the failover: %s (of 1..%d)", strings.TrimSpace(check), acked)
	}
	t.Logf("ok   every one of the %d acknowledged commits is on %s: %s", acked, now.Node, strings.TrimSpace(check))
	rec = e.volumeRecord(t, id)
	dead, _ := rec.Copy(first.Node)
	if rec.Owner != now.Node || rec.Epoch != 2 || dead.State != volume.Outdated {
		t.Errorf("volume record after the failover: owner %s epoch %d, %s's copy %s; want owner %s, epoch 2, outdated", rec.Owner, rec.Epoch, first.Node, dead.State, now.Node)
	} else {
		t.Logf("ok   etcd: owner %s at epoch 2, the copy on %s outdated (%s)", now.Node, first.Node, dead.Reason)
	}

	// While the old node is away: more commits, then its return resyncs
	// only what they changed.
	w = e.startCommits(newIP, dbPort, acked+1)
	time.Sleep(10 * time.Second)
	more, _ := w.stop()
	before := e.drbdState(t, nodeIndex(t, now.Node), rec.Minor)
	written := before.WrittenKiB - atKill.WrittenKiB
	t.Logf("measured: %d commits while %s was away; DRBD on %s: %d KiB written since the kill (journal replay included), %d KiB out of sync",
		more-acked, first.Node, now.Node, written, before.OutOfSyncKiB)
	back := time.Now()
	e.startDown(t)
	if err := e.poll(5*time.Minute, func() error {
		r := e.volumeRecord(t, id)
		if c, _ := r.Copy(first.Node); c.State != volume.UpToDate {
			return fmt.Errorf("%s's copy is %s", first.Node, c.State)
		}
		return nil
	}); err != nil {
		t.Fatalf("the returned node's copy is not up to date again: %v", err)
	}
	after := e.drbdState(t, nodeIndex(t, now.Node), rec.Minor)
	sent := after.SentKiB - before.SentKiB
	// The returning node was the primary when it died: DRBD also resyncs
	// its activity log's extents (4 MiB each), which it may have written
	// without the peer. What must not happen is a full sync.
	t.Logf("measured: %s back, its copy up to date %.1f s after its qemu started; resync sent %d KiB: %.2f x the %d KiB written while it was away, %.2f x the survivor's %d KiB out of sync (the dead primary's activity log adds the rest), %.2f of the volume",
		first.Node, time.Since(back).Seconds(), sent, float64(sent)/float64(max(written, 1)), written,
		float64(sent)/float64(max(before.OutOfSyncKiB, 1)), before.OutOfSyncKiB, float64(sent*1024)/float64(rec.SizeBytes))
	if sent*1024 > rec.SizeBytes/2 {
		t.Errorf("resync sent %d KiB of a %d KiB volume: a full sync, not the changed blocks", sent, rec.SizeBytes/1024)
	}
	if check, err := e.dbGet(newIP, dbPort, fmt.Sprintf("/check?upto=%d", more)); err != nil || keyValues(check)["missing"] != "0" {
		t.Errorf("after the resync: %s %v", strings.TrimSpace(check), err)
	}
}

// warmImage runs the test image on every node once (a spread job of
// three), so that every node's registry and image store hold it.
func (e *clusterEnv) warmImage(t *testing.T, tenant string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "warm.yaml")
	j := testJob{name: "warm", tenant: tenant, args: []string{"sleep"}, replicas: 3, memory: "16Mi", cpu: "10m"}
	if err := os.WriteFile(file, []byte(j.yaml(e.netcheckImage(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctl(t, "--tenant", tenant, "run", file)
	e.waitReplicas(t, tenant, "warm", 5*time.Minute, allRunning(3))
	e.ctl(t, "--tenant", tenant, "rm", "warm")
}

// volumeRecord reads a replicated volume's record from etcd.
func (e *clusterEnv) volumeRecord(t *testing.T, id volume.ID) volume.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	r, err := volume.Get(ctx, e.cli, id)
	if err != nil {
		t.Fatalf("volume record: %v", err)
	}
	return r
}

// drbdState reads the minor's line of /proc/drbd on node.
func (e *clusterEnv) drbdState(t *testing.T, node, minor int) volume.DeviceState {
	t.Helper()
	out, err := e.c.SSH(e.ctx, node, "cat /proc/drbd")
	if err != nil {
		t.Fatalf("read /proc/drbd on node-%d: %v", node, err)
	}
	return volume.ParseProc(string(out))[minor]
}

// httpClient reaches the cluster's namespace.
func (e *clusterEnv) httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.c.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
}

func (e *clusterEnv) dbGet(ip string, port int, path string) (string, error) {
	resp, err := e.httpClient().Get(fmt.Sprintf("http://%s:%d%s", ip, port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

// commitWriter commits 1, 2, 3... in order, each after the one before
// was acknowledged, and remembers the last acknowledged.
type commitWriter struct {
	mu    sync.Mutex
	acked int64
	lats  []time.Duration
	err   error
	quit  chan struct{}
	done  chan struct{}
}

type latency struct{ p50, p90 float64 } // milliseconds

func (e *clusterEnv) startCommits(ip string, port int, from int64) *commitWriter {
	w := &commitWriter{acked: from - 1, quit: make(chan struct{}), done: make(chan struct{})}
	cl := e.httpClient()
	go func() {
		defer close(w.done)
		for n := from; ; {
			select {
			case <-w.quit:
				return
			default:
			}
			start := time.Now()
			resp, err := cl.Post(fmt.Sprintf("http://%s:%d/commit?n=%d", ip, port, n), "text/plain", nil)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), fmt.Sprintf("ok n=%d", n)) {
					err = fmt.Errorf("commit %d: %s %s", n, resp.Status, body)
				}
			}
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.acked = n
				w.lats = append(w.lats, time.Since(start))
				n++
			}
			w.mu.Unlock()
			if err != nil {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
	return w
}

// stop ends the writer once its request in flight returned and gives the
// last acknowledged number and the commit latency.
func (w *commitWriter) stop() (int64, latency) {
	close(w.quit)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	l := slices.Clone(w.lats)
	slices.Sort(l)
	var lat latency
	if len(l) > 0 {
		lat = latency{p50: float64(l[len(l)/2].Microseconds()) / 1000, p90: float64(l[len(l)*9/10].Microseconds()) / 1000}
	}
	return w.acked, lat
}

func (w *commitWriter) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
