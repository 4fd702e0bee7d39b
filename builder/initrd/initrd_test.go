package initrd

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testKernel = "6.1.0-99-test"

// fakeDeps is the dependency graph of the fake kernel, written the way
// depmod does: each module lists its whole closure, dependents first.
var fakeDeps = map[string][]string{
	"kernel/drivers/virtio/virtio_ring.ko":            nil,
	"kernel/drivers/virtio/virtio.ko":                 {"kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko":  nil,
	"kernel/drivers/virtio/virtio_pci.ko":             {"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/block/virtio_blk.ko":              {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/char/hw_random/virtio-rng.ko":     {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/fs/squashfs/squashfs.ko":                  nil,
	"kernel/fs/fat/fat.ko":                            nil,
	"kernel/fs/fat/vfat.ko":                           {"kernel/fs/fat/fat.ko"},
	"kernel/drivers/md/dm-verity.ko":                  {"kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-mod.ko"},
	"kernel/drivers/md/dm-bufio.ko":                   nil,
	"kernel/drivers/md/dm-mod.ko":                     nil,
	"kernel/drivers/unused/unused.ko":                 nil,
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko":  nil,
	"kernel/drivers/virtio/virtio_mmio.ko":            {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_balloon.ko":         {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_input.ko":           {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_mem.ko":             {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_dma_buf.ko":         nil,
	"kernel/drivers/virtio/virtio_vdpa.ko":            {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
	"kernel/drivers/virtio/virtio_pci_legacy_test.ko": {"kernel/drivers/virtio/virtio_pci_legacy_dev.ko"},
}

// fakeModDir writes a module tree under root/lib/modules/<kver> and
// returns the module directory. Every module's content is unique, with
// lengths that are not multiples of 4 to exercise cpio padding.
func fakeModDir(t *testing.T, root, kver string, deps map[string][]string, builtin ...string) string {
	t.Helper()
	modDir := filepath.Join(root, "lib", "modules", kver)
	var dep strings.Builder
	mods := make([]string, 0, len(deps))
	for m := range deps {
		mods = append(mods, m)
	}
	slices.Sort(mods)
	for _, m := range mods {
		fmt.Fprintf(&dep, "%s:", m)
		for _, d := range deps[m] {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteString("\n")
		writeFile(t, filepath.Join(modDir, m), moduleContent(m), 0o644)
	}
	writeFile(t, filepath.Join(modDir, "modules.dep"), dep.String(), 0o644)
	writeFile(t, filepath.Join(modDir, "modules.builtin"), strings.Join(builtin, "\n")+"\n", 0o644)
	return modDir
}

func moduleContent(m string) string { return "\x7fELF fake module " + m + "!" }

func writeFile(t *testing.T, name, content string, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
}

// checkLoadOrder asserts that got is exactly the closure want (as a set),
// without duplicates, and that every module follows all its dependencies.
func checkLoadOrder(t *testing.T, deps map[string][]string, got, want []string) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range got {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s appears twice in %v", m, got)
		}
		pos[m] = i
	}
	gotSet, wantSet := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(gotSet, wantSet) {
		t.Fatalf("modules = %v, want the set %v", got, want)
	}
	for _, m := range got {
		for _, d := range deps[m] {
			if pos[d] > pos[m] {
				t.Errorf("%s is loaded before its dependency %s: %v", m, d, got)
			}
		}
	}
}

func TestResolveModulesClosureAndOrder(t *testing.T) {
	modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps, "kernel/fs/ext4/ext4.ko")
	got, err := ResolveModules(modDir, []string{"virtio_blk", "virtio_pci", "vfat", "ext4", "virtio_blk"})
	if err != nil {
		t.Fatal(err)
	}
	checkLoadOrder(t, fakeDeps, got, []string{
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/block/virtio_blk.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/fs/fat/fat.ko",
		"kernel/fs/fat/vfat.ko",
	})
	again, err := ResolveModules(modDir, []string{"virtio_blk", "virtio_pci", "vfat", "ext4", "virtio_blk"})
	if err != nil || !slices.Equal(got, again) {
		t.Fatalf("second resolve = %v, %v; want the same order %v", again, err, got)
	}
}

// A dependency line that names a dependency before that dependency's own
// dependencies (legal in modules.dep) must still come out in load order.
func TestResolveModulesOrdersTransitiveDependencies(t *testing.T) {
	deps := map[string][]string{
		"top.ko":  {"mid.ko", "base.ko", "leaf.ko"},
		"mid.ko":  {"leaf.ko", "base.ko"},
		"base.ko": {"leaf.ko"},
		"leaf.ko": nil,
	}
	modDir := fakeModDir(t, t.TempDir(), testKernel, deps)
	got, err := ResolveModules(modDir, []string{"top"})
	if err != nil {
		t.Fatal(err)
	}
	checkLoadOrder(t, deps, got, []string{"leaf.ko", "base.ko", "mid.ko", "top.ko"})
}

func TestResolveModulesBuiltinSkipped(t *testing.T) {
	modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps, "kernel/fs/ext4/ext4.ko", "kernel/drivers/nvme/host/nvme-core.ko")
	got, err := ResolveModules(modDir, []string{"ext4", "nvme_core", "squashfs"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"kernel/fs/squashfs/squashfs.ko"}) {
		t.Fatalf("got %v, want only squashfs (ext4 and nvme-core are built in)", got)
	}
}

func TestResolveModulesDashUnderscore(t *testing.T) {
	modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps)
	for _, name := range []string{"virtio_rng", "virtio-rng"} {
		got, err := ResolveModules(modDir, []string{name})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) == 0 || got[len(got)-1] != "kernel/drivers/char/hw_random/virtio-rng.ko" {
			t.Errorf("%s resolved to %v, want virtio-rng.ko last", name, got)
		}
	}
	got, err := ResolveModules(modDir, []string{"dm_verity", "virtio-blk"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "kernel/drivers/md/dm-verity.ko") || !slices.Contains(got, "kernel/drivers/block/virtio_blk.ko") {
		t.Errorf("got %v, want dm-verity.ko and virtio_blk.ko", got)
	}
}

func TestResolveModulesUnknownName(t *testing.T) {
	modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps, "kernel/fs/ext4/ext4.ko")
	_, err := ResolveModules(modDir, []string{"virtio_blk", "virtio_blkk"})
	want := fmt.Sprintf(`initrd module "virtio_blkk" not found in %s (not a module and not built in)`, modDir)
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant    %s", err, want)
	}
}

