package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// berthBuild builds the berth-build command once, next to the init binary
// it defaults to.
func berthBuild(t *testing.T) string {
	t.Helper()
	init := initBinary(t)
	cliOnce.Do(func() {
		cliPath = filepath.Join(filepath.Dir(init), "berth-build")
		out, err := exec.Command("go", "build", "-o", cliPath, "../cmd/berth-build").CombinedOutput()
		if err != nil {
			cliErr = errors.New(string(out))
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return cliPath
}

// variantSpec writes images/minimal.yaml with edits into a fresh directory
// and returns its path. Relative file sources are made absolute so they
// still point into images/.
func variantSpec(t *testing.T, edit func(string) string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(minimalSpec)
	if err != nil {
		t.Fatal(err)
	}
	imagesDir, err := filepath.Abs(filepath.Dir(minimalSpec))
	if err != nil {
		t.Fatal(err)
	}
	text := sourceLine.ReplaceAllStringFunc(edit(string(data)), func(line string) string {
		m := sourceLine.FindStringSubmatch(line)
		return m[1] + filepath.Join(imagesDir, m[2])
	})
	p := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var sourceLine = regexp.MustCompile(`(source: )([^/\s][^\s]*)`)

type cliResult struct {
	code   int
	stderr string
}

func runCLI(t *testing.T, cmd *exec.Cmd) cliResult {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return cliResult{0, stderr.String()}
	case errors.As(err, &exit):
		return cliResult{exit.ExitCode(), stderr.String()}
	}
	t.Fatalf("run %s: %v", cmd.Path, err)
	return cliResult{}
}

// lastLine is the one error line; progress logs (slog, "time=...") may come before it.
func errorLine(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	return lines[len(lines)-1]
}

// assertNothingWritten checks that a failed build left no image, manifest
// or work directory in out.
func assertNothingWritten(t *testing.T, out string) {
	t.Helper()
	ents, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("failed build left %s in the output directory", e.Name())
	}
}

func TestE2EBadInput(t *testing.T) {
	requireE2E(t)
	bin := berthBuild(t)
	missingTool := t.TempDir() // an empty PATH entry: no mksquashfs, no qemu-img

	cases := []struct {
		name     string
		spec     func(t *testing.T) string
		env      []string
		outDir   func(t *testing.T) string
		nonRoot  bool
		wantCode int
		want     []string
	}{
		{
			name:     "missing spec",
			spec:     func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope.yaml") },
			wantCode: 2,
			want:     []string{"nope.yaml", "no such file"},
		},
		{
			name: "malformed spec",
			spec: func(t *testing.T) string {
				return variantSpec(t, func(s string) string { return s + "\nkernel: [unclosed\n" })
			},
			wantCode: 2,
			want:     []string{"spec.yaml:", "malformed YAML"},
		},
		{
			name: "unknown field",
			spec: func(t *testing.T) string {
				return variantSpec(t, func(s string) string { return strings.Replace(s, "compression: zstd", "compresion: zstd", 1) })
			},
			wantCode: 2,
			want:     []string{"spec.yaml:", "slot.compresion: unknown field"},
		},
		{
			name: "missing file source",
			spec: func(t *testing.T) string {
				return variantSpec(t, func(s string) string {
					return strings.Replace(s, "source: files/autologin-generator", "source: files/not-there", 1)
				})
			},
			wantCode: 2,
			want:     []string{"spec.yaml:", "files[0].source", "not-there"},
		},
		{
			name: "content larger than the slot",
			spec: func(t *testing.T) string {
				return variantSpec(t, func(s string) string { return strings.Replace(s, "slot: 512MiB", "slot: 16MiB", 1) })
			},
			wantCode: 1,
			want:     []string{"partitions.slot: slot needs", "spec gives 16 MiB"},
		},
		{
			name: "unknown package",
			spec: func(t *testing.T) string {
				return variantSpec(t, func(s string) string {
					return strings.Replace(s, "      - kmod\n", "      - kmod\n      - berth-no-such-package\n", 1)
				})
			},
			wantCode: 1,
			want:     []string{`package "berth-no-such-package" does not exist`},
		},
		{
			name: "output directory not writable",
			spec: func(t *testing.T) string { return minimalSpec },
			outDir: func(t *testing.T) string {
				dir := t.TempDir()
				// Root ignores permissions: only a read-only mount stops it.
				if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
					t.Skipf("cannot mount a read-only tmpfs here: %v", err)
				}
				t.Cleanup(func() { syscall.Unmount(dir, 0) })
				return dir
			},
			wantCode: 1,
			want:     []string{"not writable", "choose another with -o"},
		},
		{
			name:     "required tool missing",
			spec:     func(t *testing.T) string { return minimalSpec },
			env:      []string{"PATH=" + missingTool},
			wantCode: 1,
			want:     []string{"mksquashfs not found", "squashfs-tools"},
		},
		{
			name:     "not root",
			spec:     func(t *testing.T) string { return minimalSpec },
			nonRoot:  true,
			wantCode: 1,
			want:     []string{"needs root", "sudo"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			if c.outDir != nil {
				out = c.outDir(t)
			}
			specPath, _ := filepath.Abs(c.spec(t))
			cmd := exec.Command(bin, "build", specPath, "-o", out, "--cache", cacheDir(), "--init", initBinary(t))
			cmd.Env = append(os.Environ(), c.env...)
			if c.nonRoot {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				cmd.Dir = "/"
			}
			r := runCLI(t, cmd)
			if r.code != c.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", r.code, c.wantCode, r.stderr)
			}
			line := errorLine(r.stderr)
			if !strings.HasPrefix(line, "berth-build: ") {
				t.Errorf("last stderr line %q is not one berth-build error line", line)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("error line %q lacks %q", line, w)
				}
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("stderr shows a panic:\n%s", r.stderr)
			}
			if c.outDir == nil {
				assertNothingWritten(t, out)
			}
		})
	}
}
