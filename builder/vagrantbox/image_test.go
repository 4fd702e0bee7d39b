package vagrantbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-os/berth/builder/spec"
)

// The spec format has no include, so images/vagrant.yaml repeats
// images/minimal.yaml: this test keeps the two in step and checks what the
// Vagrant image adds.
func TestVagrantImageSpecFollowsMinimal(t *testing.T) {
	minimal, err := spec.Load("../../images/minimal.yaml")
	if err != nil {
		t.Fatalf("minimal.yaml: %v", err)
	}
	vagrant, err := spec.Load("../../images/vagrant.yaml")
	if err != nil {
		t.Fatalf("vagrant.yaml: %v", err)
	}
	if vagrant.Name != "berth-vagrant" || vagrant.Version != minimal.Version || vagrant.Epoch != minimal.Epoch {
		t.Errorf("vagrant.yaml is %s %s epoch %d; want berth-vagrant %s epoch %d", vagrant.Name, vagrant.Version, vagrant.Epoch, minimal.Version, minimal.Epoch)
	}
	mp, vp := minimal.Base.Debian.Packages, vagrant.Base.Debian.Packages
	for _, p := range append(slices.Clone(mp), "sudo", "openssh-server") {
		if !slices.Contains(vp, p) {
			t.Errorf("vagrant.yaml lacks package %s", p)
		}
	}
	vfiles := map[string]spec.File{}
	for _, f := range vagrant.Files {
		vfiles[f.Path] = f
	}
	for _, f := range minimal.Files {
		if strings.Contains(f.Path, "autologin") {
			if _, ok := vfiles[f.Path]; ok {
				t.Errorf("vagrant.yaml has %s: a box must not log anyone in on its console", f.Path)
			}
			continue
		}
		g, ok := vfiles[f.Path]
		if !ok || g.Source != f.Source || g.Mode != f.Mode {
			t.Errorf("vagrant.yaml: file %s differs from minimal.yaml (source %q mode %o, want %q %o)", f.Path, g.Source, g.Mode, f.Source, f.Mode)
		}
	}
	if !slices.Equal(vagrant.Units.Enable, minimal.Units.Enable) || !slices.Equal(vagrant.Units.Mask, minimal.Units.Mask) {
		t.Errorf("units: vagrant %+v, minimal %+v", vagrant.Units, minimal.Units)
	}
	wantCmdline := slices.DeleteFunc(slices.Clone(minimal.Kernel.Cmdline), func(a string) bool { return a == "berth.autologin" })
	if !slices.Equal(vagrant.Kernel.Cmdline, wantCmdline) {
		t.Errorf("kernel cmdline %q, want %q (minimal's without berth.autologin)", vagrant.Kernel.Cmdline, wantCmdline)
	}
	if vagrant.Partitions != minimal.Partitions || !slices.Equal(vagrant.Initrd.Modules, minimal.Initrd.Modules) || vagrant.Slot != minimal.Slot {
		t.Errorf("partitions, initrd modules or slot differ from minimal.yaml")
	}

	sudoers, ok := vfiles["/etc/sudoers.d/vagrant"]
	if !ok || sudoers.Mode != 0o440 {
		t.Fatalf("/etc/sudoers.d/vagrant missing or not mode 0440 (sudo ignores it otherwise)")
	}
	if b, _ := os.ReadFile(sudoers.Source); !strings.Contains(string(b), "\nvagrant ALL=(ALL) NOPASSWD: ALL\n") {
		t.Errorf("sudoers file does not give vagrant passwordless sudo:\n%s", b)
	}
	users := readSource(t, vfiles, "/usr/lib/sysusers.d/vagrant.conf")
	if !slices.Contains(lines(users), `u vagrant 1000 "Vagrant" /home/vagrant /bin/bash`) {
		t.Errorf("sysusers.d/vagrant.conf does not create vagrant (uid 1000, /home/vagrant, bash):\n%s", users)
	}
	tmpfiles := lines(readSource(t, vfiles, "/usr/lib/tmpfiles.d/vagrant.conf"))
	for _, want := range []string{
		"d /var/home/vagrant 0700 vagrant vagrant -",
		"d /var/home/vagrant/.ssh 0700 vagrant vagrant -",
	} {
		if !slices.Contains(tmpfiles, want) {
			t.Errorf("tmpfiles.d/vagrant.conf lacks %q", want)
		}
	}
	var key string
	for _, l := range tmpfiles {
		if rest, ok := strings.CutPrefix(l, "f /var/home/vagrant/.ssh/authorized_keys 0600 vagrant vagrant - "); ok {
			key = rest
		}
	}
	if !strings.HasPrefix(key, "ssh-rsa AAAA") {
		t.Fatalf("tmpfiles.d/vagrant.conf: no authorized_keys line with the insecure RSA key")
	}
	// Compare with Vagrant's own copy when Vagrant is installed here.
	pubs, _ := filepath.Glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub")
	if len(pubs) == 0 {
		t.Logf("Vagrant not installed: the key is not compared with keys/vagrant.pub")
		return
	}
	b, err := os.ReadFile(pubs[0])
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != strings.TrimSpace(strings.ReplaceAll(key, `\n`, "")) {
		t.Errorf("the key in tmpfiles.d/vagrant.conf is not %s", pubs[0])
	}
}

func readSource(t *testing.T, files map[string]spec.File, path string) string {
	t.Helper()
	f, ok := files[path]
	if !ok {
		t.Fatalf("vagrant.yaml has no %s", path)
	}
	b, err := os.ReadFile(f.Source)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}
