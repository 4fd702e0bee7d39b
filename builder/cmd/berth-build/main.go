// Command berth-build turns an image spec into a bootable berth disk image.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berth-os/berth/builder/build"
	"github.com/berth-os/berth/builder/qemu"
	"github.com/berth-os/berth/builder/rootfs"
	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/updater/payload"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `berth-build: build berth OS images

Usage:
  berth-build build SPEC [-o DIR] [--key FILE] [--trust FILE.pub]... [--cache DIR] [--init PATH] [--no-qcow2] [--box] [--config NODE.yaml]
  berth-build keygen NAME       write NAME.key (private, 0600) and NAME.pub
  berth-build check SPEC        validate a spec and print what it builds
  berth-build run IMAGE [--fresh] [--net]
  berth-build box IMAGE.qcow2 [-o FILE.box]
  berth-build install --target DEV IMAGE.raw [--force] [--yes]
  berth-build cluster up|down|status|ctl [--name NAME] [--image IMAGE] [-n N]
  berth-build seed NODE.yaml [-o seed.img]
  berth-build version

Commands:
  build     build the disk image (raw and qcow2), its manifest and, with --key,
            the signed update payload (NAME-VERSION.oci, an OCI layout) from
            SPEC (an image spec such as images/minimal.yaml). Needs root.
  keygen    make an ed25519 key pair for signing update payloads.
  check     parse and validate SPEC only; no root needed.
  run       boot IMAGE (a built .raw or .qcow2) in qemu with UEFI firmware and
            the serial console on this terminal (Ctrl-A X quits). Changes go
            to a copy-on-write overlay beside the image, kept between runs.
  box       pack a built qcow2 as a Vagrant box for vagrant-libvirt.
  install   write a raw image to a whole disk (bare metal), verified by
            reading it back; refuses used disks and, unless --force, disks
            holding data.
  seed      write a seed disk (FAT, label BERTH-SEED) holding NODE.yaml: a
            node's configuration, applied at every boot.
  cluster   boot N nodes of an image as a cluster on a private network
            (make cluster); see berth-build cluster --help.

Run "berth-build COMMAND --help" for a command's flags.
Exit status: 0 success, 1 the build failed, 2 bad usage or bad spec.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, "berth-build", version)
		return 0
	case "build":
		return cmdBuild(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "keygen":
		return cmdKeygen(args[1:], stdout, stderr)
	case "box":
		return cmdBox(args[1:], stdout, stderr)
	case "install":
		return cmdInstall(args[1:], stdout, stderr)
	case "cluster":
		return cmdCluster(args[1:], stdout, stderr)
	case "seed":
		return cmdSeed(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "berth-build: unknown command %q; run berth-build --help\n", args[0])
	return 2
}

func defaultInit() string {
	exe, err := os.Executable()
	if err != nil {
		return "berth-init"
	}
	return filepath.Join(filepath.Dir(exe), "berth-init")
}

func cmdBuild(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "out", "output `directory` for the image files")
	cache := fs.String("cache", rootfs.DefaultCacheDir, "cache `directory` for base roots (kept between builds)")
	initBin := fs.String("init", defaultInit(), "the static initrd /init `program` (built by make build as bin/berth-init)")
	noQcow2 := fs.Bool("no-qcow2", false, "write only the raw image")
	box := fs.Bool("box", false, "also write NAME-VERSION.box, a Vagrant box for vagrant-libvirt")
	nodeConfig := fs.String("config", "", "node configuration `file` (node.yaml) put on the ESP as /berth/node.yaml")
	verbose := fs.Bool("v", false, "debug logging")
	key := fs.String("key", "", "ed25519 private key `file` that signs the update payload (berth-build keygen); the image trusts its public half")
	var trust stringList
	fs.Var(&trust, "trust", "another public key `file` the image trusts for updates (repeatable; for key rotation)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: berth-build build SPEC [flags]\n\nBuilds NAME-VERSION.raw, NAME-VERSION.qcow2, NAME-VERSION.json and, with --key,\nthe signed update payload NAME-VERSION.oci into the output directory.\nNothing is left in it when the build fails.\n\nFlags:")
		fs.PrintDefaults()
	}
	specPath, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build build: %v\n", err)
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s, err := spec.Load(specPath)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 2
	}
	var nodeYAML []byte
	if *nodeConfig != "" {
		var ok bool
		if nodeYAML, ok = loadNodeConfig(*nodeConfig, false, stderr); !ok {
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := build.Run(ctx, s, build.Options{OutDir: *out, CacheDir: *cache, InitBinary: *initBin, NoQcow2: *noQcow2, Box: *box,
		SigningKey: *key, TrustKeys: trust, NodeConfig: nodeYAML, Log: log})
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "berth-build: interrupted; nothing was written")
			return 1
		}
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 1
	}
	m := res.Manifest
	fmt.Fprintf(stdout, "built %s %s (kernel %s)\n", m.Name, m.Version, m.Kernel)
	fmt.Fprintf(stdout, "  slot filesystem %.1f MiB of %d MiB, initrd %.1f MiB\n", float64(m.SlotBytes)/(1<<20), m.SlotPartBytes>>20, float64(m.InitrdBytes)/(1<<20))
	fmt.Fprintf(stdout, "  %s\n", res.Raw)
	if res.Qcow2 != "" {
		fmt.Fprintf(stdout, "  %s\n", res.Qcow2)
	}
	if res.Box != "" {
		fmt.Fprintf(stdout, "  %s (Vagrant box, libvirt)\n", res.Box)
	}
	fmt.Fprintf(stdout, "  %s\n", res.ManifestPath)
	if res.Payload != "" {
		fmt.Fprintf(stdout, "  %s (update payload, %s)\n", res.Payload, m.PayloadDigest)
	}
	return 0
}

