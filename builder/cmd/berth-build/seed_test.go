package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-os/berth/agent/nodeconfig"
	"github.com/berth-os/berth/builder/esp"
	"github.com/berth-os/berth/builder/seed"
)

// The writer and the reader must agree on where a configuration is.
func TestSeedAndESPPathsMatchTheReader(t *testing.T) {
	if esp.NodeConfigPath != nodeconfig.ESPFile || seed.Label != nodeconfig.DefaultSeedLabel || "/"+seed.FileName != nodeconfig.SeedFile {
		t.Errorf("writer %s %s /%s, reader %s %s %s", esp.NodeConfigPath, seed.Label, seed.FileName,
			nodeconfig.ESPFile, nodeconfig.DefaultSeedLabel, nodeconfig.SeedFile)
	}
}

func TestCmdSeed(t *testing.T) {
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mtype"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "node.yaml")
	body := "hostname: node-1\nagent:\n  voters: 1\n"
	if err := os.WriteFile(good, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "seed.img")
	var out, errb bytes.Buffer
	if code := run([]string{"seed", good, "-o", img}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	cmd := exec.Command("mtype", "-i", img, "::/node.yaml")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if got, err := cmd.Output(); err != nil || string(got) != body {
		t.Errorf("seed holds %q (%v)", got, err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("hostname: node_1\nnetwork:\n  interfaces:\n    - name: en*\n      addresses: [10.0.0.1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badImg := filepath.Join(dir, "bad.img")
	out.Reset()
	errb.Reset()
	code := run([]string{"seed", bad, "-o", badImg}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), bad+":1: hostname") || !strings.Contains(errb.String(), bad+":5: network") {
		t.Errorf("bad node.yaml: exit %d, stderr:\n%s", code, errb.String())
	}
	if _, err := os.Stat(badImg); !os.IsNotExist(err) {
		t.Error("a seed was written for a bad node.yaml")
	}
	errb.Reset()
	if code := run([]string{"seed", "--force", bad, "-o", badImg}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "warning") {
		t.Errorf("--force: exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(badImg); err != nil {
		t.Errorf("--force wrote no seed: %v", err)
	}

	for _, args := range [][]string{{"seed"}, {"seed", good, good}, {"seed", filepath.Join(dir, "missing.yaml")}} {
		errb.Reset()
		if code := run(args, &out, &errb); code != 2 || errb.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q", args, code, errb.String())
		}
	}
}

// build --config refuses a bad node.yaml before any work starts.
func TestBuildConfigChecked(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(bad, []byte("hostnme: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join("..", "..", "..", "images", "minimal.yaml")
	var out, errb bytes.Buffer
	code := run([]string{"build", spec, "--config", bad, "-o", filepath.Join(dir, "out")}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), bad+`:1: unknown setting "hostnme"`) {
		t.Errorf("exit %d, stderr:\n%s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Error("the build started")
	}
}
