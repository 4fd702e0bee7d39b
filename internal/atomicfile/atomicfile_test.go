package atomicfile

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestWriteFileReplacesWithModeAndLeavesNoTemp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	p := filepath.Join(dir, "key")
	if err := WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	if err := WriteFile(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "new" {
		t.Fatalf("content %q, %v; want new", got, err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("new directory mode %v, want 0700", di.Mode().Perm())
	}
	assertOnly(t, dir, "key")
}

func TestWriteFileEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "empty")
	if err := WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || len(got) != 0 {
		t.Fatalf("content %q, %v; want empty", got, err)
	}
}

// The stages run in order: the file is fsynced before the rename and the
// directory after it.
func TestWriteFileSyncsFileThenDirectory(t *testing.T) {
	var stages []string
	testHook = func(s string) { stages = append(stages, s) }
	t.Cleanup(func() { testHook = nil })
	if err := WriteFile(filepath.Join(t.TempDir(), "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{stageWritten, stageSynced, stageRenamed, stageDirSync}
	if !reflect.DeepEqual(stages, want) {
		t.Fatalf("stages %v, want %v", stages, want)
	}
}

func TestWriteFileFailsInsideAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(f, "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("writing below a regular file succeeded")
	}
}

// A failed rename (the target is a non-empty directory) leaves the target
// alone and no temporary file behind.
func TestWriteFileErrorLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.MkdirAll(filepath.Join(target, "inside"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(target, []byte("x"), 0o600); err == nil {
		t.Fatal("replacing a non-empty directory succeeded")
	}
	assertOnly(t, dir, "target")
	if fi, err := os.Stat(filepath.Join(target, "inside")); err != nil || !fi.IsDir() {
		t.Fatalf("target directory changed: %v", err)
	}
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !reflect.DeepEqual(got, names) {
		t.Fatalf("%s holds %v, want only %v", dir, got, names)
	}
}

// The child side of the crash tests: the test binary re-executed with
// these variables set.
const (
	envChild = "ATOMICFILE_TEST_CHILD" // target path
	envStage = "ATOMICFILE_TEST_STAGE" // stage to stop at, or "loop"
)

const crashSize = 1 << 20

func content(b byte) []byte { return bytes.Repeat([]byte{b}, crashSize) }

// TestCrashChild is not a test on its own: it runs only in the child
// process started by the crash tests, and never returns there.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(envChild)
	if path == "" {
		t.Skip("child process of the crash tests only")
	}
	stage := os.Getenv(envStage)
	if stage == "loop" {
		// Write alternately until killed; announce the first write.
		for i := 0; ; i++ {
			b := byte('a')
			if i%2 == 1 {
				b = 'b'
			}
			if err := WriteFile(path, content(b), 0o600); err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			if i == 0 {
				fmt.Println("ready")
			}
		}
	}
	testHook = func(s string) {
		if s == stage {
			fmt.Println("ready")
			time.Sleep(2 * time.Minute) // wait for SIGKILL (select{} would be a deadlock)
		}
	}
	err := WriteFile(path, content('n'), 0o600)
	fmt.Println("finished without being killed:", err)
	os.Exit(1)
}

// startChild runs the child writer on path and waits for its "ready" line.
func startChild(t *testing.T, path, stage string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+path, envStage+"="+stage)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case l := <-line:
		if l != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child said %q, want ready", l)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("child not ready after 60 s")
	}
	return cmd
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
}

// checkWhole fails unless path holds exactly one of the allowed contents.
func checkWhole(t *testing.T, path string, allowed ...byte) byte {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range allowed {
		if bytes.Equal(got, content(b)) {
			return b
		}
	}
	t.Fatalf("%s holds %d bytes that are none of %q whole (a mix or a truncation)", path, len(got), allowed)
	return 0
}

// afterCrash checks that a later write succeeds and is read back whole.
func afterCrash(t *testing.T, path string) {
	t.Helper()
	if err := WriteFile(path, content('l'), 0o600); err != nil {
		t.Fatalf("write after the crash: %v", err)
	}
	checkWhole(t, path, 'l')
}

// A writer SIGKILLed at each stage leaves the old content before the rename
// and the new content after it, never a mix.
func TestCrashAtEachStage(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	for _, tc := range []struct {
		stage string
		want  byte
	}{
		{stageWritten, 'o'},
		{stageSynced, 'o'},
		{stageRenamed, 'n'},
		{stageDirSync, 'n'},
	} {
		t.Run(tc.stage, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := WriteFile(path, content('o'), 0o600); err != nil {
				t.Fatal(err)
			}
			kill(t, startChild(t, path, tc.stage))
			checkWhole(t, path, tc.want)
			afterCrash(t, path)
		})
	}
}

// A writer SIGKILLed at arbitrary moments while it rewrites the file leaves
// one whole version each time.
func TestCrashAnywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	path := filepath.Join(t.TempDir(), "state.json")
	for i := range 6 {
		if err := WriteFile(path, content('o'), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := startChild(t, path, "loop")
		time.Sleep(time.Duration(i*7) * time.Millisecond)
		kill(t, cmd)
		got := checkWhole(t, path, 'a', 'b')
		t.Log("killed after " + strconv.Itoa(i*7) + " ms: holds " + string(got))
	}
	afterCrash(t, path)
}
