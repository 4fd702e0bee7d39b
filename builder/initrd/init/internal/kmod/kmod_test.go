package kmod

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseList(t *testing.T) {
	got, err := ParseList([]byte("# order matters\nkernel/drivers/virtio/virtio.ko\n\n  kernel/fs/overlayfs/overlay.ko  \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/virtio/virtio.ko", "kernel/fs/overlayfs/overlay.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"/lib/modules/x.ko", "kernel/../../../etc/passwd", ".."} {
		if _, err := ParseList([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ParseList(%q) error = %v, want a line 1 error", bad, err)
		}
	}
}

func TestName(t *testing.T) {
	for path, want := range map[string]string{
		"kernel/fs/overlayfs/overlay.ko":         "overlay",
		"kernel/drivers/block/virtio_blk.ko.zst": "virtio_blk",
		"squashfs.ko.xz":                         "squashfs",
	} {
		if got := Name(path); got != want {
			t.Errorf("Name(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/nope.ko")
	if err == nil || !strings.Contains(err.Error(), "open module") {
		t.Fatalf("error = %v, want an open error", err)
	}
}
