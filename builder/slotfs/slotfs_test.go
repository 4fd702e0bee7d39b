package slotfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testEpoch = 1700000000 // 2023-11-14 22:13:20 UTC

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mksquashfs", "unsquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (squashfs-tools)", tool)
		}
	}
}

// makeTree writes a small root with a setuid binary, a file owned by
// 1000:1000, a symlink and a sticky directory, all with old mtimes that
// the image must not keep.
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "home/core"), 0o700))
	must(os.Mkdir(filepath.Join(root, "tmp"), 0o755))
	must(os.WriteFile(filepath.Join(root, "usr/bin/su"), []byte("#!/bin/sh\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "home/core/notes"), bytes.Repeat([]byte("berth "), 1000), 0o640))
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(os.Chown(filepath.Join(root, "home/core"), 1000, 1000))
	must(os.Chown(filepath.Join(root, "home/core/notes"), 1000, 1000))
	// chmod after chown: chown clears setuid.
	must(unix.Chmod(filepath.Join(root, "usr/bin/su"), 0o4755))
	must(unix.Chmod(filepath.Join(root, "tmp"), 0o1777))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, p := range []string{"usr/bin/su", "home/core/notes", "home/core", "usr/bin", "usr", "tmp", "home", "."} {
		must(os.Chtimes(filepath.Join(root, p), old, old))
	}
	return root
}

// listing returns unsquashfs -lln output as path -> "mode owner date".
func listing(t *testing.T, img string) map[string][]string {
	t.Helper()
	cmd := exec.Command("unsquashfs", "-lln", img)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lln: %v\n%s", err, out)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// -rwsr-xr-x 0/0 10 2023-11-14 22:13 squashfs-root/usr/bin/su
		// lrwxrwxrwx 0/0 7 2023-11-14 22:13 squashfs-root/bin -> usr/bin
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "squashfs-root") {
			continue
		}
		p := strings.TrimPrefix(strings.TrimPrefix(f[5], "squashfs-root"), "/")
		m[p] = []string{f[0], f[1], f[3] + " " + f[4]}
	}
	return m
}

func TestBuildKeepsModesOwnersAndClampsTimes(t *testing.T) {
	needTools(t)
	root := makeTree(t)
	img := filepath.Join(t.TempDir(), "slot.squashfs")
	if err := Build(context.Background(), root, img, Options{Compression: "gzip", Epoch: testEpoch}); err != nil {
		t.Fatal(err)
	}
	got := listing(t, img)
	want := map[string][2]string{ // mode, owner
		"":                {"drwxr-xr-x", "0/0"},
		"bin":             {"lrwxrwxrwx", "0/0"},
		"home/core":       {"drwx------", "1000/1000"},
		"home/core/notes": {"-rw-r-----", "1000/1000"},
		"tmp":             {"drwxrwxrwt", "0/0"},
		"usr/bin/su":      {"-rwsr-xr-x", "0/0"},
	}
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%q missing from the image; listing: %v", p, got)
			continue
		}
		if g[0] != w[0] || g[1] != w[1] {
			t.Errorf("%q: mode %s owner %s, want %s %s", p, g[0], g[1], w[0], w[1])
		}
	}
	if len(got) != 9 {
		t.Errorf("image has %d entries, want 9: %v", len(got), got)
	}
	wantDate := time.Unix(testEpoch, 0).UTC().Format("2006-01-02 15:04")
	for p, g := range got {
		if g[2] != wantDate {
			t.Errorf("%q has time %s, want the epoch %s", p, g[2], wantDate)
		}
	}

	cmd := exec.Command("unsquashfs", "-stat", img)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -stat: %v\n%s", err, out)
	}
	wantMkfs := "Creation or last append time " + time.Unix(testEpoch, 0).UTC().Format("Mon Jan _2 15:04:05 2006")
	if !strings.Contains(string(out), wantMkfs) {
		t.Errorf("superblock time: want %q in\n%s", wantMkfs, out)
	}
	if !strings.Contains(string(out), "Compression gzip") {
		t.Errorf("compression: want gzip in\n%s", out)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	needTools(t)
	root := makeTree(t)
	dir := t.TempDir()
	var images [][]byte
	for i, name := range []string{"one.squashfs", "two.squashfs"} {
		img := filepath.Join(dir, name)
		if i == 1 {
			// A rebuild must not depend on when it runs either.
			now := time.Now()
			if err := os.Chtimes(filepath.Join(root, "usr/bin/su"), now, now); err != nil {
				t.Fatal(err)
			}
		}
		if err := Build(context.Background(), root, img, Options{Compression: "zstd", Level: 3, Epoch: testEpoch}); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, data)
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Error("two builds of the same tree differ")
	}
}

