package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/auth"
	"go.uber.org/zap"
)

// The option etcd gets is a JWT provider etcd itself accepts, whose
// tokens verify, and the key survives a restart.
func TestJWTAuthToken(t *testing.T) {
	dir := t.TempDir()
	opts, err := jwtAuthToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(opts, "jwt,") || !strings.Contains(opts, "sign-method=ES256") {
		t.Fatalf("auth token option %q", opts)
	}
	if fi, err := os.Stat(filepath.Join(dir, jwtKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", fi, err)
	}
	again, err := jwtAuthToken(dir)
	if err != nil || again != opts {
		t.Fatalf("second call: %q %v", again, err)
	}
	key, _ := os.ReadFile(filepath.Join(dir, jwtKeyFile))
	if again, _ := os.ReadFile(filepath.Join(dir, jwtKeyFile)); string(again) != string(key) {
		t.Fatal("key changed")
	}
	tp, err := auth.NewTokenProvider(zap.NewNop(), opts, func(uint64) <-chan struct{} { return nil }, time.Minute)
	if err != nil {
		t.Fatalf("etcd refuses the option: %v", err)
	}
	if got := fmt.Sprintf("%T", tp); got != "*auth.tokenJWT" {
		t.Fatalf("token provider %s, want etcd's JWT provider", got)
	}
}
