package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-os/berth/builder/vagrantbox"
)

func boxCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "box IMAGE.qcow2",
		Short: "Pack a built qcow2 as a Vagrant box for vagrant-libvirt",
		Long: `Packs a built qcow2 image as a Vagrant box for the libvirt provider
(vagrant-libvirt): box.img, metadata.json and a Vagrantfile with UEFI
firmware, q35 and plain qemu when /dev/kvm is missing. Add it with
  vagrant box add --name berth FILE.box`,
		Args: exactlyOne("IMAGE.qcow2"),
		RunE: func(c *cobra.Command, args []string) error {
			image := args[0]
			if out == "" {
				out = strings.TrimSuffix(image, ".qcow2") + ".box"
			}
			fi, err := os.Stat(image)
			if err != nil {
				return fmt.Errorf("box: %w", err)
			}
			// The image's own mtime: the same image gives the same box.
			if err := vagrantbox.Write(out, image, fi.ModTime()); err != nil {
				return fmt.Errorf("box: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "wrote %s\n", out)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "the box `file` to write (default: IMAGE with .box instead of .qcow2)")
	return c
}
