package vagrantbox

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qcow2 makes a real qcow2 of virtual size vsize holding some random data.
func qcow2(t *testing.T, vsize string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "disk.qcow2")
	for _, args := range [][]string{
		{"resize", "-f", "raw", raw, vsize},
		{"convert", "-f", "raw", "-O", "qcow2", raw, q},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	return q
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

func readBox(t *testing.T, path string) []entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("box is not gzip: %v", err)
	}
	tr := tar.NewReader(gz)
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("box tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{h, b})
	}
	return out
}

func TestWriteBox(t *testing.T) {
	q := qcow2(t, "2500M") // 2.62 GB: virtual_size rounds up to 3
	box := filepath.Join(t.TempDir(), "berth-vagrant-0.1.0.box")
	epoch := time.Unix(1700000000, 0)
	if err := Write(box, q, epoch); err != nil {
		t.Fatalf("Write: %v", err)
	}
	ents := readBox(t, box)
	var names []string
	for _, e := range ents {
		names = append(names, e.hdr.Name)
		if !e.hdr.ModTime.Equal(epoch) || e.hdr.Mode != 0o644 || e.hdr.Typeflag != tar.TypeReg {
			t.Errorf("%s: mtime %v mode %o type %c; want %v, 0644, regular", e.hdr.Name, e.hdr.ModTime, e.hdr.Mode, e.hdr.Typeflag, epoch)
		}
	}
	if got := strings.Join(names, " "); got != "metadata.json Vagrantfile box.img" {
		t.Fatalf("box entries %q", got)
	}
	var m map[string]any
	if err := json.Unmarshal(ents[0].data, &m); err != nil {
		t.Fatalf("metadata.json: %v", err)
	}
	if m["provider"] != "libvirt" || m["format"] != "qcow2" || m["virtual_size"] != float64(3) || len(m) != 3 {
		t.Errorf("metadata.json = %s", ents[0].data)
	}
	want, _ := os.ReadFile(q)
	if !bytes.Equal(ents[2].data, want) {
		t.Errorf("box.img (%d bytes) differs from the qcow2 (%d bytes)", len(ents[2].data), len(want))
	}
	// qemu-img reads box.img as the same qcow2 disk.
	img := filepath.Join(t.TempDir(), "box.img")
	os.WriteFile(img, ents[2].data, 0o644)
	out, err := exec.Command("qemu-img", "info", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img info box.img: %v", err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	json.Unmarshal(out, &info)
	if info.Format != "qcow2" || info.VirtualSize != 2500<<20 {
		t.Errorf("qemu-img info box.img: %s", out)
	}
	vf := string(ents[1].data)
	for _, s := range []string{`config.vm.guest = :linux`, `lv.loader = [`, `lv.machine_type = "q35"`, `"qemu"`} {
		if !strings.Contains(vf, s) {
			t.Errorf("embedded Vagrantfile lacks %s", s)
		}
	}
	if ruby, err := exec.LookPath("ruby"); err == nil {
		if out, err := exec.Command(ruby, "-c", "-e", vf).CombinedOutput(); err != nil {
			t.Errorf("embedded Vagrantfile is not valid Ruby: %s", out)
		}
	}

	// Same input, same epoch: the same box, byte for byte.
	again := filepath.Join(t.TempDir(), "again.box")
	if err := Write(again, q, epoch); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(box)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Errorf("two boxes of the same image differ")
	}
}

func TestWriteBoxRefusesRaw(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	os.WriteFile(raw, make([]byte, 1<<20), 0o644)
	out := filepath.Join(dir, "x.box")
	err := Write(out, raw, time.Unix(0, 0))
	if err == nil || !strings.Contains(err.Error(), "not a qcow2 image") {
		t.Fatalf("Write(raw) = %v, want a not-a-qcow2 error", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("output directory holds %d entries after a failed Write, want only the input", len(ents))
	}
}
