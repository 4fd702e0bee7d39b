package cluster

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/pki"
)

// testAgent is New(opts); the token shown at bootstrap lands in the
// string.
func testAgent(t *testing.T, opts Options) (*Agent, *string) {
	t.Helper()
	var shown string
	opts.TokenOutput = func(token string) { shown = token }
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, &shown
}

// testProvisioner is the provisioner of testAgent(opts).
func testProvisioner(t *testing.T, opts Options) (*provisioner, *string) {
	t.Helper()
	a, shown := testAgent(t, opts)
	return a.prov, shown
}

// Bootstrap leaves the CA, the node's credentials, the token and a record
// that starts a new single-voter cluster.
func TestBootstrapRecord(t *testing.T) {
	opts := testOptions(t, "node-1")
	p, shown := testProvisioner(t, opts)
	rec, err := p.open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Member || rec.ClusterState != "new" || rec.InitialCluster != "node-1="+opts.PeerURL ||
		!strings.HasPrefix(rec.ClusterToken, "berth-") || !slices.Equal(rec.Endpoints, []string{opts.ClientURL}) || rec.AuthDone {
		t.Fatalf("record: %+v", rec)
	}
	for _, f := range []string{"pki/ca.crt", "pki/ca.key", "pki/node.crt", "pki/node.key", "token", "node.json"} {
		if !exists(p.dir.path(f)) {
			t.Errorf("bootstrap left no %s", f)
		}
	}
	tok, err := pki.ParseToken(*shown)
	if err != nil {
		t.Fatalf("token shown: %q: %v", *shown, err)
	}
	if tok.CAHash != caHash(p.dir) {
		t.Fatalf("token's CA hash %s, CA %s", tok.CAHash, caHash(p.dir))
	}
	saved, err := os.ReadFile(p.dir.path(tokenFile))
	if err != nil || strings.TrimSpace(string(saved)) != *shown {
		t.Fatalf("token file %q, shown %q (%v)", saved, *shown, err)
	}

	// A restart reads the same record back and bootstraps nothing.
	*shown = ""
	again, err := p.open(context.Background())
	if err != nil || again.ClusterToken != rec.ClusterToken || *shown != "" {
		t.Fatalf("restart: %+v, %v, token shown %q", again, err, *shown)
	}
}

// A bare secret given before the cluster existed becomes the token's
// secret.
func TestBootstrapAdoptsPresetSecret(t *testing.T) {
	opts := testOptions(t, "node-1")
	opts.Token = strings.Repeat("5a", 16)
	p, shown := testProvisioner(t, opts)
	if _, err := p.open(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ParseToken(*shown)
	if err != nil || tok.Secret != opts.Token || tok.Bare() {
		t.Fatalf("token %q: %+v, %v", *shown, tok, err)
	}
}

// A data dir of another node, or one a bootstrap left half done, is
// refused.
func TestOpenRefusesForeignOrInterrupted(t *testing.T) {
	opts := testOptions(t, "node-1")
	p, _ := testProvisioner(t, opts)
	if _, err := p.open(context.Background()); err != nil {
		t.Fatal(err)
	}
	other := testOptions(t, "node-2")
	other.DataDir = opts.DataDir
	q, _ := testProvisioner(t, other)
	if _, err := q.open(context.Background()); err == nil || !strings.Contains(err.Error(), `belongs to node "node-1"`) {
		t.Fatalf("foreign data dir: %v", err)
	}

	if err := os.Remove(p.dir.path(recordFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.open(context.Background()); err == nil || !strings.Contains(err.Error(), "interrupted bootstrap or join") {
		t.Fatalf("interrupted bootstrap: %v", err)
	}
}

// A removed member keeps the token and every agent it knew in rejoin.json
// and clears its cluster data; with nobody to join through it refuses.
func TestClearForRejoin(t *testing.T) {
	opts := testOptions(t, "node-1")
	opts.Join = []string{"https://10.0.0.2:7480"}
	opts.Token = "0123456789abcdef0123456789abcdef.sha256:" + strings.Repeat("ab", 32)
	p, _ := testProvisioner(t, opts)
	rec, err := p.bootstrap() // the credentials a removed member had
	if err != nil {
		t.Fatal(err)
	}
	rec.JoinURLs = []string{"https://10.0.0.2:7480", "https://10.0.0.3:7480"}
	token, err := os.ReadFile(p.dir.path(tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.clearForRejoin(rec); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{recordFile, etcdDir, pkiDir, tokenFile} {
		if exists(p.dir.path(f)) {
			t.Errorf("%s left behind", f)
		}
	}
	data, err := os.ReadFile(p.dir.path(rejoinFile))
	if err != nil {
		t.Fatal(err)
	}
	var info rejoinInfo
	if err := json.Unmarshal(data, &info); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.Join, []string{"https://10.0.0.2:7480", "https://10.0.0.3:7480"}) || info.Token != strings.TrimSpace(string(token)) {
		t.Fatalf("rejoin.json: %+v", info)
	}

	lone, _ := testProvisioner(t, testOptions(t, "node-3"))
	if _, err := lone.bootstrap(); err != nil {
		t.Fatal(err)
	}
	if err := lone.clearForRejoin(nil); err == nil || !strings.Contains(err.Error(), "no other agent") {
		t.Fatalf("nobody to rejoin through: %v", err)
	}
}
