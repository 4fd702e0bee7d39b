package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/berth-os/berth/updater/layout"
)

// SlotFSType is the only slot filesystem the initrd mounts today.
const SlotFSType = "squashfs"

// Limits on manifest fields: generous for real values, small enough that
// nothing odd reaches file names, boot entries or logs.
const (
	maxNameLen     = 64
	maxVersionLen  = 64
	maxKernelLen   = 128
	maxCmdlineArgs = 128
	maxCmdlineArg  = 1024
)

// ParseManifest parses and validates a manifest: strict JSON (unknown
// fields, trailing data and any spelling other than the canonical one that
// Sign writes are refused, so every reader sees the same values the signer
// saw), then Validate.
func ParseManifest(data []byte) (Manifest, error) {
	var m Manifest
	if err := decodeStrict(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	canon, err := canonicalJSON(m)
	if err != nil {
		return Manifest{}, err
	}
	if !bytes.Equal(canon, data) {
		return Manifest{}, errors.New("manifest: not in canonical form (field names, order and spacing must be exactly as Sign writes them)")
	}
	return m, nil
}

// canonicalJSON is the one byte form of a manifest that is signed.
func canonicalJSON(m Manifest) ([]byte, error) {
	if m.Cmdline == nil {
		// "null" and "[]" would be two spellings of the same manifest.
		m.Cmdline = []string{}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("manifest: encode: %w", err)
	}
	return data, nil
}

// decodeStrict decodes exactly one JSON value, refusing unknown fields.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid JSON: unexpected data after the document")
	}
	return nil
}

// Validate checks every field of a manifest; Sign and ParseManifest call it.
func (m Manifest) Validate() error {
	if m.Schema != Schema {
		return fmt.Errorf("manifest: schema %d is not supported (want %d)", m.Schema, Schema)
	}
	if err := checkName("os", m.OS, maxNameLen, "a-z 0-9 . _ -", isLowerNameChar); err != nil {
		return err
	}
	if err := checkName("version", m.Version, maxVersionLen, "A-Z a-z 0-9 . _ + ~ -", isVersionChar); err != nil {
		return err
	}
	if err := checkName("arch", m.Arch, 16, "a-z 0-9 _", isArchChar); err != nil {
		return err
	}
	if m.KernelVersion != "" {
		if err := checkName("kernel_version", m.KernelVersion, maxKernelLen, "A-Z a-z 0-9 . _ + ~ -", isVersionChar); err != nil {
			return err
		}
	}
	if m.Epoch < 0 {
		return fmt.Errorf("manifest: epoch %d is negative", m.Epoch)
	}
	for _, b := range []struct {
		name string
		blob Blob
	}{{"slot", m.Slot}, {"kernel", m.Kernel}, {"initrd", m.Initrd}} {
		if b.blob.Size <= 0 {
			return fmt.Errorf("manifest: %s size %d must be positive", b.name, b.blob.Size)
		}
		if !isSHA256Hex(b.blob.SHA256) {
			return fmt.Errorf("manifest: %s sha256 %q is not 64 lowercase hex digits", b.name, truncate(b.blob.SHA256))
		}
	}
	if m.SlotFSType != SlotFSType {
		return fmt.Errorf("manifest: slot_fstype %q is not supported (want %s)", truncate(m.SlotFSType), SlotFSType)
	}
	if err := checkCmdline(m.Cmdline); err != nil {
		return err
	}
	if m.VerityRoot != "" && !isSHA256Hex(m.VerityRoot) {
		return fmt.Errorf("manifest: verity_root %q is not 64 lowercase hex digits", truncate(m.VerityRoot))
	}
	return nil
}

func checkName(field, v string, maxLen int, allowed string, ok func(byte) bool) error {
	if v == "" {
		return fmt.Errorf("manifest: %s is empty", field)
	}
	if len(v) > maxLen {
		return fmt.Errorf("manifest: %s is longer than %d bytes", field, maxLen)
	}
	if !isAlnum(v[0]) {
		return fmt.Errorf("manifest: %s %q must start with a letter or digit", field, truncate(v))
	}
	for i := 0; i < len(v); i++ {
		if !ok(v[i]) {
			return fmt.Errorf("manifest: %s %q has a character outside %s", field, truncate(v), allowed)
		}
	}
	return nil
}

// checkCmdline refuses arguments the updater adds itself (the root and slot
// of the partition it installs to) and anything that could break the one
// "options" line of a boot entry.
func checkCmdline(args []string) error {
	if len(args) > maxCmdlineArgs {
		return fmt.Errorf("manifest: cmdline has %d arguments, more than %d", len(args), maxCmdlineArgs)
	}
	for _, a := range args {
		if a == "" || len(a) > maxCmdlineArg {
			return fmt.Errorf("manifest: cmdline argument %q is empty or too long", truncate(a))
		}
		for i := 0; i < len(a); i++ {
			if a[i] <= ' ' || a[i] == 0x7f {
				return fmt.Errorf("manifest: cmdline argument %q contains a space or control character", truncate(a))
			}
		}
		key, _, _ := strings.Cut(a, "=")
		if key == layout.CmdlineRoot || key == layout.CmdlineSlot {
			return fmt.Errorf("manifest: cmdline must not set %s: the updater sets it for the slot it installs to", key)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isLowerNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

func isVersionChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("._+~-", c) >= 0
}

func isArchChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// truncate keeps hostile values from flooding error messages.
func truncate(s string) string {
	const n = 80
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
