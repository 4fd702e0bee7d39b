// Package build runs the whole image build: base root, customisation,
// initrd, slot filesystem, ESP, disk image and qcow2. Everything is made in
// a work directory inside the output directory and renamed into place only
// when complete, so an interrupted or failed build leaves nothing behind.
package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-os/berth/builder/disk"
	"github.com/berth-os/berth/builder/esp"
	"github.com/berth-os/berth/builder/initrd"
	"github.com/berth-os/berth/builder/progress"
	"github.com/berth-os/berth/builder/rootfs"
	"github.com/berth-os/berth/builder/slotfs"
	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/builder/vagrantbox"
	"github.com/berth-os/berth/updater/layout"
	"github.com/berth-os/berth/updater/payload"
)

// Options of one build.
type Options struct {
	OutDir     string
	CacheDir   string
	InitBinary string // the static /init program of the initrd
	NoQcow2    bool
	// Box also writes NAME-VERSION.box, a Vagrant box (libvirt) of the qcow2.
	Box bool
	// SigningKey is the ed25519 private key (PEM) that signs the update
	// payload; without it no payload is written. Its public half is
	// trusted by the image, as are the TrustKeys (.pub files).
	SigningKey string
	TrustKeys  []string
	// NodeConfig is a node.yaml put on the ESP (berth/node.yaml); nil
	// for none.
	NodeConfig []byte
	Log        *slog.Logger
}

// Result names the files a build produced and what it measured.
type Result struct {
	Raw, Qcow2, ManifestPath string
	Box                      string // the Vagrant box, "" without Options.Box
	Payload                  string // OCI layout directory of the update payload, "" when unsigned
	Manifest                 Manifest
}

// Manifest describes a built image; it is written beside the image.
type Manifest struct {
	Name          string            `json:"name"`
	Version       string            `json:"version"`
	Kernel        string            `json:"kernel"`
	BaseKey       string            `json:"base_key"`
	SlotBytes     int64             `json:"slot_bytes"`
	SlotPartBytes int64             `json:"slot_partition_bytes"`
	InitrdBytes   int64             `json:"initrd_bytes"`
	DiskBytes     int64             `json:"disk_bytes"`
	SHA256        map[string]string `json:"sha256"`
	// PayloadDigest is the OCI manifest digest of the update payload.
	PayloadDigest string `json:"payload_digest,omitempty"`
}

// Preflight checks what the build needs before any work starts, so that
// a build that cannot finish fails in its first second.
func Preflight(s *spec.Spec, o Options, cachedBase bool) error {
	if os.Geteuid() != 0 {
		return errors.New("building an image needs root (it sets file owners, setuid bits and device nodes in the OS tree): run it with sudo")
	}
	if o.Box && o.NoQcow2 {
		return errors.New("a Vagrant box is made from the qcow2: drop --no-qcow2 to build one")
	}
	tools := map[string]string{"mksquashfs": "squashfs-tools"}
	if !o.NoQcow2 {
		tools["qemu-img"] = "qemu-utils"
	}
	if s.Base.Debian != nil && !cachedBase {
		tools["mmdebstrap"] = "mmdebstrap"
	}
	if len(s.Units.Enable)+len(s.Units.Disable)+len(s.Units.Mask) > 0 {
		tools["systemctl"] = "systemd"
	}
	for _, t := range sortedKeys(tools) {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found: install the %s package (make deps)", t, tools[t])
		}
	}
	// The filesystem tools of the disk image.
	if err := disk.CheckTools(); err != nil {
		return err
	}
	if o.SigningKey != "" {
		if _, err := payload.LoadPrivateKey(o.SigningKey); err != nil {
			return fmt.Errorf("signing key: %w; make one with berth-build keygen", err)
		}
	}
	for _, k := range o.TrustKeys {
		if _, err := payload.LoadPublicKey(k); err != nil {
			return fmt.Errorf("trusted key: %w", err)
		}
	}
	if fi, err := os.Stat(o.InitBinary); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("initrd program %s not found: run make build, or pass --init PATH", o.InitBinary)
	}
	return nil
}

