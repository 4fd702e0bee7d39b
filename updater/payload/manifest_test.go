package payload

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParseManifestValid(t *testing.T) {
	m := sampleManifest()
	m.VerityRoot = strings.Repeat("0123456789abcdef", 4)
	data, err := canonicalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("ParseManifest = %+v, want %+v", got, m)
	}
	// Optional fields may be left out; the rest is required.
	m.KernelVersion, m.VerityRoot, m.Cmdline, m.Epoch = "", "", []string{}, 0
	data, _ = canonicalJSON(m)
	if _, err := ParseManifest(data); err != nil {
		t.Fatalf("minimal manifest: %v", err)
	}
}

func TestParseManifestInvalid(t *testing.T) {
	tests := map[string]struct {
		edit func(*Manifest)
		want string
	}{
		"schema 0":           {func(m *Manifest) { m.Schema = 0 }, "schema"},
		"schema 2":           {func(m *Manifest) { m.Schema = 2 }, "schema"},
		"no os":              {func(m *Manifest) { m.OS = "" }, "os"},
		"os upper case":      {func(m *Manifest) { m.OS = "Berth" }, "os"},
		"os slash":           {func(m *Manifest) { m.OS = "a/b" }, "os"},
		"os dot first":       {func(m *Manifest) { m.OS = ".hidden" }, "os"},
		"os too long":        {func(m *Manifest) { m.OS = strings.Repeat("a", 65) }, "os"},
		"no version":         {func(m *Manifest) { m.Version = "" }, "version"},
		"version space":      {func(m *Manifest) { m.Version = "1 2" }, "version"},
		"version newline":    {func(m *Manifest) { m.Version = "1\n" }, "version"},
		"version dash first": {func(m *Manifest) { m.Version = "-1" }, "version"},
		"no arch":            {func(m *Manifest) { m.Arch = "" }, "arch"},
		"arch upper":         {func(m *Manifest) { m.Arch = "AMD64" }, "arch"},
		"kernel slash":       {func(m *Manifest) { m.KernelVersion = "../x" }, "kernel_version"},
		"negative epoch":     {func(m *Manifest) { m.Epoch = -1 }, "epoch"},
		"slot size 0":        {func(m *Manifest) { m.Slot.Size = 0 }, "slot size"},
		"kernel size < 0":    {func(m *Manifest) { m.Kernel.Size = -5 }, "kernel size"},
		"initrd sha short":   {func(m *Manifest) { m.Initrd.SHA256 = "abc" }, "initrd sha256"},
		"slot sha upper":     {func(m *Manifest) { m.Slot.SHA256 = strings.Repeat("A", 64) }, "slot sha256"},
		"kernel sha prefix":  {func(m *Manifest) { m.Kernel.SHA256 = "sha256:" + strings.Repeat("a", 57) }, "kernel sha256"},
		"fstype erofs":       {func(m *Manifest) { m.SlotFSType = "erofs" }, "slot_fstype"},
		"fstype empty":       {func(m *Manifest) { m.SlotFSType = "" }, "slot_fstype"},
		"cmdline root":       {func(m *Manifest) { m.Cmdline = []string{"berth.root=PARTUUID=x"} }, "berth.root"},
		"cmdline slot":       {func(m *Manifest) { m.Cmdline = []string{"quiet", "berth.slot=b"} }, "berth.slot"},
		"cmdline space":      {func(m *Manifest) { m.Cmdline = []string{"a b"} }, "cmdline"},
		"cmdline newline":    {func(m *Manifest) { m.Cmdline = []string{"a\ninitrd /evil"} }, "cmdline"},
		"cmdline empty":      {func(m *Manifest) { m.Cmdline = []string{""} }, "cmdline"},
		"cmdline too many":   {func(m *Manifest) { m.Cmdline = make([]string, maxCmdlineArgs+1) }, "cmdline"},
		"verity short":       {func(m *Manifest) { m.VerityRoot = "ab" }, "verity_root"},
	}
	for name, tc := range tests {
		m := sampleManifest()
		tc.edit(&m)
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error about %s", name, err, tc.want)
		}
		data, _ := json.Marshal(m)
		if _, err := ParseManifest(data); err == nil {
			t.Errorf("%s: ParseManifest succeeded", name)
		}
	}
}

func TestParseManifestStrictJSON(t *testing.T) {
	canon, _ := canonicalJSON(sampleManifest())
	s := string(canon)
	for name, data := range map[string]string{
		"empty":          "",
		"null":           "null",
		"array":          "[]",
		"unknown field":  strings.Replace(s, `"os":`, `"extra":true,"os":`, 1),
		"trailing data":  s + " {}",
		"trailing space": s + " ",
		"indented":       strings.Replace(s, `,"os"`, ",\n  \"os\"", 1),
		"key case":       strings.Replace(s, `"version"`, `"Version"`, 1),
		"duplicate key":  strings.Replace(s, `"version":"0.2.0"`, `"version":"0.2.0","version":"9.9.9"`, 1),
		"reordered":      strings.Replace(strings.Replace(s, `"os":"berth-minimal",`, "", 1), `"arch"`, `"os":"berth-minimal","arch"`, 1),
		"float schema":   strings.Replace(s, `"schema":1`, `"schema":1.0`, 1),
		"cmdline null":   strings.Replace(s, `"cmdline":["console=ttyS0,115200","quiet"]`, `"cmdline":null`, 1),
		"string size":    strings.Replace(s, `"size":4096`, `"size":"4096"`, 1),
	} {
		if data == s {
			t.Fatalf("%s: test did not change the manifest", name)
		}
		if m, err := ParseManifest([]byte(data)); err == nil {
			t.Errorf("%s: ParseManifest = %+v, want an error", name, m)
		} else if !strings.HasPrefix(err.Error(), "manifest:") {
			t.Errorf("%s: error %q does not say what failed", name, err)
		}
	}
}
