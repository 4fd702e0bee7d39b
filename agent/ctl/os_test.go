package ctl_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/partial"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/agent/registry"
	"github.com/berth-os/berth/agent/rollout"
	"github.com/berth-os/berth/updater/payload"
)

// buildPayload writes a signed payload of version as berth-build does
// (DIR/berth-minimal-VERSION.oci, an OCI layout) and returns its path, the
// directory of its public key, and its OCI manifest digest.
func buildPayload(t *testing.T, version string) (layoutDir, keysDir, digest string) {
	t.Helper()
	dir := t.TempDir()
	keysDir = filepath.Join(dir, "keys")
	if err := os.Mkdir(keysDir, 0o755); err != nil {
		t.Fatal(err)
	}
	privPath := filepath.Join(dir, "signing.key")
	if err := payload.GenerateKey(privPath, filepath.Join(keysDir, "signing.pub")); err != nil {
		t.Fatal(err)
	}
	priv, err := payload.LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	parts := payload.Parts{Slot: filepath.Join(dir, "slot.squashfs"), Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img")}
	for p, size := range map[string]int{parts.Slot: 256 << 10, parts.Kernel: 40_000, parts.Initrd: 30_000} {
		data := make([]byte, size)
		rand.Read(data)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := payload.Manifest{OS: "berth-minimal", Version: version, Arch: "amd64", KernelVersion: "6.1.0-31-cloud-amd64",
		Epoch: 1700000000, Cmdline: []string{"console=ttyS0,115200"}}
	img, _, err := payload.Create(m, parts, priv)
	if err != nil {
		t.Fatal(err)
	}
	layoutDir = filepath.Join(dir, "out", "berth-minimal-"+version+".oci")
	if err := payload.WriteLayout(layoutDir, img, version); err != nil {
		t.Fatal(err)
	}
	d, err := partial.Digest(img)
	if err != nil {
		t.Fatal(err)
	}
	return layoutDir, keysDir, d.String()
}

// putAPI registers node name with an agent API URL.
func putAPI(t *testing.T, e *etcdtest.Etcd, name, apiURL string) {
	t.Helper()
	data, _ := json.Marshal(nodedoc.RoleEntry{Role: nodedoc.RoleVoter, APIURL: apiURL})
	if _, err := e.Client(t).Put(context.Background(), nodedoc.RoleKey(name), string(data)); err != nil {
		t.Fatal(err)
	}
}

// registryNode serves a real cluster registry over TLS with the test CA,
// requiring a client certificate as an agent's API does, and registers it
// as node name's API.
func registryNode(t *testing.T, e *etcdtest.Etcd, name string) string {
	t.Helper()
	h, err := registry.New(registry.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := e.Issue(t, name+"-api", true)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: caPool(t, e)}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	putAPI(t, e, name, srv.URL)
	return srv.URL
}

func caPool(t *testing.T, e *etcdtest.Etcd) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(e.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate")
	}
	return pool
}

// manifestDigest asks a registry for the digest of berth/os:TAG.
func manifestDigest(t *testing.T, e *etcdtest.Etcd, apiURL, tag string) (int, string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(e.ClientCert, e.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, e), Certificates: []tls.Certificate{pair}}}}
	req, _ := http.NewRequest(http.MethodHead, apiURL+"/v2/berth/os/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Docker-Content-Digest")
}

// storedTarget reads the target document as any etcd client sees it.
func storedTarget(t *testing.T, e *etcdtest.Etcd) (rollout.Target, map[string]any, int64) {
	t.Helper()
	resp, err := e.Client(t).Get(context.Background(), rollout.TargetKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return rollout.Target{}, nil, 0
	}
	tgt, err := rollout.ParseTarget(resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("stored target: %v\n%s", err, resp.Kvs[0].Value)
	}
	var raw map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &raw); err != nil {
		t.Fatal(err)
	}
	return tgt, raw, resp.Kvs[0].ModRevision
}

// oneErrorLine checks that stderr holds exactly one berthctl error line
// containing want (plus, for usage errors, the pointer to --help).
func oneErrorLine(t *testing.T, what, errOut, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if len(lines) == 2 && lines[1] == "run 'berthctl --help' for usage" {
		lines = lines[:1]
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "berthctl: ") || !strings.Contains(lines[0], want) {
		t.Errorf("%s: stderr %q, want one line containing %q", what, errOut, want)
	}
}

