package mountinfo

import (
	"reflect"
	"strings"
	"testing"
)

func TestUnescape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`/mnt/plain`, `/mnt/plain`},
		{`/mnt/a\040b`, `/mnt/a b`},
		{`/mnt/tab\011x`, "/mnt/tab\tx"},
		{`/mnt/nl\012`, "/mnt/nl\n"},
		{`/mnt/back\134slash`, `/mnt/back\slash`},
		{`\040\040`, `  `},
		{`/mnt/short\04`, `/mnt/short\04`},     // too few digits
		{`/mnt/not\08x`, `/mnt/not\08x`},       // 8 is not octal
		{`/mnt/big\400`, `/mnt/big\400`},       // beyond one byte
		{`/mnt/trailing\`, `/mnt/trailing\`},   // lone backslash
		{`/mnt/\\040`, `/mnt/\ `},              // the second backslash starts the escape
		{`/mnt/caf\303\251`, "/mnt/caf\u00e9"}, // UTF-8 bytes one by one
	} {
		if got := Unescape(tc.in); got != tc.want {
			t.Errorf("Unescape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	in := strings.Join([]string{
		`22 1 259:3 / / ro,relatime shared:1 - squashfs /dev/vda3 ro`,
		`30 22 259:4 /var /var rw,relatime shared:5 master:2 - ext4 /dev/vda4 rw`,
		`31 22 0:40 / /mnt/with\040space rw - tmpfs my\040tmp rw`,
		`short line`,
		`40 22 0:41 / /odd rw`, // no separator: still a mount
	}, "\n")
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Device: "259:3", Root: "/", MountPoint: "/", FSType: "squashfs", Source: "/dev/vda3"},
		{Device: "259:4", Root: "/var", MountPoint: "/var", FSType: "ext4", Source: "/dev/vda4"},
		{Device: "0:40", Root: "/", MountPoint: "/mnt/with space", FSType: "tmpfs", Source: "my tmp"},
		{Device: "0:41", Root: "/", MountPoint: "/odd"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
	}
}

func TestReadSelf(t *testing.T) {
	mounts, err := Read()
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, m := range mounts {
		if m.MountPoint == "/" {
			return
		}
	}
	t.Errorf("no mount on / among %d mounts", len(mounts))
}
