package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	ocilayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/berth-os/berth/builder/build"
	"github.com/berth-os/berth/builder/disk"
	"github.com/berth-os/berth/builder/rootfs"
	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

const minimalSpec = "../../images/minimal.yaml"

func requireE2E(t testing.TB) {
	t.Helper()
	if os.Getenv("BERTH_E2E") != "1" {
		t.Skip("end-to-end test: set BERTH_E2E=1 (make test does)")
	}
	if os.Geteuid() != 0 {
		t.Skip("end-to-end test needs root")
	}
}

func cacheDir() string {
	if d := os.Getenv("BERTH_CACHE"); d != "" {
		return d
	}
	return "/var/cache/berth"
}

var (
	initOnce sync.Once
	initPath string
	initErr  error
	initDir  string
)

// initBinary builds the static initrd /init once per test process.
func initBinary(t testing.TB) string {
	t.Helper()
	initOnce.Do(func() {
		initDir, initErr = os.MkdirTemp("", "berth-e2e-init-")
		if initErr != nil {
			return
		}
		// Readable by all: one test runs berth-build as an unprivileged user.
		if initErr = os.Chmod(initDir, 0o755); initErr != nil {
			return
		}
		initPath = filepath.Join(initDir, "berth-init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", initPath, "../initrd/init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = fmt.Errorf("build init: %v: %s", err, out)
		}
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
	return initPath
}

// probeSpec is images/minimal.yaml plus the probe unit.
func probeSpec(t testing.TB) *spec.Spec {
	t.Helper()
	s, err := spec.Load(minimalSpec)
	if err != nil {
		t.Fatal(err)
	}
	script, unit := probeScript, probeUnit
	s.Files = append(s.Files,
		spec.File{Path: "/usr/lib/berth-e2e/probe", Content: &script, Mode: 0o755},
		spec.File{Path: "/usr/lib/systemd/system/berth-e2e.service", Content: &unit, Mode: 0o644},
	)
	s.Units.Enable = append(s.Units.Enable, "berth-e2e.service")
	return s
}

type builtImage struct {
	res *build.Result
	err error
}

var (
	imageOnce sync.Once
	image     builtImage
	imageDir  string
)

// probeImage builds the probe image once and shares it between tests.
func probeImage(t testing.TB) *build.Result {
	t.Helper()
	requireE2E(t)
	init := initBinary(t)
	imageOnce.Do(func() {
		imageDir, image.err = os.MkdirTemp("", "berth-e2e-image-")
		if image.err != nil {
			return
		}
		image.res, image.err = buildImage(probeSpec(t), imageDir, init)
	})
	if image.err != nil {
		t.Fatalf("build probe image: %v", image.err)
	}
	return image.res
}

// The releases: versions 0.1.0 to 0.5.0 of the probe image, signed by one
// key, built once per test process and booted by both TestE2EUpdate (as a
// single VM, with the probe's disk) and TestE2ECluster (as cluster nodes,
// where the probe stays idle). 0.4.0 carries a failing health check, 0.5.0
// boots init=/bin/false.
var releaseEdits = []struct {
	version string
	edit    func(*spec.Spec)
}{
	{"0.1.0", nil},
	{"0.2.0", nil},
	{"0.3.0", nil},
	{"0.4.0", func(s *spec.Spec) {
		check := "#!/bin/sh\necho disk on fire >&2\nexit 1\n"
		s.Files = append(s.Files, spec.File{Path: "/etc/berth/health.d/50-disk", Content: &check, Mode: 0o755})
	}},
	{"0.5.0", func(s *spec.Spec) { s.Kernel.Cmdline = append(s.Kernel.Cmdline, "init=/bin/false") }},
}

// releaseSet is the built releases and the key that signed them (KEY.key,
// KEY.pub).
type releaseSet struct {
	key      string
	versions map[string]builtVersion
	err      error
}

type builtVersion struct {
	res     *build.Result
	payload string // the signed OCI layout
	bytes   int64
}

var (
	releaseOnce sync.Once
	release     releaseSet
	releaseDir  string
)

func releases(t *testing.T) *releaseSet {
	t.Helper()
	requireE2E(t)
	init := initBinary(t)
	releaseOnce.Do(func() { release = buildReleases(t, init) })
	if release.err == nil && release.versions == nil {
		t.Fatal("the release build stopped in another test (see its log)")
	}
	if release.err != nil {
		t.Fatalf("build the releases (make build first: the spec takes the agent from bin/): %v", release.err)
	}
	return &release
}

func buildReleases(t *testing.T, init string) releaseSet {
	var err error
	if releaseDir, err = os.MkdirTemp("", "berth-e2e-releases-"); err != nil {
		return releaseSet{err: err}
	}
	r := releaseSet{key: filepath.Join(releaseDir, "release"), versions: map[string]builtVersion{}}
	if err := payload.GenerateKey(r.key+".key", r.key+".pub"); err != nil {
		return releaseSet{err: err}
	}
	for _, v := range releaseEdits {
		s := probeSpec(t)
		s.Version = v.version
		// zstd level 6 instead of the spec's 15: 7 s of CPU instead of 90 s
		// per build here, for a slot 6.6% bigger (measured with mksquashfs
		// on the base tree). The releases test updates, not compression;
		// the spec's own level is built by TestE2EImageStructure,
		// TestE2EReproducible and TestE2EOCIBase.
		s.Slot.Level = 6
		if v.edit != nil {
			v.edit(s)
		}
		start := time.Now()
		res, err := build.Run(context.Background(), s, build.Options{OutDir: filepath.Join(releaseDir, "out-"+v.version), CacheDir: cacheDir(),
			InitBinary: init, SigningKey: r.key + ".key", NoQcow2: true, Log: discardLog()})
		if err != nil {
			return releaseSet{err: fmt.Errorf("%s: %w", v.version, err)}
		}
		b := builtVersion{res: res, payload: res.Payload, bytes: dirBytes(t, res.Payload)}
		r.versions[v.version] = b
		t.Logf("built release %s (payload %.1f MiB) in %.1f s", v.version, float64(b.bytes)/(1<<20), time.Since(start).Seconds())
	}
	return r
}

func buildImage(s *spec.Spec, out, init string) (*build.Result, error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return build.Run(context.Background(), s, build.Options{OutDir: out, CacheDir: cacheDir(), InitBinary: init, Log: log})
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{initDir, imageDir, releaseDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	os.Exit(code)
}

func sha256File(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extractPartition copies one partition of the image into its own file.
func extractPartition(t testing.TB, img string, number int) string {
	t.Helper()
	l, err := disk.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Parts {
		if p.Number != number {
			continue
		}
		src, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst := filepath.Join(t.TempDir(), fmt.Sprintf("part%d.img", number))
		f, err := os.Create(dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, io.NewSectionReader(src, p.Start, p.Size)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return dst
	}
	t.Fatalf("partition %d not in %s", number, img)
	return ""
}

func TestE2EImageStructure(t *testing.T) {
	res := probeImage(t)
	img := res.Raw

	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v reports problems:\n%s", out)
	}
	l, err := disk.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[int]string{layout.PartESP: layout.LabelESP, layout.PartSlotA: layout.LabelSlotA, layout.PartSlotB: layout.LabelSlotB, layout.PartState: layout.LabelState}
	for _, p := range l.Parts {
		if wantLabels[p.Number] != p.Label {
			t.Errorf("partition %d label %q, want %q", p.Number, p.Label, wantLabels[p.Number])
		}
	}

	espImg := extractPartition(t, img, layout.PartESP)
	if out := run(t, "fsck.vfat", "-n", espImg); strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Errorf("fsck.vfat -n reports more than its banner and summary:\n%s", out)
	}
	entries := run(t, "mdir", "-b", "-i", espImg, "::/loader/entries")
	if !strings.Contains(entries, "berth-a+3.conf") {
		t.Errorf("ESP entries: want berth-a+3.conf, got:\n%s", entries)
	}
	for _, p := range []string{layout.BootLoaderPath, layout.KernelPath(layout.SlotA), layout.InitrdPath(layout.SlotA), layout.LoaderConfPath} {
		if _, err := exec.Command("mtype", "-i", espImg, "::/"+p).Output(); err != nil {
			t.Errorf("ESP lacks /%s: %v", p, err)
		}
	}

	slotImg := extractPartition(t, img, layout.PartSlotA)
	listing := run(t, "unsquashfs", "-lln", slotImg)
	for _, want := range []string{
		"-rwsr-xr-x 0/0", // setuid kept (su, passwd, mount...)
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("slot listing lacks %q", want)
		}
	}
	lines := map[string]string{}
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 {
			lines[strings.TrimPrefix(f[5], "squashfs-root")] = f[0] + " " + f[1]
		}
	}
	expect := map[string]string{
		"/usr/bin/passwd":          "-rwsr-xr-x 0/0",
		"/etc/shadow":              "-rw-r----- 0/42",
		"/var":                     "drwxr-xr-x 0/0",
		"/home":                    "lrwxrwxrwx 0/0",
		"/root":                    "lrwxrwxrwx 0/0",
		"/tmp":                     "drwxrwxrwt 0/0",
		"/etc/machine-id":          "-r--r--r-- 0/0",
		"/usr/lib/berth-e2e/probe": "-rwxr-xr-x 0/0",
	}
	for p, want := range expect {
		if got := lines[p]; got != want {
			t.Errorf("slot %s: got %q, want %q", p, got, want)
		}
	}
	for p := range lines {
		switch {
		case strings.HasPrefix(p, "/var/"):
			t.Errorf("slot has %s: /var must be empty (its content lives in the factory copy)", p)
		case strings.HasPrefix(p, "/usr/share/man/"), strings.HasPrefix(p, "/var/lib/dpkg"), strings.HasPrefix(p, "/boot/"):
			t.Errorf("slot has %s: should have been trimmed", p)
		case strings.HasPrefix(p, "/usr/share/doc/") && strings.Count(p, "/") > 4 && !strings.HasSuffix(p, "/copyright"):
			t.Errorf("slot has documentation %s", p)
		}
	}

	stateImg := extractPartition(t, img, layout.PartState)
	// e2fsck -n exits 0 even when it declines fixes ("...? no"): read its
	// output, and let a preen on the copy prove there is nothing to fix.
	if out := run(t, "e2fsck", "-fn", stateImg); strings.Contains(out, "? no") {
		t.Errorf("e2fsck -fn finds problems in the state filesystem:\n%s", out)
	}
	if out, err := exec.Command("e2fsck", "-fp", stateImg).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fp had to change the state filesystem: %v\n%s", err, out)
	}
	t.Logf("slot filesystem: %.1f MiB; disk image: %d MiB (raw, sparse on disk)", float64(res.Manifest.SlotBytes)/(1<<20), res.Manifest.DiskBytes>>20)
}