func TestOSPushThenRollout(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	// node-0 is first by name and its API is down: push and the registry
	// check go on to node-1.
	putAPI(t, e, "node-0", fmt.Sprintf("https://127.0.0.1:%d", etcdtest.FreePort(t)))
	api := registryNode(t, e, "node-1")
	layoutDir, keysDir, digest := buildPayload(t, "0.3.0")

	code, out, errOut := berthctl(t, env, "os", "rollout", "0.3.0")
	if code != ctl.ExitError {
		t.Fatalf("rollout before push: exit %d, stdout %q", code, out)
	}
	oneErrorLine(t, "rollout before push", errOut, "payload 0.3.0 is not in the cluster registry: push it first with berthctl os push FILE")
	if _, raw, _ := storedTarget(t, e); raw != nil {
		t.Fatalf("a target was stored although the payload is missing: %v", raw)
	}

	code, out, errOut = berthctl(t, env, "os", "push", layoutDir, "--keys", keysDir)
	if code != 0 {
		t.Fatalf("push: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"to node node-1's registry", "version:   0.3.0 (berth-minimal amd64, signature verified",
		"digest:    " + digest + "\n", "reference: berth.local/berth/os:0.3.0\n", "berthctl os rollout 0.3.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "push to node node-0") || !strings.Contains(errOut, "trying node node-1") {
		t.Errorf("push stderr should say node-0 failed and node-1 is next: %q", errOut)
	}
	// Not a terminal: plain progress lines, the last at the whole payload.
	if !strings.Contains(errOut, "\npushing to node node-1: ") || !strings.Contains(errOut, " MiB (100%)\n") || strings.Contains(errOut, "\r") {
		t.Errorf("push stderr should show node-1's progress as plain lines: %q", errOut)
	}
	if status, got := manifestDigest(t, e, api, "0.3.0"); status != http.StatusOK || got != digest {
		t.Fatalf("registry has berth/os:0.3.0 as %d %q, want 200 %s", status, got, digest)
	}

	code, out, errOut = berthctl(t, env, "os", "rollout", "0.3.0")
	if code != 0 {
		t.Fatalf("rollout after push: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "rollout of 0.3.0 set: payload berth.local/berth/os:0.3.0") {
		t.Errorf("rollout output:\n%s", out)
	}
	tgt, raw, _ := storedTarget(t, e)
	want := rollout.Target{Schema: rollout.TargetSchema, Version: "0.3.0", Payload: rollout.DefaultPayload("0.3.0"),
		MaxUnavailable: 1, Canary: 1, DeadlineSeconds: 900, Tries: 3, Created: now}
	if tgt != want {
		t.Errorf("stored target %+v\nwant %+v", tgt, want)
	}
	if raw["schema"] != "berth.rollout.v1" || raw["max_unavailable"] != 1.0 || raw["payload"] != "berth.local/berth/os:0.3.0" {
		t.Errorf("stored JSON: %v", raw)
	}
}

func TestOSPushUnverifiedArchiveAndRefusals(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	api := registryNode(t, e, "node-1")
	layoutDir, _, digest := buildPayload(t, "0.5.0")
	// An OCI archive of the same payload.
	l, err := payload.OpenLocal(layoutDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "berth-minimal-0.5.0.tar")
	if err := payload.WriteTarball(archive, l.Image, "0.5.0"); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := berthctl(t, env, "os", "push", archive)
	if code != 0 {
		t.Fatalf("push archive: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "signature not checked here (no --keys): every node verifies it before installing") ||
		!strings.Contains(out, digest) {
		t.Errorf("unverified push output:\n%s", out)
	}
	if status, got := manifestDigest(t, e, api, "0.5.0"); status != http.StatusOK || got != digest {
		t.Fatalf("registry has berth/os:0.5.0 as %d %q, want 200 %s", status, got, digest)
	}

	_, otherKeys, _ := buildPayload(t, "0.5.0")
	code, _, errOut = berthctl(t, env, "os", "push", layoutDir, "--keys", otherKeys)
	if code != ctl.ExitError {
		t.Errorf("push with other keys: exit %d", code)
	}
	oneErrorLine(t, "push with other keys", errOut, "not signed by a trusted key")

	code, _, errOut = berthctl(t, env, "os", "push", filepath.Join(t.TempDir(), "missing.oci"))
	if code != ctl.ExitError {
		t.Errorf("push of a missing file: exit %d", code)
	}
	oneErrorLine(t, "push of a missing file", errOut, "no such file or directory")

	code, _, errOut = berthctl(t, env, "os", "push", layoutDir, "--keys", filepath.Join(t.TempDir(), "none"))
	if code != ctl.ExitUsage {
		t.Errorf("push with a missing keys dir: exit %d", code)
	}
	oneErrorLine(t, "push with a missing keys dir", errOut, "--keys")

	// Without the client certificate there is no talking to the agents.
	noCert := envFor(e)
	delete(noCert, "BERTHCTL_CERT")
	delete(noCert, "BERTHCTL_KEY")
	code, _, errOut = berthctl(t, noCert, "os", "push", layoutDir)
	if code != ctl.ExitUsage {
		t.Errorf("push without certificate: exit %d", code)
	}
	oneErrorLine(t, "push without certificate", errOut, "needs --cacert, --cert and --key")
}

func TestOSRolloutFlagsAndValidation(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	ref := "registry.example:5000/berth/os:0.4.0" // an explicit payload is not checked against the cluster registry

	code, out, errOut := berthctl(t, env, "os", "rollout", "0.4.0", "--payload", ref, "--max-unavailable", "3", "--group", "edge",
		"--window", "Sat 02:00-04:00", "--canary", "2", "--deadline", "20m", "--max-failures", "1", "--tries", "2", "--auto-revert")
	if code != 0 {
		t.Fatalf("rollout: exit %d: %s", code, errOut)
	}
	want := rollout.Target{Schema: rollout.TargetSchema, Version: "0.4.0", Payload: ref, MaxUnavailable: 3, Group: "edge",
		Canary: 2, Window: "Sat 02:00-04:00", DeadlineSeconds: 1200, MaxFailures: 1, Tries: 2, AutoRevert: true, Created: now}
	tgt, raw, rev := storedTarget(t, e)
	if tgt != want {
		t.Fatalf("stored target %+v\nwant %+v", tgt, want)
	}
	for k, v := range map[string]any{"group": "edge", "window": "Sat 02:00-04:00", "deadline_seconds": 1200.0, "max_failures": 1.0, "tries": 2.0,
		"auto_revert": true, "canary": 2.0, "created": "2026-05-01T12:00:00Z"} {
		if raw[k] != v {
			t.Errorf("stored JSON %s = %v, want %v", k, raw[k], v)
		}
	}
	// now is a Friday noon: outside the window, which the output says.
	if !strings.Contains(out, `group edge, canary 2, window "Sat 02:00-04:00" (UTC), deadline 20m0s, max-failures 1, tries 2, auto-revert`) ||
		!strings.Contains(out, "the maintenance window is closed now") {
		t.Errorf("rollout output:\n%s", out)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--window", "Sun 25:00-01:00"}, "window"},
		{[]string{"--window", "someday 01:00-02:00"}, "day \"someday\""},
		{[]string{"--max-unavailable", "0"}, "max_unavailable 0"},
		{[]string{"--max-unavailable", "-1"}, "max_unavailable -1"},
		{[]string{"--canary", "-1"}, "must not be negative"},
		{[]string{"--max-failures", "-2"}, "must not be negative"},
		{[]string{"--group", rollout.VotersGroup}, "reserved"},
		{[]string{"--group", "Bad/Group"}, "group"},
		{[]string{"--deadline", "0s"}, "--deadline"},
		{[]string{"--deadline", "-5m"}, "--deadline"},
		{[]string{"--deadline", "soon"}, "deadline"},
		{[]string{"--payload", "not a reference"}, "--payload"},
		{[]string{"--tries", "0"}, "--tries 0: want 1 to 99"},
		{[]string{"--tries", "100"}, "--tries 100"},
	} {
		args := append([]string{"os", "rollout", "0.6.0", "--payload", "registry.example:5000/berth/os:0.6.0"}, c.args...)
		code, _, errOut := berthctl(t, env, args...)
		if code != ctl.ExitUsage {
			t.Errorf("%q: exit %d, want %d", c.args, code, ctl.ExitUsage)
		}
		oneErrorLine(t, strings.Join(c.args, " "), errOut, c.want)
	}
	code, _, errOut = berthctl(t, env, "os", "rollout", "bad version")
	if code != ctl.ExitUsage {
		t.Errorf("bad version: exit %d", code)
	}
	oneErrorLine(t, "bad version", errOut, "version \"bad version\"")
	code, _, errOut = berthctl(t, env, "os", "rollout", "1.0+build.5") // a fine version, but not a tag
	if code != ctl.ExitUsage {
		t.Errorf("untaggable version: exit %d", code)
	}
	oneErrorLine(t, "untaggable version", errOut, "cannot be a registry tag")
	if _, _, after := storedTarget(t, e); after != rev {
		t.Fatalf("refused rollouts changed the stored target (revision %d -> %d)", rev, after)
	}

	// The same version again is refused unless forced.
	code, _, errOut = berthctl(t, env, "os", "rollout", "0.4.0", "--payload", ref)
	if code != ctl.ExitError {
		t.Errorf("same version: exit %d", code)
	}
	oneErrorLine(t, "same version", errOut, "the rollout of 0.4.0 is already set (rolling)")
	if _, _, after := storedTarget(t, e); after != rev {
		t.Fatal("the refused second rollout changed the target")
	}
	code, _, errOut = berthctl(t, env, "os", "rollout", "0.4.0", "--payload", ref, "--canary", "0", "--force")
	if code != 0 {
		t.Fatalf("forced: exit %d: %s", code, errOut)
	}
	if tgt, _, _ := storedTarget(t, e); tgt.Canary != 0 || tgt.Group != "" || tgt.AutoRevert || tgt.MaxUnavailable != 1 {
		t.Errorf("forced target %+v: flags not taken", tgt)
	}

	// A new version replaces the current rollout and says so.
	code, out, errOut = berthctl(t, env, "os", "rollout", "0.4.1", "--payload", "registry.example:5000/berth/os:0.4.1")
	if code != 0 || !strings.Contains(out, "it replaces the rollout of 0.4.0 (rolling)") {
		t.Fatalf("new version: exit %d: %s%s", code, out, errOut)
	}
}

func TestOSPauseResumeAbort(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)

	for _, cmd := range []string{"pause", "resume", "abort"} {
		code, _, errOut := berthctl(t, env, "os", cmd)
		if code != ctl.ExitError {
			t.Errorf("%s without rollout: exit %d", cmd, code)
		}
		oneErrorLine(t, cmd+" without rollout", errOut, "no rollout is set")
	}
	if code, _, errOut := berthctl(t, env, "os", "rollout", "0.3.0", "--payload", "registry.example/berth/os:0.3.0"); code != 0 {
		t.Fatalf("rollout: %s", errOut)
	}

	code, out, errOut := berthctl(t, env, "os", "pause", "--reason", "disk check on node-2")
	if code != 0 || !strings.Contains(out, "rollout of 0.3.0 paused: disk check on node-2") {
		t.Fatalf("pause: exit %d: %s%s", code, out, errOut)
	}
	tgt, _, rev := storedTarget(t, e)
	if !tgt.Paused || tgt.Reason != "disk check on node-2" || tgt.Aborted {
		t.Fatalf("after pause: %+v", tgt)
	}
	code, out, _ = berthctl(t, env, "os", "pause")
	if code != 0 || !strings.Contains(out, "already paused: disk check on node-2") {
		t.Errorf("second pause: exit %d: %s", code, out)
	}
	if _, _, after := storedTarget(t, e); after != rev {
		t.Error("a pause of a paused rollout wrote the target")
	}

	code, out, errOut = berthctl(t, env, "os", "resume")
	if code != 0 || !strings.Contains(out, "rollout of 0.3.0 resumed") || strings.Contains(out, "max-failures") {
		t.Fatalf("resume: exit %d: %s%s", code, out, errOut)
	}
	if tgt, _, _ := storedTarget(t, e); tgt.Paused || tgt.Reason != "" || tgt.MaxFailures != 0 {
		t.Fatalf("after resume: %+v", tgt)
	}
	code, out, _ = berthctl(t, env, "os", "resume")
	if code != 0 || !strings.Contains(out, "is not paused") {
		t.Errorf("second resume: exit %d: %s", code, out)
	}

	code, out, errOut = berthctl(t, env, "os", "abort", "--reason", "kernel panics on edge nodes")
	if code != 0 || !strings.Contains(out, "rollout of 0.3.0 aborted: kernel panics on edge nodes") {
		t.Fatalf("abort: exit %d: %s%s", code, out, errOut)
	}
	tgt, _, rev = storedTarget(t, e)
	if !tgt.Aborted || tgt.Reason != "kernel panics on edge nodes" {
		t.Fatalf("after abort: %+v", tgt)
	}
	code, _, errOut = berthctl(t, env, "os", "resume")
	if code != ctl.ExitError {
		t.Errorf("resume after abort: exit %d", code)
	}
	oneErrorLine(t, "resume after abort", errOut, "cannot be resumed: start a new rollout")
	code, _, errOut = berthctl(t, env, "os", "pause")
	if code != ctl.ExitError {
		t.Errorf("pause after abort: exit %d", code)
	}
	oneErrorLine(t, "pause after abort", errOut, "was aborted")
	code, out, _ = berthctl(t, env, "os", "abort")
	if code != 0 || !strings.Contains(out, "already aborted: kernel panics") {
		t.Errorf("second abort: exit %d: %s", code, out)
	}
	if _, _, after := storedTarget(t, e); after != rev {
		t.Error("refused or repeated commands wrote the aborted target")
	}
	code, _, errOut = berthctl(t, env, "os", "rollout", "0.3.0", "--payload", "registry.example/berth/os:0.3.0")
	if code != ctl.ExitError {
		t.Errorf("same version after abort: exit %d", code)
	}
	oneErrorLine(t, "same version after abort", errOut, "already set (aborted: kernel panics on edge nodes)")
}

func putStatuses(t *testing.T, cli *clientv3.Client, statuses ...rollout.NodeStatus) {
	t.Helper()
	for _, s := range statuses {
		s.Schema = rollout.StatusSchema
		if err := rollout.PutStatus(context.Background(), cli, s); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOSResumeRaisesErrorBudget(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	cli := e.Client(t)
	tgt := rollout.Target{Schema: rollout.TargetSchema, Version: "0.3.0", Payload: rollout.DefaultPayload("0.3.0"),
		MaxUnavailable: 1, Canary: 1, Created: now.Add(-time.Hour), Paused: true, Reason: "error budget exceeded (2 failed, 0 allowed)"}
	if err := rollout.PutTarget(context.Background(), cli, tgt, 0); err != nil {
		t.Fatal(err)
	}
	putStatuses(t, cli,
		rollout.NodeStatus{Node: "node-a", Target: "0.3.0", Phase: rollout.PhaseDone, Current: "0.3.0", Previous: "0.2.0", Since: now.Add(-50 * time.Minute)},
		rollout.NodeStatus{Node: "node-b", Target: "0.3.0", Phase: rollout.PhaseRolledBack, Current: "0.2.0", Reason: "check 50-disk failed", Since: now.Add(-40 * time.Minute)},
		// Rebooting for longer than the 15m deadline: a failure too.
		rollout.NodeStatus{Node: "node-c", Target: "0.3.0", Phase: rollout.PhaseRebooting, Current: "0.2.0", Staged: "0.3.0", Since: now.Add(-30 * time.Minute)},
		rollout.NodeStatus{Node: "node-d", Target: "0.2.0", Phase: rollout.PhaseDone, Current: "0.2.0", Since: now.Add(-48 * time.Hour)},
	)
	code, out, errOut := berthctl(t, env, "os", "resume")
	if code != 0 {
		t.Fatalf("resume: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"rollout of 0.3.0 resumed", "raised max-failures from 0 to 2",
		"node node-b rolled-back on 0.3.0: check 50-disk failed", "node node-c rebooting for 30m0s, past the deadline of 15m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("resume output lacks %q:\n%s", want, out)
		}
	}
	stored, _, _ := storedTarget(t, e)
	if stored.Paused || stored.Reason != "" || stored.MaxFailures != 2 {
		t.Fatalf("after resume: %+v", stored)
	}
	snap, err := rollout.Load(context.Background(), cli)
	if err != nil {
		t.Fatal(err)
	}
	if over, why := rollout.BudgetExceeded(*snap.Target, snap.Statuses, now); over {
		t.Fatalf("the resumed rollout would be paused again at once: %s", why)
	}
}

func TestOSStatus(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	cli := e.Client(t)
	ctx := context.Background()

	code, out, errOut := berthctl(t, env, "os", "status")
	if code != 0 || out != "no rollout\n" {
		t.Fatalf("empty status: exit %d: %q %s", code, out, errOut)
	}
	putStatuses(t, cli,
		rollout.NodeStatus{Node: "node-1", Target: "0.3.0", Phase: rollout.PhaseDone, Current: "0.3.0", Previous: "0.2.0", Since: now.Add(-3 * time.Hour)},
		rollout.NodeStatus{Node: "node-2", Target: "0.3.0", Phase: rollout.PhaseRebooting, Current: "0.2.0", Staged: "0.3.0", Since: now.Add(-5 * time.Minute)},
		rollout.NodeStatus{Node: "node-3", Target: "0.3.0", Phase: rollout.PhaseRolledBack, Current: "0.2.0",
			Reason: "rolled back from 0.3.0 to 0.2.0: check 50-disk failed (exit 1)", Since: now.Add(-10 * time.Minute)},
		rollout.NodeStatus{Node: "node-4", Target: "0.2.0", Phase: rollout.PhaseFailed, Current: "0.2.0", Reason: "old news", Since: now.Add(-72 * time.Hour)},
		rollout.NodeStatus{Node: "node-5", Group: "edge", Target: "0.2.0", Phase: rollout.PhaseDone, Current: "0.2.0", Since: now.Add(-72 * time.Hour)},
	)

	// Without a target the statuses are listed as the nodes wrote them.
	code, out, _ = berthctl(t, env, "os", "status")
	if code != 0 || !strings.HasPrefix(out, "no rollout\n\nNODE ") || !strings.Contains(out, "old news") {
		t.Fatalf("status without target: exit %d:\n%s", code, out)
	}

	tgt := rollout.Target{Schema: rollout.TargetSchema, Version: "0.3.0", Payload: rollout.DefaultPayload("0.3.0"), MaxUnavailable: 2,
		Group: "all", Canary: 1, Window: "daily 01:00-05:00", MaxFailures: 1, Created: now.Add(-4 * time.Hour)}
	if err := rollout.PutTarget(ctx, cli, tgt, 0); err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	sem, err := rollout.NewSemaphore(cli, "all", "node-2", lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := sem.TryAcquire(ctx, 2); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}

	code, out, errOut = berthctl(t, env, "os", "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	header, table, ok := strings.Cut(out, "\n\n")
	if !ok {
		t.Fatalf("status has no node table:\n%s", out)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(header, "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.TrimSpace(v)
	}
	for k, v := range map[string]string{
		"target": "0.3.0", "payload": "berth.local/berth/os:0.3.0", "max-unavailable": "2", "group": "all",
		"canary": "1", "window": `"daily 01:00-05:00" (UTC)`, "deadline": "15m0s", "max-failures": "1 (1 so far)",
		"state": "rolling", "progress": "1/4 done, 1 down, 1 failed",
	} {
		if fields[k] != v {
			t.Errorf("status %s: %q, want %q\n%s", k, fields[k], v, header)
		}
	}
	if !strings.HasPrefix(fields["reboot locks"], "all: node-2 for ") {
		t.Errorf("reboot locks: %q, want node-2 in group all", fields["reboot locks"])
	}
	wantTable := strings.Join([]string{
		"NODE     GROUP   CURRENT   STAGED   PHASE         SINCE   REASON",
		"node-1   all     0.3.0     -        done          3h      -",
		"node-2   all     0.2.0     0.3.0    rebooting     5m      -",
		"node-3   all     0.2.0     -        rolled-back   10m     rolled back from 0.3.0 to 0.2.0: check 50-disk failed (exit 1)",
		"node-4   all     0.2.0     -        idle          -       -",
		"node-5   edge    0.2.0     -        excluded      -       -",
		"",
	}, "\n")
	if table != wantTable {
		t.Errorf("node table:\n%s\nwant:\n%s", table, wantTable)
	}

	// A paused rollout shows why.
	if code, _, errOut := berthctl(t, env, "os", "pause", "--reason", "waiting for the storage team"); code != 0 {
		t.Fatal(errOut)
	}
	code, out, _ = berthctl(t, env, "os", "status")
	if code != 0 || !strings.Contains(out, "state:           paused: waiting for the storage team\n") {
		t.Errorf("paused status (exit %d):\n%s", code, out)
	}

	code, out, errOut = berthctl(t, env, "os", "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status json: exit %d: %s", code, errOut)
	}
	var st ctl.OSStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	if st.Target == nil || st.Target.Version != "0.3.0" || st.State != ctl.StatePaused || st.Reason != "waiting for the storage team" {
		t.Errorf("json target/state: %+v %q %q", st.Target, st.State, st.Reason)
	}
	if p := st.Progress; p == nil || p.Total != 4 || p.Done != 1 || p.Down != 1 || p.Failed != 1 || len(p.Failures) != 1 ||
		!strings.Contains(p.Failures[0], "node node-3 rolled-back") {
		t.Errorf("json progress: %+v", st.Progress)
	}
	var phases []string
	for _, n := range st.Nodes {
		phases = append(phases, n.Node+"="+n.Phase)
	}
	if got := strings.Join(phases, " "); got != "node-1=done node-2=rebooting node-3=rolled-back node-4=idle node-5=excluded" {
		t.Errorf("json phases: %s", got)
	}
	if len(st.Nodes) == 5 && st.Nodes[2].Status.Reason != "rolled back from 0.3.0 to 0.2.0: check 50-disk failed (exit 1)" {
		t.Errorf("json node-3 status: %+v", st.Nodes[2].Status)
	}
	if l := st.RebootLocks["all"]; len(l) != 1 || l[0].Holder != "node-2" {
		t.Errorf("json reboot locks: %+v", st.RebootLocks)
	}

	code, out, _ = berthctl(t, env, "os", "status", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "state: paused\n") || !strings.Contains(out, "phase: rolled-back") {
		t.Errorf("status yaml (exit %d):\n%s", code, out)
	}
}

func TestOSUsage(t *testing.T) {
	code, _, errOut := berthctl(t, nil, "os")
	if code != ctl.ExitUsage || !strings.Contains(errOut, "rollout VERSION [FLAGS]") || !strings.Contains(errOut, "berthctl: os: no command given") {
		t.Errorf("os alone: exit %d, stderr:\n%s", code, errOut)
	}
	for _, args := range [][]string{{"os", "--help"}, {"os", "rollout", "--help"}, {"os", "help"}, {"help", "os"}} {
		code, out, _ := berthctl(t, nil, args...)
		if code != 0 || !strings.Contains(out, "--max-unavailable N") || !strings.Contains(out, "abort [--reason TEXT]") {
			t.Errorf("%q: exit %d, stdout:\n%s", args, code, out)
		}
	}
	if code, out, _ := berthctl(t, nil, "--help"); code != 0 || !strings.Contains(out, "os push PAYLOAD") {
		t.Errorf("--help lacks the os commands (exit %d)", code)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"os", "upgrade"}, `unknown command "os upgrade"`},
		{[]string{"os", "push"}, "usage: berthctl os push PAYLOAD"},
		{[]string{"os", "rollout"}, "usage: berthctl os rollout VERSION"},
		{[]string{"os", "rollout", "1", "2"}, "usage: berthctl os rollout VERSION"},
		{[]string{"os", "status", "now"}, "os status takes no arguments"},
		{[]string{"os", "pause", "--reason"}, "flag needs an argument"},
		{[]string{"os", "rollout", "0.3.0", "--canary", "many"}, `invalid argument "many" for "--canary"`},
	} {
		code, _, errOut := berthctl(t, nil, c.args...)
		if code != ctl.ExitUsage {
			t.Errorf("%q: exit %d", c.args, code)
		}
		oneErrorLine(t, strings.Join(c.args, " "), errOut, c.want)
	}
}
