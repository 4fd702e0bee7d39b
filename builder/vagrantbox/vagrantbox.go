// Package vagrantbox packs a built qcow2 image as a Vagrant box for the
// libvirt provider (vagrant-libvirt): a gzip'd tar of box.img (the qcow2),
// metadata.json and a Vagrantfile with the defaults a berth node needs
// (UEFI firmware, q35, virtio, software emulation when there is no KVM).
package vagrantbox

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Vagrantfile is embedded in every box: vagrant merges it below the
// project's own Vagrantfile, so projects can override each setting.
//
//go:embed box.Vagrantfile
var Vagrantfile []byte

// Metadata is the box's metadata.json (vagrant-libvirt's v1 format).
type Metadata struct {
	Provider    string `json:"provider"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"` // GB, rounded up
}

// qcow2Magic starts every qcow2 file ("QFI\xfb").
const qcow2Magic = 0x514649fb

// VirtualSize reads a qcow2 header and returns the disk size it describes.
func VirtualSize(r io.ReaderAt) (int64, error) {
	var hdr [32]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return 0, fmt.Errorf("read qcow2 header: %w", err)
	}
	if binary.BigEndian.Uint32(hdr[0:4]) != qcow2Magic {
		return 0, errors.New("not a qcow2 image (no QFI\\xfb magic)")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v < 2 || v > 3 {
		return 0, fmt.Errorf("unsupported qcow2 version %d", v)
	}
	return int64(binary.BigEndian.Uint64(hdr[24:32])), nil
}

// Write packs the qcow2 image at qcow2Path into the box boxPath. Entries
// carry mtime epoch (reproducible boxes). The box appears only when
// complete.
func Write(boxPath, qcow2Path string, epoch time.Time) (err error) {
	img, err := os.Open(qcow2Path)
	if err != nil {
		return fmt.Errorf("box: %w", err)
	}
	defer img.Close()
	size, err := VirtualSize(img)
	if err != nil {
		return fmt.Errorf("box: %s: %w", qcow2Path, err)
	}
	fi, err := img.Stat()
	if err != nil {
		return fmt.Errorf("box: %w", err)
	}
	meta, err := json.Marshal(Metadata{Provider: "libvirt", Format: "qcow2", VirtualSize: (size + 1e9 - 1) / 1e9})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(boxPath), ".box-*")
	if err != nil {
		return fmt.Errorf("box: %w", err)
	}
	defer func() {
		tmp.Close()
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	// BestSpeed: most of the image is the compressed squashfs slot, so
	// harder compression buys little and costs seconds.
	gz, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	gz.ModTime = epoch
	tw := tar.NewWriter(gz)
	add := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("box: %s: %w", name, err)
		}
		return nil
	}
	// Small files first: tools that list a box stop reading early.
	if err := add("metadata.json", int64(len(meta)+1), io.MultiReader(bytes.NewReader(meta), bytes.NewReader([]byte("\n")))); err != nil {
		return err
	}
	if err := add("Vagrantfile", int64(len(Vagrantfile)), bytes.NewReader(Vagrantfile)); err != nil {
		return err
	}
	if err := add("box.img", fi.Size(), io.NewSectionReader(img, 0, fi.Size())); err != nil {
		return err
	}
	for _, c := range []io.Closer{tw, gz} {
		if err := c.Close(); err != nil {
			return fmt.Errorf("box: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("box: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("box: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("box: %w", err)
	}
	if err := os.Rename(tmp.Name(), boxPath); err != nil {
		return fmt.Errorf("box: %w", err)
	}
	return nil
}