// Run builds the image described by s.
func Run(ctx context.Context, s *spec.Spec, o Options) (*Result, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	if o.CacheDir == "" {
		o.CacheDir = rootfs.DefaultCacheDir
	}
	_, statErr := os.Stat(filepath.Join(o.CacheDir, "base", s.BaseKey()+".tar"))
	if err := Preflight(s, o, statErr == nil); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory %s: %w; choose another with -o", o.OutDir, err)
	}
	removeStaleWork(o.OutDir, log)
	work, err := os.MkdirTemp(o.OutDir, fmt.Sprintf("%s%d-", workPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("output directory %s is not writable: %w; choose another with -o", o.OutDir, err)
	}
	defer os.RemoveAll(work)

	prog := progress.New(log)
	defer prog.Done()
	epoch := time.Unix(s.Epoch, 0).UTC()
	m := Manifest{Name: s.Name, Version: s.Version, BaseKey: s.BaseKey(), SHA256: map[string]string{}}

	// 1. Base root.
	prog.Step("base root", "spec", s.Path)
	baseTar, cached, err := rootfs.BaseTar(ctx, s, o.CacheDir, log)
	if err != nil {
		return nil, err
	}
	if rootfs.IsTemporary(baseTar) {
		defer os.Remove(baseTar)
	}
	log.Info("base root ready", "tar", baseTar, "cached", cached)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}
	prog.Step("unpacking base root")
	if err := rootfs.ApplyLayerFile(root, baseTar); err != nil {
		return nil, fmt.Errorf("unpack base root: %w", err)
	}
	for i, l := range s.Layers {
		prog.Step(fmt.Sprintf("applying layer %d", i+1))
		if l.Tar != "" {
			err = rootfs.ApplyLayerFile(root, l.Tar)
		} else {
			err = rootfs.ApplyImageLayers(ctx, root, l.OCI, s.Dir)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: layers[%d]: %w", s.Path, i, err)
		}
	}

	// 2. Customise.
	prog.Step("customising the OS tree")
	if err := rootfs.AddFiles(root, s); err != nil {
		return nil, err
	}
	if err := rootfs.ApplyUnits(ctx, root, s); err != nil {
		return nil, err
	}
	if err := rootfs.WriteOSRelease(root, s); err != nil {
		return nil, err
	}
	if err := rootfs.WritePackageList(root); err != nil {
		return nil, fmt.Errorf("package list: %w", err)
	}
	signingKey, err := installKeys(root, o)
	if err != nil {
		return nil, err
	}
	kernel, err := rootfs.FindKernel(root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Path, err)
	}
	m.Kernel = kernel.Version
	kernelImage, err := os.ReadFile(kernel.Image)
	if err != nil {
		return nil, err
	}
	bootLoader, err := rootfs.ReadBootLoader(root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Path, err)
	}
	var shell string
	if s.Initrd.OnFail == "shell" {
		shell = filepath.Join(root, "bin/busybox")
		if _, err := os.Stat(shell); err != nil {
			return nil, fmt.Errorf("%s: initrd.onfail is shell but the root has no /bin/busybox: add busybox-static to base.debian.packages", s.Path)
		}
	}
	freed, err := rootfs.Trim(root, s.Trim.Paths, s.Trim.KeepLocales)
	if err != nil {
		return nil, err
	}
	log.Info("trimmed the OS tree", "freed_mib", freed>>20)
	if err := rootfs.PrepareReadOnly(root); err != nil {
		return nil, fmt.Errorf("prepare read-only root: %w", err)
	}

	// 3. initrd, from the root's own modules.
	prog.Step("building the initrd")
	var initrdBuf bytes.Buffer
	if _, err := initrd.Build(&initrdBuf, initrd.Options{
		InitBinary: o.InitBinary, Root: root, KernelVersion: kernel.Version,
		Modules: s.Initrd.Modules, OnFail: s.Initrd.OnFail, Shell: shell, Epoch: epoch,
	}); err != nil {
		return nil, fmt.Errorf("%s: initrd: %w", s.Path, err)
	}
	m.InitrdBytes = int64(initrdBuf.Len())

	// 4. Slot filesystem.
	prog.Step("building the slot filesystem", "compression", s.Slot.Compression)
	slotImg := filepath.Join(work, "slot.squashfs")
	if err := slotfs.Build(ctx, root, slotImg, slotfs.Options{
		Compression: s.Slot.Compression, Level: s.Slot.Level, Epoch: s.Epoch, Progress: prog.Percent,
		MaxBytes: s.Partitions.Slot,
	}); err != nil {
		var tl *slotfs.TooLargeError
		if errors.As(err, &tl) {
			return nil, fmt.Errorf("%s: partitions.slot: slot needs %s (the build stopped once the slot was full), spec gives %d MiB; raise partitions.slot or trim the image",
				s.Path, tl.Need(), s.Partitions.Slot>>20)
		}
		return nil, err
	}
	fi, err := os.Stat(slotImg)
	if err != nil {
		return nil, err
	}
	m.SlotBytes, m.SlotPartBytes = fi.Size(), s.Partitions.Slot
	if fi.Size() > s.Partitions.Slot {
		return nil, fmt.Errorf("%s: partitions.slot: slot needs %d MiB, spec gives %d MiB; raise partitions.slot or trim the image",
			s.Path, (fi.Size()+(1<<20)-1)>>20, s.Partitions.Slot>>20)
	}
	// The OS tree is no longer needed; free its space before the disk is written.
	if err := os.RemoveAll(root); err != nil {
		return nil, err
	}

	// 5. ESP and disk.
	prog.Step("writing the disk image")
	guid := func(what string) string { return layout.GUID(s.Name, s.Version, what) }
	partGUIDs := [4]string{guid("esp"), guid("slot-a"), guid("slot-b"), guid("state")}
	espFiles, err := esp.Files(esp.Input{
		OSName: s.Name, Version: s.Version, BootLoader: bootLoader,
		Kernel: kernelImage, Initrd: initrdBuf.Bytes(), SlotPartUUID: partGUIDs[1],
		Cmdline: s.Kernel.Cmdline, Timeout: s.Boot.Timeout, Tries: s.Boot.Tries,
		NodeConfig: o.NodeConfig,
	})
	if err != nil {
		return nil, err
	}
	var files []disk.File
	for _, f := range espFiles {
		files = append(files, disk.File{Path: f.Path, Data: f.Data})
	}
	ds := disk.Spec{
		DiskGUID: guid("disk"), ESPSize: s.Partitions.ESP, SlotSize: s.Partitions.Slot, StateSize: s.Partitions.State,
		ESPFiles: files, SlotA: slotImg, PartGUIDs: partGUIDs, Epoch: epoch, StateUUID: guid("state-fs"),
	}
	base := fmt.Sprintf("%s-%s", s.Name, s.Version)
	rawTmp := filepath.Join(work, base+".raw")
	if err := disk.Write(rawTmp, ds, prog.Bytes); err != nil {
		return nil, fmt.Errorf("write disk image: %w", err)
	}
	m.DiskBytes = disk.Size(ds)

	outputs := []string{rawTmp}
	if signingKey != nil {
		prog.Step("writing the signed update payload")
		dir, digest, err := writePayload(work, base, s, kernel.Version, slotImg, kernelImage, initrdBuf.Bytes(), signingKey)
		if err != nil {
			return nil, fmt.Errorf("update payload: %w", err)
		}
		m.PayloadDigest = digest
		outputs = append(outputs, dir)
	} else {
		log.Warn("no --key given: no signed update payload is written; make a key with berth-build keygen")
	}
	if !o.NoQcow2 {
		prog.Step("converting to qcow2")
		q := filepath.Join(work, base+".qcow2")
		if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawTmp, q).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("qemu-img convert: %s", strings.TrimSpace(string(out)))
		}
		outputs = append(outputs, q)
		if o.Box {
			prog.Step("packing the Vagrant box")
			box := filepath.Join(work, base+".box")
			if err := vagrantbox.Write(box, q, epoch); err != nil {
				return nil, err
			}
			outputs = append(outputs, box)
		}
	}
	prog.Done()
	for _, p := range outputs {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			continue
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return nil, err
		}
		m.SHA256[filepath.Base(p)] = sum
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	manifest := filepath.Join(work, base+".json")
	if err := os.WriteFile(manifest, append(mj, '\n'), 0o644); err != nil {
		return nil, err
	}
	outputs = append(outputs, manifest)

	// 6. Publish: fsync each file, rename, fsync the directory.
	res := &Result{Manifest: m}
	for _, p := range outputs {
		if err := syncTree(p); err != nil {
			return nil, err
		}
		dst := filepath.Join(o.OutDir, filepath.Base(p))
		// A payload directory of an earlier build of the same version is
		// replaced as a whole.
		if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
			if err := os.RemoveAll(dst); err != nil {
				return nil, fmt.Errorf("replace %s: %w", dst, err)
			}
		}
		if err := os.Rename(p, dst); err != nil {
			return nil, fmt.Errorf("publish %s: %w", dst, err)
		}
		switch filepath.Ext(dst) {
		case ".raw":
			res.Raw = dst
		case ".qcow2":
			res.Qcow2 = dst
		case ".json":
			res.ManifestPath = dst
		case ".oci":
			res.Payload = dst
		case ".box":
			res.Box = dst
		}
	}
	if err := syncDir(o.OutDir); err != nil {
		return nil, err
	}
	return res, nil
}

const workPrefix = ".berth-build-"

// removeStaleWork deletes work directories of builds that were killed
// (SIGKILL, power loss) and could not clean up after themselves.
func removeStaleWork(outDir string, log *slog.Logger) {
	ents, _ := os.ReadDir(outDir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), workPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue // another build is running in this directory
		}
		log.Info("removing the work directory of an interrupted build", "dir", e.Name())
		os.RemoveAll(filepath.Join(outDir, e.Name()))
	}
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// syncTree fsyncs a file, or a directory with everything in it.
func syncTree(p string) error {
	return filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return syncDir(q)
		}
		return syncFile(q)
	})
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(p string) error {
	d, err := os.Open(p)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