// TestE2EReproducible builds the probe image a second time, this time from
// an OCI layout that holds the same root as the cached Debian base (one
// layer, written with go-containerregistry): the raw and qcow2 images must
// be byte for byte the same. One build proves both that a build is
// reproducible and that the OCI base path gives the very image the Debian
// path gives (a difference names both suspects).
func TestE2EReproducible(t *testing.T) {
	first := probeImage(t)
	s := probeSpec(t)
	baseTar, _, err := rootfs.BaseTar(context.Background(), s, cacheDir(), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromFile(baseTar)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lp, err := ocilayout.Write(filepath.Join(dir, "base"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	s.Base = spec.Base{OCI: "oci-layout:" + filepath.Join(dir, "base")}
	second, err := buildImage(s, filepath.Join(dir, "out"), initBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{first.Raw, second.Raw}, {first.Qcow2, second.Qcow2}} {
		a, b := sha256File(t, pair[0]), sha256File(t, pair[1])
		if a != b {
			t.Errorf("not reproducible, or the OCI base path differs from the Debian one: %s %s (Debian base) vs %s %s (OCI layout)",
				filepath.Base(pair[0]), a, filepath.Base(pair[1]), b)
		} else {
			t.Logf("%s: sha256 %s in both builds", filepath.Base(pair[0]), a)
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