type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func cmdKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: berth-build keygen NAME\n\nWrites NAME.key (ed25519 private key, mode 0600) and NAME.pub. Existing files are never overwritten.\nSign builds with --key NAME.key; images built so trust NAME.pub.")
	}
	name, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build keygen: %v\n", err)
		return 2
	}
	if err := payload.GenerateKey(name+".key", name+".pub"); err != nil {
		fmt.Fprintf(stderr, "berth-build keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s.key and %s.pub\n", name, name)
	return 0
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: berth-build check SPEC\n\nValidates SPEC and prints what it would build.")
	}
	specPath, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build check: %v\n", err)
		return 2
	}
	s, err := spec.Load(specPath)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 2
	}
	fmt.Fprintf(stdout, "%s %s: ok (base key %s)\n", s.Name, s.Version, s.BaseKey()[:16])
	return 0
}

// parseWithOneArg accepts flags before or after the single positional SPEC.
func parseWithOneArg(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("want exactly one SPEC file, got %d; see --help", len(pos))
	}
	return pos[0], nil
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fresh := fs.Bool("fresh", false, "discard the overlay: boot as on first power-on")
	mem := fs.Int("m", 1024, "guest memory in `MiB`")
	net := fs.Bool("net", false, "attach a NIC on qemu's user-mode network")
	accelFlag := fs.String("accel", "", "qemu `accelerator`: kvm, tcg or auto (default auto or $"+qemu.AccelEnv+": KVM when a guest really runs under it)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: berth-build run IMAGE [flags]\n\nBoots IMAGE under qemu+OVMF with the serial console here (Ctrl-A X quits).\n\nFlags:")
		fs.PrintDefaults()
	}
	image, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build run: %v\n", err)
		return 2
	}
	accel, err := qemu.ParseAccel(*accelFlag)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build run: --accel: %v\n", err)
		return 2
	}
	stateDir := image + ".run"
	if *fresh {
		os.RemoveAll(stateDir)
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		fmt.Fprintf(stderr, "berth-build run: %v\n", err)
		return 1
	}
	overlay := filepath.Join(stateDir, "disk.qcow2")
	if _, err := os.Stat(overlay); err != nil {
		if err := qemu.Overlay(image, overlay, 0); err != nil {
			fmt.Fprintf(stderr, "berth-build run: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "booting %s (overlay %s; --fresh to start over; Ctrl-A X quits)\n", image, overlay)
	vm, err := qemu.Start(context.Background(), qemu.Config{Disk: overlay, MemoryMiB: *mem, StateDir: stateDir, Interactive: true, UserNet: *net, Accel: accel})
	if err != nil {
		fmt.Fprintf(stderr, "berth-build run: %v\n", err)
		return 1
	}
	if err := vm.Wait(365 * 24 * time.Hour); err != nil {
		fmt.Fprintf(stderr, "berth-build run: qemu: %v\n", err)
		return 1
	}
	return 0
}
