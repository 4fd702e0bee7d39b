package runtime

import (
	"strings"
	"testing"
)

func TestValidateIDAndCgroupPath(t *testing.T) {
	for _, id := range []string{"a", "acme.web.0.g3", "x_y-z", strings.Repeat("a", 128)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "-a", ".a", "A", "a/b", "a b", "..", strings.Repeat("a", 129)} {
		if err := ValidateID(id); err == nil {
			t.Errorf("ValidateID(%q) accepted", id)
		}
	}
	for _, p := range []string{"berth", "berth/tenants/acme", "a.b/C_d"} {
		if !validCgroupPath(p) {
			t.Errorf("validCgroupPath(%q) = false", p)
		}
	}
	for _, p := range []string{"", "/berth", "berth/", "a//b", "a/../b", "..", "./a", "a b"} {
		if validCgroupPath(p) {
			t.Errorf("validCgroupPath(%q) = true", p)
		}
	}
}

func TestSpecDefaultsAndOCISpec(t *testing.T) {
	s := Spec{ID: "c1", Rootfs: "/r", Args: []string{"sh"}, CPUMillis: 250, MemoryBytes: 64 << 20, NetNSPath: "/run/netns/x"}.WithDefaults()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.PidsMax != DefaultPidsMax || s.Cwd != "/" || s.CgroupParent != DefaultCgroupParent || !strings.HasPrefix(s.Env[0], "PATH=") {
		t.Fatalf("defaults not applied: %+v", s)
	}
	oci := OCISpec(s)
	if got := *oci.Linux.Resources.CPU.Quota; got != 25000 {
		t.Errorf("cpu quota = %d, want 25000", got)
	}
	if got := *oci.Linux.Resources.Memory.Limit; got != 64<<20 {
		t.Errorf("memory limit = %d", got)
	}
	if oci.Linux.CgroupsPath != "/berth/c1" {
		t.Errorf("cgroups path = %q", oci.Linux.CgroupsPath)
	}
	joined := false
	for _, ns := range oci.Linux.Namespaces {
		if ns.Type == "network" && ns.Path == "/run/netns/x" {
			joined = true
		}
	}
	if !joined {
		t.Errorf("netns path not used: %+v", oci.Linux.Namespaces)
	}
}
