package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/internal/syncbuf"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// now is the clock berthctl sees in these tests, so AGE is exact.
var now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// berthctl runs the command in-process and returns exit code and output.
func berthctl(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := ctl.Main(context.Background(), args, ctl.IO{
		Stdout: &out, Stderr: &errOut, Now: func() time.Time { return now },
		Getenv: func(k string) string { return env[k] },
	})
	return code, out.String(), errOut.String()
}

// envFor points berthctl at e with the root client certificate.
func envFor(e *etcdtest.Etcd) map[string]string {
	return map[string]string{
		"BERTHCTL_ENDPOINTS": e.Endpoint, "BERTHCTL_CACERT": e.CAFile,
		"BERTHCTL_CERT": e.ClientCert, "BERTHCTL_KEY": e.ClientKey,
	}
}

func publish(t *testing.T, e *etcdtest.Etcd, n nodedoc.Node) (stop func()) {
	t.Helper()
	p := nodedoc.NewPublisher(e.Client(t), n.Name, func() nodedoc.Node { return n }, 0)
	p.Log = quiet
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	select {
	case <-p.Published():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not published", n.Name)
	}
	return stop
}

func putRole(t *testing.T, e *etcdtest.Etcd, name, role string) {
	t.Helper()
	data, _ := json.Marshal(nodedoc.RoleEntry{Role: role, ClientURL: "https://127.0.0.1:2379"})
	if _, err := e.Client(t).Put(context.Background(), nodedoc.RoleKey(name), string(data)); err != nil {
		t.Fatal(err)
	}
}

// threeNodesAndADeadOne publishes node-1..3 and registers node-4 with a
// role but no document.
func threeNodesAndADeadOne(t *testing.T) *etcdtest.Etcd {
	e := etcdtest.Start(t, etcdtest.Options{})
	docs := []nodedoc.Node{
		{Name: "node-1", Role: "voter", Ready: true, BootTime: now.Add(-3 * time.Hour),
			OS: nodedoc.OS{Name: "berth-minimal", Version: "0.2.0", Slot: "b", OtherSlotState: "good",
				LastUpdate: &nodedoc.LastUpdate{State: "success", Version: "0.2.0"}}},
		{Name: "node-2", Role: "voter", Ready: true, BootTime: now.Add(-90 * time.Second),
			OS: nodedoc.OS{Name: "berth-minimal", Version: "0.1.0", Slot: "a"}},
		{Name: "node-3", Role: "client", Ready: false, BootTime: now.Add(-50 * time.Hour),
			OS: nodedoc.OS{Name: "debian", Version: "12"}},
	}
	for _, d := range docs {
		d.Addresses = []string{"127.0.0.1"}
		d.Kernel = "6.1.0-test"
		publish(t, e, d)
		putRole(t, e, d.Name, d.Role)
	}
	putRole(t, e, "node-4", "voter")
	return e
}

func TestNodesTableAndJSON(t *testing.T) {
	e := threeNodesAndADeadOne(t)
	env := envFor(e)

	code, out, errOut := berthctl(t, env, "nodes")
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := strings.Join([]string{
		"NAME     ROLE     READY      OS-VERSION   SLOT   UPDATE    AGE",
		"node-1   voter    Ready      0.2.0        b      success   3h",
		"node-2   voter    Ready      0.1.0        a      -         90s",
		"node-3   client   NotReady   12           -      -         2d",
		"node-4   voter    NotReady   -            -      -         -",
		"",
	}, "\n")
	if out != want {
		t.Fatalf("table:\n%s\nwant:\n%s", out, want)
	}

	code, out, errOut = berthctl(t, env, "nodes", "-o", "json")
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var list ctl.NodeList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	var got []string
	for _, r := range list.Items {
		desc := fmt.Sprintf("%s/%s/%s", r.Name, r.Role, r.Status)
		if r.Document != nil {
			desc += "/" + r.Document.OS.Version + "/" + r.Document.Schema
		}
		got = append(got, desc)
	}
	wantItems := "node-1/voter/Ready/0.2.0/berth.node.v1 node-2/voter/Ready/0.1.0/berth.node.v1 node-3/client/NotReady/12/berth.node.v1 node-4/voter/NotReady"
	if strings.Join(got, " ") != wantItems {
		t.Fatalf("json items = %v\nwant %s", got, wantItems)
	}
	if !strings.Contains(out, `"document": null`) {
		t.Errorf("the NotReady node without document should have \"document\": null:\n%s", out)
	}

	code, out, _ = berthctl(t, env, "--output=yaml", "nodes")
	if code != 0 || !strings.Contains(out, "name: node-4") || !strings.Contains(out, "status: NotReady") {
		t.Fatalf("yaml output (exit %d):\n%s", code, out)
	}
}