func TestResolveModulesBrokenTrees(t *testing.T) {
	t.Run("module file missing", func(t *testing.T) {
		modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps)
		if err := os.Remove(filepath.Join(modDir, "kernel/drivers/virtio/virtio_ring.ko")); err != nil {
			t.Fatal(err)
		}
		_, err := ResolveModules(modDir, []string{"virtio_blk"})
		if err == nil || !strings.Contains(err.Error(), "virtio_ring.ko is in modules.dep but its file is missing") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("no modules.dep", func(t *testing.T) {
		_, err := ResolveModules(t.TempDir(), []string{"virtio_blk"})
		if err == nil || !strings.Contains(err.Error(), "run depmod") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("cycle", func(t *testing.T) {
		modDir := fakeModDir(t, t.TempDir(), testKernel, map[string][]string{"a.ko": {"b.ko"}, "b.ko": {"a.ko"}})
		_, err := ResolveModules(modDir, []string{"a"})
		if err == nil || !strings.Contains(err.Error(), "dependency cycle: a.ko -> b.ko -> a.ko") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("dependency without entry", func(t *testing.T) {
		modDir := fakeModDir(t, t.TempDir(), testKernel, map[string][]string{"a.ko": {"ghost.ko"}})
		_, err := ResolveModules(modDir, []string{"a"})
		if err == nil || !strings.Contains(err.Error(), "a.ko depends on ghost.ko, which has no entry") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("bad name", func(t *testing.T) {
		modDir := fakeModDir(t, t.TempDir(), testKernel, fakeDeps)
		_, err := ResolveModules(modDir, []string{"../virtio"})
		if err == nil || !strings.Contains(err.Error(), "not a module name") {
			t.Fatalf("error = %v", err)
		}
	})
}

func TestKernelVersions(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"6.1.0-28-cloud-amd64", "6.1.0-9-cloud-amd64", "5.10.0-1-amd64"} {
		fakeModDir(t, filepath.Join(root, "usr"), v, map[string][]string{"a.ko": nil})
	}
	// A kernel removed by the package manager leaves a directory without modules.dep.
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/modules/6.2.0-1-amd64/kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Merged /usr with an absolute link: it must resolve inside root, not on this machine.
	if err := os.Symlink("/usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	got, err := KernelVersions(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"5.10.0-1-amd64", "6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64"}
	if !slices.Equal(got, want) {
		t.Fatalf("KernelVersions = %v, want %v", got, want)
	}
	if _, err := KernelVersions(t.TempDir()); err == nil {
		t.Fatal("KernelVersions of a root without lib succeeded")
	}
}

// buildFixture is an OS root with the fake kernel, an init and a shell.
type buildFixture struct {
	root, init, shell string
	opts              Options
}

func newFixture(t *testing.T) buildFixture {
	t.Helper()
	dir := t.TempDir()
	f := buildFixture{root: filepath.Join(dir, "root"), init: filepath.Join(dir, "init"), shell: filepath.Join(dir, "busybox")}
	fakeModDir(t, filepath.Join(f.root, "usr"), testKernel, fakeDeps, "kernel/fs/ext4/ext4.ko")
	if err := os.Symlink("usr/lib", filepath.Join(f.root, "lib")); err != nil {
		t.Fatal(err)
	}
	// Scripts pass the "static executable" check and differ from each other.
	writeFile(t, f.init, "#!/bin/sh\necho berth fake init\n", 0o700)
	writeFile(t, f.shell, "#!/bin/sh\necho fake busybox, 33 bytes\n", 0o755)
	f.opts = Options{
		InitBinary:    f.init,
		Root:          f.root,
		KernelVersion: testKernel,
		Modules:       []string{"virtio_pci", "virtio-blk", "squashfs", "vfat", "ext4"},
		OnFail:        OnFailShell,
		Shell:         f.shell,
		Epoch:         time.Unix(1700000000, 0),
	}
	return f
}

func build(t *testing.T, o Options) ([]byte, Contents) {
	t.Helper()
	var buf bytes.Buffer
	c, err := Build(&buf, o)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes(), c
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header has name %q and mtime %v; want neither", zr.Name, zr.ModTime)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func runCpio(t *testing.T, dir string, archive []byte, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("GNU cpio not installed")
	}
	cmd := exec.Command("cpio", append([]string{"--quiet"}, args...)...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(archive)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

func TestBuildArchiveEntries(t *testing.T) {
	f := newFixture(t)
	img, c := build(t, f.opts)
	kmods := "lib/modules/" + testKernel
	want := []string{
		"bin", "bin/busybox", "bin/sh",
		"dev", "dev/console", "dev/null",
		"etc", "etc/berth", "etc/berth/initrd.conf", "etc/berth/modules",
		"init",
		"lib", "lib/modules", kmods, kmods + "/kernel",
		kmods + "/kernel/drivers",
		kmods + "/kernel/drivers/block", kmods + "/kernel/drivers/block/virtio_blk.ko",
		kmods + "/kernel/drivers/virtio",
		kmods + "/kernel/drivers/virtio/virtio.ko",
		kmods + "/kernel/drivers/virtio/virtio_pci.ko",
		kmods + "/kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		kmods + "/kernel/drivers/virtio/virtio_ring.ko",
		kmods + "/kernel/fs",
		kmods + "/kernel/fs/fat", kmods + "/kernel/fs/fat/fat.ko", kmods + "/kernel/fs/fat/vfat.ko",
		kmods + "/kernel/fs/squashfs", kmods + "/kernel/fs/squashfs/squashfs.ko",
		"proc", "run", "sys", "sysroot", "tmp",
	}
	listed := strings.Split(strings.TrimSpace(runCpio(t, "", gunzip(t, img), "-it")), "\n")
	if !slices.Equal(listed, want) {
		t.Errorf("cpio -it lists\n%s\nwant\n%s", strings.Join(listed, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(c.Files, listed) {
		t.Errorf("Contents.Files = %v, want what cpio lists", c.Files)
	}
	checkLoadOrder(t, fakeDeps, c.Modules, []string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/drivers/block/virtio_blk.ko", "kernel/fs/squashfs/squashfs.ko",
		"kernel/fs/fat/fat.ko", "kernel/fs/fat/vfat.ko",
	})
}

func TestBuildExtractsFaithfully(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("extracting device nodes needs root")
	}
	f := newFixture(t)
	img, c := build(t, f.opts)
	dir := t.TempDir()
	runCpio(t, dir, gunzip(t, img), "-idm", "--no-absolute-filenames")

	type want struct {
		mode    uint32 // full st_mode
		content string // for regular files
	}
	expect := map[string]want{
		"init":                  {syscall.S_IFREG | 0o755, "#!/bin/sh\necho berth fake init\n"},
		"bin/busybox":           {syscall.S_IFREG | 0o755, "#!/bin/sh\necho fake busybox, 33 bytes\n"},
		"etc/berth/initrd.conf": {syscall.S_IFREG | 0o644, "onfail=shell\n"},
		"etc/berth/modules":     {syscall.S_IFREG | 0o644, strings.Join(c.Modules, "\n") + "\n"},
		"dev":                   {syscall.S_IFDIR | 0o755, ""},
		"proc":                  {syscall.S_IFDIR | 0o555, ""},
		"sys":                   {syscall.S_IFDIR | 0o555, ""},
		"run":                   {syscall.S_IFDIR | 0o755, ""},
		"sysroot":               {syscall.S_IFDIR | 0o755, ""},
		"tmp":                   {syscall.S_IFDIR | 0o1777, ""},
		"dev/console":           {syscall.S_IFCHR | 0o600, ""},
		"dev/null":              {syscall.S_IFCHR | 0o666, ""},
		"bin/sh":                {syscall.S_IFLNK | 0o777, ""},
	}
	for _, m := range c.Modules {
		expect["lib/modules/"+testKernel+"/"+m] = want{syscall.S_IFREG | 0o644, moduleContent(m)}
	}
	for name, w := range expect {
		p := filepath.Join(dir, name)
		st, err := os.Lstat(p)
		if err != nil {
			t.Errorf("extracted %s: %v", name, err)
			continue
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Mode != w.mode {
			t.Errorf("%s: mode %o, want %o", name, sys.Mode, w.mode)
		}
		if sys.Uid != 0 || sys.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", name, sys.Uid, sys.Gid)
		}
		if w.mode&syscall.S_IFMT == syscall.S_IFREG {
			data, err := os.ReadFile(p)
			if err != nil || string(data) != w.content {
				t.Errorf("%s: content %q (%v), want %q", name, data, err, w.content)
			}
			if st.ModTime().Unix() != f.opts.Epoch.Unix() {
				t.Errorf("%s: mtime %v, want the epoch %v", name, st.ModTime(), f.opts.Epoch)
			}
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q (%v), want busybox", target, err)
	}
	for name, dev := range map[string][2]uint64{"dev/console": {5, 1}, "dev/null": {1, 3}} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
		major := (st.Rdev>>8)&0xfff | (st.Rdev>>32)&^0xfff
		minor := st.Rdev&0xff | (st.Rdev>>12)&^0xff
		if major != dev[0] || minor != dev[1] {
			t.Errorf("%s is device %d,%d, want %d,%d", name, major, minor, dev[0], dev[1])
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	f := newFixture(t)
	first, _ := build(t, f.opts)
	// Different source mtimes and modes must not leak into the archive.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(f.init, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.init, 0o751); err != nil {
		t.Fatal(err)
	}
	second, _ := build(t, f.opts)
	if !bytes.Equal(first, second) {
		t.Fatal("two builds of the same inputs differ")
	}
	f.opts.Epoch = f.opts.Epoch.Add(time.Second)
	third, _ := build(t, f.opts)
	if bytes.Equal(first, third) {
		t.Fatal("changing the epoch did not change the archive")
	}
}

func TestBuildWithoutShellOrModules(t *testing.T) {
	f := newFixture(t)
	f.opts.Shell, f.opts.OnFail, f.opts.Modules = "", "", []string{"ext4"}
	img, c := build(t, f.opts)
	if len(c.Modules) != 0 {
		t.Errorf("modules = %v, want none (ext4 is built in)", c.Modules)
	}
	for _, name := range c.Files {
		if strings.HasPrefix(name, "bin") || strings.HasSuffix(name, ".ko") {
			t.Errorf("unexpected entry %s", name)
		}
	}
	dir := t.TempDir()
	runCpio(t, dir, gunzip(t, img), "-id", "--no-absolute-filenames", "etc/berth/*")
	for name, want := range map[string]string{"etc/berth/initrd.conf": "onfail=reboot\n", "etc/berth/modules": ""} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(data) != want {
			t.Errorf("%s = %q (%v), want %q", name, data, err, want)
		}
	}
}

func TestBuildGzipModuleIsUnpacked(t *testing.T) {
	f := newFixture(t)
	modDir := filepath.Join(f.root, "usr/lib/modules", testKernel)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("plain module bytes"))
	zw.Close()
	writeFile(t, filepath.Join(modDir, "kernel/fs/erofs/erofs.ko.gz"), gz.String(), 0o644)
	writeFile(t, filepath.Join(modDir, "modules.dep"), "kernel/fs/erofs/erofs.ko.gz:\n", 0o644)
	f.opts.Modules = []string{"erofs"}
	img, c := build(t, f.opts)
	if !slices.Equal(c.Modules, []string{"kernel/fs/erofs/erofs.ko"}) {
		t.Fatalf("modules = %v, want the unpacked erofs.ko", c.Modules)
	}
	dir := t.TempDir()
	runCpio(t, dir, gunzip(t, img), "-id", "--no-absolute-filenames")
	data, err := os.ReadFile(filepath.Join(dir, "lib/modules", testKernel, "kernel/fs/erofs/erofs.ko"))
	if err != nil || string(data) != "plain module bytes" {
		t.Fatalf("erofs.ko = %q (%v)", data, err)
	}
}

func TestBuildErrors(t *testing.T) {
	dynamic := "/bin/true" // dynamically linked on Debian
	cases := []struct {
		name    string
		change  func(f *buildFixture, o *Options)
		wantErr string
	}{
		{"missing init", func(f *buildFixture, o *Options) { o.InitBinary = filepath.Join(f.root, "no-such-init") },
			"initrd: init binary: open " + "ROOT/no-such-init: no such file or directory"},
		{"no init", func(f *buildFixture, o *Options) { o.InitBinary = "" }, "initrd: no init binary given"},
		{"init is a directory", func(f *buildFixture, o *Options) { o.InitBinary = f.root }, "is not a regular file"},
		{"init not executable format", func(f *buildFixture, o *Options) {
			writeFile(t, f.init, "just text", 0o755)
		}, "is not an executable (neither ELF nor #! script)"},
		{"dynamic init", func(f *buildFixture, o *Options) { o.InitBinary = dynamic }, "is dynamically linked"},
		{"unknown module", func(f *buildFixture, o *Options) { o.Modules = []string{"virtio_blkk"} },
			`initrd module "virtio_blkk" not found in`},
		{"unknown kernel", func(f *buildFixture, o *Options) { o.KernelVersion = "9.9.9" },
			"kernel 9.9.9 has no modules in the root (found: " + testKernel + ")"},
		{"bad kernel version", func(f *buildFixture, o *Options) { o.KernelVersion = "../x" }, "is not a directory name"},
		{"bad onfail", func(f *buildFixture, o *Options) { o.OnFail = "explode" }, `onfail "explode": want reboot, shell or halt`},
		{"shell without busybox", func(f *buildFixture, o *Options) { o.Shell = "" }, "onfail=shell needs a shell"},
		{"epoch before 1970", func(f *buildFixture, o *Options) { o.Epoch = time.Unix(-5, 0) }, "does not fit cpio's 32-bit timestamps"},
		{"xz module", func(f *buildFixture, o *Options) {
			modDir := filepath.Join(f.root, "usr/lib/modules", testKernel)
			writeFile(t, filepath.Join(modDir, "kernel/fs/erofs/erofs.ko.xz"), "xz", 0o644)
			writeFile(t, filepath.Join(modDir, "modules.dep"), "kernel/fs/erofs/erofs.ko.xz:\n", 0o644)
			o.Modules = []string{"erofs"}
		}, "compressed module kernel/fs/erofs/erofs.ko.xz: not supported yet"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			o := f.opts
			c.change(&f, &o)
			if o.InitBinary == dynamic {
				if !hasInterpreter(dynamic) {
					t.Skip(dynamic + " is not a dynamically linked ELF here")
				}
			}
			var buf bytes.Buffer
			_, err := Build(&buf, o)
			wantErr := strings.ReplaceAll(c.wantErr, "ROOT", f.root)
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("error = %v\nwant one containing %q", err, wantErr)
			}
		})
	}
}

func hasInterpreter(file string) bool {
	f, err := elf.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}
