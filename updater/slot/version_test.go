package slot

import (
	"testing"
)

func TestCompareVersions(t *testing.T) {
	// Each version is older than the next.
	order := []string{
		"0.1", "0.9.0", "0.10.0-alpha", "0.10.0-alpha.1", "0.10.0-alpha.beta", "0.10.0-beta.2", "0.10.0-beta.11",
		"0.10.0-rc.1", "0.10.0", "0.10.1", "1.0.0", "1.2.0", "1.10.0", "10.0.0", "99999999999999999999.0",
	}
	for i := range order {
		for j := range order {
			want := sign(i - j)
			if got := CompareVersions(order[i], order[j]); got != want {
				t.Errorf("CompareVersions(%q, %q) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	for _, eq := range [][2]string{{"1.2", "1.2.0"}, {"v1.2.3", "1.2.3"}, {"1.2.3+build.5", "1.2.3"}, {"01.2", "1.2"}} {
		if c := CompareVersions(eq[0], eq[1]); c != 0 {
			t.Errorf("CompareVersions(%q, %q) = %d, want 0", eq[0], eq[1], c)
		}
	}
}

func TestValidVersion(t *testing.T) {
	for _, ok := range []string{"1", "1.2.3", "0.10.0-rc.1", "v2.0", "1.0-a-b"} {
		if err := ValidVersion(ok); err != nil {
			t.Errorf("ValidVersion(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1..2", "1.x", "1.0-", "1.0-a b", "1.0\n", "abc", "1.0-é"} {
		if err := ValidVersion(bad); err == nil {
			t.Errorf("ValidVersion(%q) accepted", bad)
		}
	}
}

// The order systemd-boot gives versions (UAPI version format), oldest first.
func TestBootLoaderCompare(t *testing.T) {
	order := []string{
		"~1", "", "ab", "abb", "abc", "0001", "002", "12", "122", "122.9", "123~rc1", "123", "123-a", "123-a.1",
		"123-a1", "123-a1.1", "123-3", "123-3.1", "123^patch1", "123^1", "123.a-1", "123.1-1", "123a-1", "124",
	}
	for i := range order {
		for j := range order {
			want := sign(i - j)
			if got := bootLoaderCompare(order[i], order[j]); got != want {
				t.Errorf("bootLoaderCompare(%q, %q) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	for _, eq := range [][2]string{{"1.0", "1.0"}, {"01", "1"}, {"1 ", "1"}} {
		if c := bootLoaderCompare(eq[0], eq[1]); c != 0 {
			t.Errorf("bootLoaderCompare(%q, %q) = %d, want 0", eq[0], eq[1], c)
		}
	}
	// Where the two orders disagree, Apply demotes the booted entry.
	if CompareVersions("1.0.0", "1.0.0-rc1") <= 0 || bootLoaderCompare("1.0.0", "1.0.0-rc1") >= 0 {
		t.Error("expected 1.0.0 vs 1.0.0-rc1 to be ordered differently by the two")
	}
}

func FuzzVersionOrders(f *testing.F) {
	for _, s := range []string{"1.0", "1.0-rc1", "~1", "1^2", "a.b-c", "", "0.10.0", "1..2", "-", "^~.-"} {
		f.Add(s, "1.0.0")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for name, cmp := range map[string]func(string, string) int{"CompareVersions": CompareVersions, "bootLoaderCompare": bootLoaderCompare} {
			ab, ba := cmp(a, b), cmp(b, a)
			if ab != -ba || ab < -1 || ab > 1 {
				t.Fatalf("%s(%q, %q) = %d but reversed %d", name, a, b, ab, ba)
			}
			if cmp(a, a) != 0 {
				t.Fatalf("%s(%q, itself) != 0", name, a)
			}
		}
	})
}
