// Package seed writes a node's seed disk: a small FAT image labelled
// BERTH-SEED holding /node.yaml, which berth-node-config reads at boot
// when it is attached to the machine (a second virtual disk, a USB stick).
package seed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Label is the filesystem label berth-node-config looks for.
const Label = "BERTH-SEED"

// FileName is the configuration's path in the seed filesystem.
const FileName = "node.yaml"

// MaxBytes is the largest node.yaml accepted, as berth-node-config reads
// at most this much.
const MaxBytes = 1 << 20

// fileTime is node.yaml's time stamp in every seed (the images' epoch).
var fileTime = time.Unix(1700000000, 0)

// Write makes a seed image at path holding nodeYAML as /node.yaml. The
// image is complete when path appears: it is built beside it and renamed.
func Write(path string, nodeYAML []byte) error {
	return WriteWithLabel(path, Label, nodeYAML)
}

// WriteWithLabel is Write with another filesystem label (tests use unique
// labels so that parallel runs do not find each other's seeds).
func WriteWithLabel(path, label string, nodeYAML []byte) error {
	if len(nodeYAML) > MaxBytes {
		return fmt.Errorf("seed: node.yaml is %d bytes, at most %d fit", len(nodeYAML), MaxBytes)
	}
	if label == "" || len(label) > 11 || strings.ToUpper(label) != label || strings.ContainsAny(label, " \"*+,./:;<=>?[\\]|") {
		return fmt.Errorf("seed: label %q must be 1-11 upper-case characters without spaces or punctuation other than - and _", label)
	}
	for _, tool := range []struct{ name, pkg string }{{"mkfs.vfat", "dosfstools"}, {"mcopy", "mtools"}} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("seed: %s not found: install the %s package", tool.name, tool.pkg)
		}
	}
	dir := filepath.Dir(path)
	work, err := os.MkdirTemp(dir, ".berth-seed-")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer os.RemoveAll(work)

	src := filepath.Join(work, FileName)
	if err := os.WriteFile(src, nodeYAML, 0o600); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	// A fixed file time (with mkfs --invariant) makes equal inputs give
	// equal images.
	if err := os.Chtimes(src, fileTime, fileTime); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	img := filepath.Join(work, "seed.img")
	// 1 MiB of FAT12 holds the file several times over; a large file gets
	// room for itself plus the filesystem's own sectors.
	kib := 1024 + 2*(len(nodeYAML)+1023)/1024
	if err := run("mkfs.vfat", "-C", "-n", label, "--mbr=n", "--invariant", img, fmt.Sprint(kib)); err != nil {
		return err
	}
	if err := run("mcopy", "-i", img, "-m", src, "::/"+FileName); err != nil {
		return err
	}
	// The agent's join token may be in it.
	if err := os.Chmod(img, 0o600); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := syncFile(img); err != nil {
		return err
	}
	if err := os.Rename(img, path); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	// mtools refuses images whose size is not a whole number of its
	// assumed tracks unless told not to check.
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("seed: %s: %v: %s", name, err, strings.Join(strings.Fields(string(out)), " "))
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seed: sync: %w", err)
	}
	return nil
}