func TestBuildOverwritesOutput(t *testing.T) {
	needTools(t)
	root := makeTree(t)
	img := filepath.Join(t.TempDir(), "slot.squashfs")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0xff}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Build(context.Background(), root, img, Options{Compression: "gzip", Epoch: testEpoch}); err != nil {
		t.Fatal(err)
	}
	if _, ok := listing(t, img)["usr/bin/su"]; !ok {
		t.Error("rebuilt image lacks usr/bin/su")
	}
}

func TestBuildProgress(t *testing.T) {
	needTools(t)
	root := makeTree(t)
	img := filepath.Join(t.TempDir(), "slot.squashfs")
	var seen []int
	err := Build(context.Background(), root, img, Options{Compression: "gzip", Epoch: testEpoch, Progress: func(p int) { seen = append(seen, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) == 0 || seen[len(seen)-1] != 100 {
		t.Fatalf("progress %v, want it to end at 100", seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] < seen[i-1] || seen[i] > 100 {
			t.Fatalf("progress %v goes backwards or beyond 100", seen)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	needTools(t)
	dir := t.TempDir()

	img := filepath.Join(dir, "missing.squashfs")
	err := Build(context.Background(), filepath.Join(dir, "no-such-root"), img, Options{Compression: "gzip"})
	if err == nil {
		t.Fatal("Build of a missing root succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-root") {
		t.Errorf("error %q does not name the missing directory", err)
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Errorf("failed build left %s behind (%v)", img, err)
	}

	img = filepath.Join(dir, "badcomp.squashfs")
	if err := Build(context.Background(), makeTree(t), img, Options{Compression: "nope"}); err == nil {
		t.Error("Build with an unknown compressor succeeded")
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Errorf("failed build left %s behind (%v)", img, err)
	}
}

func TestArgs(t *testing.T) {
	args := strings.Join(Args("/r", "/o", Options{Compression: "zstd", Level: 19, Epoch: 42}), " ")
	for _, want := range []string{"/r /o ", "-noappend", "-reproducible", "-xattrs", "-comp zstd", "-mkfs-time 42", "-all-time 42", "-Xcompression-level 19"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if args := strings.Join(Args("/r", "/o", Options{Compression: "xz"}), " "); strings.Contains(args, "-Xcompression-level") {
		t.Errorf("args %q set a level the user did not ask for", args)
	}
}

// A tree that cannot fit stops mksquashfs once the image outgrows the
// limit, with an estimate of what it needs, and leaves no image behind;
// the same tree under a big enough limit builds.
func TestBuildStopsWhenTooLarge(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 12 {
		data := make([]byte, 1<<20) // incompressible
		for j := range data {
			data[j] = byte(rnd.Uint32())
		}
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("f%02d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "slot.squashfs")
	var last int
	err := Build(context.Background(), root, out, Options{Compression: "zstd", Epoch: 1, MaxBytes: 2 << 20,
		Progress: func(p int) { last = p }})
	var tl *TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("Build of 12 MiB of random data into 2 MiB: %v, want a TooLargeError", err)
	}
	if tl.Written <= 2<<20 || tl.Max != 2<<20 {
		t.Errorf("TooLargeError %+v", tl)
	}
	if tl.Percent >= 100 || last >= 100 {
		t.Errorf("mksquashfs ran to the end (%d%%, progress %d%%): it should stop once the image is full", tl.Percent, last)
	}
	if tl.Needed != 0 && (tl.Needed < 8<<20 || tl.Needed > 20<<20) {
		t.Errorf("estimate %d MiB for 12 MiB of random data", tl.Needed>>20)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("image left behind: %v", err)
	}
	t.Logf("%v", err)
	if err := Build(context.Background(), root, out, Options{Compression: "zstd", Epoch: 1, MaxBytes: 64 << 20}); err != nil {
		t.Fatalf("the same tree under 64 MiB: %v", err)
	}
}
