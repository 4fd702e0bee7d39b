package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/berth-os/berth/builder/vagrantbox"
)

func cmdBox(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("box", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "the box `file` to write (default: IMAGE with .box instead of .qcow2)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `Usage: berth-build box IMAGE.qcow2 [-o FILE.box]

Packs a built qcow2 image as a Vagrant box for the libvirt provider
(vagrant-libvirt): box.img, metadata.json and a Vagrantfile with UEFI
firmware, q35 and plain qemu when /dev/kvm is missing. Add it with
  vagrant box add --name berth FILE.box

Flags:`)
		fs.PrintDefaults()
	}
	image, err := parseWithOneArg(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-build box: %v\n", err)
		return 2
	}
	if *out == "" {
		*out = strings.TrimSuffix(image, ".qcow2") + ".box"
	}
	fi, err := os.Stat(image)
	if err != nil {
		fmt.Fprintf(stderr, "berth-build box: %v\n", err)
		return 1
	}
	// The image's own mtime: the same image gives the same box.
	if err := vagrantbox.Write(*out, image, fi.ModTime()); err != nil {
		fmt.Fprintf(stderr, "berth-build box: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s\n", *out)
	return 0
}