func TestNodeShowsDocumentOrNotFound(t *testing.T) {
	e := threeNodesAndADeadOne(t)
	env := envFor(e)

	code, out, errOut := berthctl(t, env, "node", "node-1", "-o", "json")
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	n, err := nodedoc.ParseNode([]byte(out))
	if err != nil {
		t.Fatalf("node -o json is not a node document: %v\n%s", err, out)
	}
	if n.Name != "node-1" || n.OS.LastUpdate == nil || n.OS.LastUpdate.State != "success" || n.Kernel != "6.1.0-test" {
		t.Fatalf("wrong document: %+v", n)
	}

	code, out, _ = berthctl(t, env, "node", "node-2")
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			fields[f[0]] = f[1]
		}
	}
	for k, v := range map[string]string{"FIELD": "VALUE", "os.version": "0.1.0", "os.slot": "a", "name": "node-2",
		"schema": "berth.node.v1", "os.name": "berth-minimal", "addresses": "127.0.0.1", "client_url": "-"} {
		if code != 0 || fields[k] != v {
			t.Errorf("table of node-2: %s = %q, want %q (exit %d):\n%s", k, fields[k], v, code, out)
		}
	}

	code, _, errOut = berthctl(t, env, "node", "node-4")
	if code != ctl.ExitNotFound || !strings.Contains(errOut, "NotReady") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("node-4 (role, no document): exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = berthctl(t, env, "node", "node-99")
	if code != ctl.ExitNotFound || !strings.Contains(errOut, `node "node-99" not found`) {
		t.Errorf("unknown node: exit %d, stderr %q", code, errOut)
	}
}

func TestMembersMarksLeader(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	code, out, errOut := berthctl(t, envFor(e), "members")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], "etcdtest") ||
		!strings.Contains(lines[1], "leader") || !strings.Contains(lines[1], e.Endpoint) {
		t.Fatalf("members table:\n%s", out)
	}
	code, out, _ = berthctl(t, envFor(e), "members", "-o", "json")
	var resp struct{ Members []ctl.Member }
	if err := json.Unmarshal([]byte(out), &resp); err != nil || code != 0 || len(resp.Members) != 1 ||
		!resp.Members[0].Leader || resp.Members[0].Learner {
		t.Fatalf("members json (exit %d, %v):\n%s", code, err, out)
	}
}

