package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/builder/build"
	"github.com/berth-os/berth/builder/rootfs"
	"github.com/berth-os/berth/builder/spec"
	"github.com/berth-os/berth/internal/cli"
	"github.com/berth-os/berth/updater/payload"
)

type buildOptions struct {
	out, cache, initBin, nodeConfig, key string
	noQcow2, box, verbose                bool
	trust                                []string
}

func buildCmd() *cobra.Command {
	var o buildOptions
	c := &cobra.Command{
		Use:   "build SPEC",
		Short: "Build the disk image, its manifest and the signed update payload from SPEC",
		Long: `Builds NAME-VERSION.raw, NAME-VERSION.qcow2, NAME-VERSION.json and, with --key,
the signed update payload NAME-VERSION.oci (an OCI layout) into the output
directory from SPEC (an image spec such as images/minimal.yaml). Nothing is
left in it when the build fails. Needs root.`,
		Args: exactlyOne("SPEC file"),
		RunE: func(c *cobra.Command, args []string) error {
			return exit(runBuild(o, args[0], c.OutOrStdout(), c.ErrOrStderr()))
		},
	}
	f := c.Flags()
	f.StringVarP(&o.out, "output", "o", "out", "output `directory` for the image files")
	f.StringVar(&o.cache, "cache", rootfs.DefaultCacheDir, "cache `directory` for base roots (kept between builds)")
	f.StringVar(&o.initBin, "init", defaultInit(), "the static initrd /init `program` (built by make build as bin/berth-init)")
	f.BoolVar(&o.noQcow2, "no-qcow2", false, "write only the raw image")
	f.BoolVar(&o.box, "box", false, "also write NAME-VERSION.box, a Vagrant box for vagrant-libvirt")
	f.StringVar(&o.nodeConfig, "config", "", "node configuration `file` (node.yaml) put on the ESP as /berth/node.yaml")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "debug logging")
	f.StringVar(&o.key, "key", "", "ed25519 private key `file` that signs the update payload (berth-build keygen); the image trusts its public half")
	f.StringArrayVar(&o.trust, "trust", nil, "another public key `file` the image trusts for updates (repeatable; for key rotation)")
	return c
}

func runBuild(o buildOptions, specPath string, stdout, stderr io.Writer) int {
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s, err := spec.Load(specPath)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build: %v\n", err)
		return 2
	}
	var nodeYAML []byte
	if o.nodeConfig != "" {
		var ok bool
		if nodeYAML, ok = loadNodeConfig(o.nodeConfig, false, stderr); !ok {
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := build.Run(ctx, s, build.Options{OutDir: o.out, CacheDir: o.cache, InitBinary: o.initBin, NoQcow2: o.noQcow2, Box: o.box,
		SigningKey: o.key, TrustKeys: o.trust, NodeConfig: nodeYAML, Log: log})
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

func keygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen NAME",
		Short: "Make an ed25519 key pair for signing update payloads",
		Long: `Writes NAME.key (ed25519 private key, mode 0600) and NAME.pub. Existing files
are never overwritten. Sign builds with --key NAME.key; images built so
trust NAME.pub.`,
		Args: exactlyOne("NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := payload.GenerateKey(name+".key", name+".pub"); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "wrote %s.key and %s.pub\n", name, name)
			return nil
		},
	}
}

func checkCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check SPEC",
		Short: "Validate a spec and print what it builds (no root needed)",
		Long:  "Validates SPEC and prints what it would build; no root needed.",
		Args:  exactlyOne("SPEC file"),
		RunE: func(c *cobra.Command, args []string) error {
			s, err := spec.Load(args[0])
			if err != nil {
				return cli.Exitf(cli.ExitUsage, "%v", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "%s %s: ok (base key %s)\n", s.Name, s.Version, s.BaseKey()[:16])
			return nil
		},
	}
}
