package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestBareSecretProvisioning: nodes configured before the cluster exists
// share only a secret; the bootstrap node adopts it and a joiner
// authenticates the CA with it. A joiner with another secret is refused
// before it trusts anything.
func TestBareSecretProvisioning(t *testing.T) {
	c := newLoopbackCluster(t, "127.0.0.61")
	n1 := c.newNode("node-1", "127.0.0.61")
	n2 := c.newNode("node-2", "127.0.0.62")
	n3 := c.newNode("node-3", "127.0.0.63")
	const secret = "0123456789abcdef0123456789abcdef"
	c.start(n1, "--voters", "3", "--token", secret)
	c.waitReady(n1, 30*time.Second)
	if tok := c.token(n1); !strings.HasPrefix(tok, secret+".sha256:") {
		t.Fatalf("bootstrap node's token %q does not carry the preset secret", tok)
	}
	c.start(n2, "--join", n1.api, "--token", secret)
	if got := c.waitReady(n2, 60*time.Second); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("node-2 readyz %q", got)
	}

	c.start(n3, "--join", n1.api, "--token", strings.Repeat("f", 32))
	select {
	case err := <-n3.done:
		n3.done <- err
		n3.cmd = nil
		if err == nil {
			t.Fatal("a joiner with the wrong secret exited 0")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a joiner with the wrong secret did not give up")
	}
	log, _ := os.ReadFile(n3.logPath)
	if !strings.Contains(string(log), "does not match the join secret") {
		t.Fatalf("wrong-secret joiner's log does not say why:\n%s", log)
	}
}