func TestWatchStreamsPutsAndDeletes(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	env := envFor(e)
	var out, errOut syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- ctl.Main(ctx, []string{"watch"}, ctl.IO{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }})
	}()
	time.Sleep(300 * time.Millisecond) // let the watch start; it resumes from its first revision anyway
	stop := publish(t, e, nodedoc.Node{Name: "node-9", Role: "voter", Ready: true, OS: nodedoc.OS{Version: "0.3.0", Slot: "a"}})
	stop() // revokes the lease: the document goes
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(out.String(), "DELETE node-9") {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("watch exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], " PUT node-9 Ready role=voter version=0.3.0 slot=a") ||
		!strings.Contains(lines[1], " DELETE node-9 ") {
		t.Fatalf("watch output:\n%s", out.String())
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{}) // only for its certificates
	env := envFor(e)
	env["BERTHCTL_ENDPOINTS"] = fmt.Sprintf("https://127.0.0.1:%d", etcdtest.FreePort(t))
	start := time.Now()
	code, out, errOut := berthctl(t, env, "nodes", "--timeout", "1s")
	took := time.Since(start)
	if code != ctl.ExitUnreachable {
		t.Fatalf("exit %d, want %d; stderr %q", code, ctl.ExitUnreachable, errOut)
	}
	if !strings.Contains(errOut, "cannot reach the cluster at "+env["BERTHCTL_ENDPOINTS"]) ||
		!strings.Contains(errOut, "connection refused") || strings.Count(errOut, "\n") != 1 || out != "" {
		t.Errorf("stderr %q, stdout %q", errOut, out)
	}
	if took > 4*time.Second {
		t.Errorf("took %v with a 1s timeout", took)
	}
}

func TestDefaultTimeoutIsFiveSeconds(t *testing.T) {
	// A listener that accepts but never speaks: only the timeout ends this.
	port := etcdtest.FreePort(t)
	l, err := netListen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	code, _, errOut := berthctl(t, map[string]string{"BERTHCTL_ENDPOINTS": fmt.Sprintf("http://127.0.0.1:%d", port)}, "nodes")
	took := time.Since(start)
	if code != ctl.ExitUnreachable || !strings.Contains(errOut, "within 5s") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if took < 4500*time.Millisecond || took > 9*time.Second {
		t.Errorf("gave up after %v, want about 5s", took)
	}
}

func TestWrongCredentials(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{Auth: true})

	env := envFor(e)
	env["BERTHCTL_CACERT"] = e.OtherCA(t)
	code, _, errOut := berthctl(t, env, "nodes")
	if code != ctl.ExitError || !strings.Contains(errOut, "not signed by the --cacert CA") {
		t.Errorf("wrong CA: exit %d, stderr %q", code, errOut)
	}

	env = envFor(e)
	delete(env, "BERTHCTL_CERT")
	delete(env, "BERTHCTL_KEY")
	code, _, errOut = berthctl(t, env, "nodes")
	if code != ctl.ExitError || !strings.Contains(errOut, "requires a client certificate") {
		t.Errorf("no client cert: exit %d, stderr %q", code, errOut)
	}

	env = envFor(e)
	env["BERTHCTL_CERT"], env["BERTHCTL_KEY"] = e.Issue(t, "nobody", false) // no such etcd user
	code, _, errOut = berthctl(t, env, "nodes")
	if code != ctl.ExitError || strings.Count(errOut, "\n") != 1 {
		t.Errorf("unknown user: exit %d, stderr %q", code, errOut)
	}
	t.Logf("unknown user: %s", strings.TrimSpace(errOut))

	code, _, errOut = berthctl(t, envFor(e), "nodes") // root works with auth on
	if code != 0 {
		t.Errorf("root: exit %d, stderr %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"node"}, {"node", "a", "b"}, {"nodes", "-o", "xml"}, {"nodes", "--no-such-flag"},
		{"--endpoints", "127.0.0.1:2379", "nodes"}, {"--cert", "x.crt", "nodes"}, {"--config", "/nonexistent/berthctl.yaml", "nodes"},
		{"--cacert", "/nonexistent/ca.crt", "nodes"}, {"node", "Bad/Name"},
	} {
		code, _, errOut := berthctl(t, nil, args...)
		if code != ctl.ExitUsage || !strings.HasPrefix(errOut, "berthctl: ") && !strings.HasPrefix(errOut, "usage:") {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
	if code, out, _ := berthctl(t, nil, "--help"); code != 0 || !strings.Contains(out, "Exit codes") {
		t.Errorf("--help: exit %d", code)
	}
}

func TestConfigFileEnvAndFlagPrecedence(t *testing.T) {
	e := threeNodesAndADeadOne(t)
	dir := t.TempDir()
	// Relative paths in the file are relative to the file.
	for src, dst := range map[string]string{e.CAFile: "ca.crt", e.ClientCert: "me.crt", e.ClientKey: "me.key"} {
		data, _ := os.ReadFile(src)
		os.WriteFile(filepath.Join(dir, dst), data, 0o600)
	}
	cfgFile := filepath.Join(dir, "berthctl.yaml")
	os.WriteFile(cfgFile, []byte("endpoints: ["+e.Endpoint+"]\ncacert: ca.crt\ncert: me.crt\nkey: me.key\n"), 0o600)

	if code, out, errOut := berthctl(t, nil, "--config", cfgFile, "nodes"); code != 0 || !strings.Contains(out, "node-3") {
		t.Fatalf("--config: exit %d %s", code, errOut)
	}
	// Default location: $HOME/.config/berthctl.yaml.
	os.MkdirAll(filepath.Join(dir, "home", ".config"), 0o755)
	os.WriteFile(filepath.Join(dir, "home", ".config", "berthctl.yaml"),
		[]byte("endpoints: ["+e.Endpoint+"]\ncacert: "+e.CAFile+"\ncert: "+e.ClientCert+"\nkey: "+e.ClientKey+"\n"), 0o600)
	home := map[string]string{"HOME": filepath.Join(dir, "home")}
	if code, _, errOut := berthctl(t, home, "nodes"); code != 0 {
		t.Fatalf("default config file: exit %d %s", code, errOut)
	}
	// The environment beats the file, the flag beats the environment.
	dead := fmt.Sprintf("https://127.0.0.1:%d", etcdtest.FreePort(t))
	home["BERTHCTL_ENDPOINTS"] = dead
	if code, _, _ := berthctl(t, home, "nodes", "--timeout", "1s"); code != ctl.ExitUnreachable {
		t.Fatalf("env endpoint should override the file: exit %d", code)
	}
	if code, _, errOut := berthctl(t, home, "nodes", "--endpoints", e.Endpoint); code != 0 {
		t.Fatalf("flag endpoint should override env: exit %d %s", code, errOut)
	}
	// Unknown keys in the file are errors, not silently ignored.
	os.WriteFile(cfgFile, []byte("endpoint: x\n"), 0o600)
	if code, _, errOut := berthctl(t, nil, "--config", cfgFile, "nodes"); code != ctl.ExitUsage || !strings.Contains(errOut, "endpoint") {
		t.Fatalf("unknown key: exit %d %s", code, errOut)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 45 * time.Second: "45s", 119 * time.Second: "119s", 2 * time.Minute: "2m",
		3 * time.Hour: "3h", 47 * time.Hour: "47h", 50 * time.Hour: "2d",
	} {
		if got := ctl.HumanDuration(d); got != want {
			t.Errorf("HumanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// Under a NOSPACE alarm `berthctl nodes` says so on its first line and a
// write fails with what happens next and the remedy.
func TestNoSpaceWarningAndError(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{QuotaBytes: 2 << 20})
	publish(t, e, nodedoc.Node{Name: "node-1", Role: "voter", Ready: true, EtcdSpace: nodedoc.SpaceLow,
		OS: nodedoc.OS{Name: "berth-minimal", Version: "0.2.0", Slot: "a"}})
	env := envFor(e)
	code, out, _ := berthctl(t, env, "nodes")
	if code != ctl.ExitOK || !strings.HasPrefix(out, "WARNING: etcd database past 80% of its quota on node-1") {
		t.Fatalf("exit %d, want the low-space warning first:\n%s", code, out)
	}
	cli := e.Client(t)
	big := strings.Repeat("x", 100<<10)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = cli.Put(context.Background(), fmt.Sprintf("/fill/%d", i), big)
	}
	if !nodedoc.IsNoSpace(err) {
		t.Fatalf("filling a 2 MiB quota ended with %v, want NOSPACE", err)
	}
	code, out, errOut := berthctl(t, env, "nodes")
	first, _, _ := strings.Cut(out, "\n")
	if code != ctl.ExitOK || !strings.HasPrefix(first, "WARNING: etcd NOSPACE alarm:") || !strings.Contains(first, "raise etcd_quota") {
		t.Fatalf("exit %d (%s), first line %q, want the NOSPACE warning", code, errOut, first)
	}
	code, out, errOut = berthctl(t, env, "nodes", "-o", "json")
	if code != ctl.ExitOK || !strings.Contains(errOut, "NOSPACE") || !strings.HasPrefix(out, "{") {
		t.Fatalf("json: exit %d, stderr %q, stdout starts %.20q: want the warning on stderr only", code, errOut, out)
	}
	code, _, errOut = berthctl(t, env, "tenant", "add", "acme")
	if code != ctl.ExitError || !strings.Contains(errOut, "NOSPACE alarm") || !strings.Contains(errOut, "delete data or raise etcd_quota") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("write under NOSPACE: exit %d, stderr %q: want one line naming the remedy", code, errOut)
	}
}
