package disk

import (
	"os"
	"testing"
)

func TestExploreTmp(t *testing.T) {
	for _, mib := range []int64{32, 1024} {
		s := testSpec(t, t.TempDir(), 40, 5*MiB)
		s.StateSize = mib * MiB
		img, l := writeImage(t, s)
		st := extract(t, img, l.Parts[3])
		b, _ := os.ReadFile(st)
		os.WriteFile("/tmp/ext4fix/state"+map[int64]string{32: "32", 1024: "1024"}[mib]+".img", b, 0o644)
		esp := extract(t, img, l.Parts[0])
		b, _ = os.ReadFile(esp)
		os.WriteFile("/tmp/ext4fix/esp.img", b, 0o644)
	}
}
