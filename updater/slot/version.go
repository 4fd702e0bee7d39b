package slot

import (
	"fmt"
	"strings"
)

// CompareVersions orders two OS versions: dotted numbers, optionally
// followed by -suffix (a pre-release, older than the plain version).
// Numbers compare numerically (0.10.0 > 0.9.0), missing parts are 0
// (1.2 == 1.2.0), a leading "v" and "+build" metadata are ignored.
// Suffixes compare by dot-separated identifiers, numbers numerically and
// below words (1.0.0-rc.2 < 1.0.0-rc.10 < 1.0.0). Parts that are not numbers
// compare as text, so any two strings have an order. It returns -1, 0 or +1.
func CompareVersions(a, b string) int {
	ca, sa := splitVersion(a)
	cb, sb := splitVersion(b)
	if c := compareParts(ca, cb, "0"); c != 0 {
		return c
	}
	switch {
	case sa == nil && sb == nil:
		return 0
	case sa == nil:
		return 1
	case sb == nil:
		return -1
	}
	return compareParts(sa, sb, "")
}

// ValidVersion accepts what CompareVersions orders without falling back to
// text: dotted numbers with an optional -suffix of letters, digits, dots
// and hyphens.
func ValidVersion(v string) error {
	if v == "" {
		return fmt.Errorf("empty version")
	}
	core, suffix, hasSuffix := strings.Cut(strings.TrimPrefix(v, "v"), "-")
	for _, p := range strings.Split(core, ".") {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return fmt.Errorf("version %q: %q is not a number (want e.g. 1.2.3 or 1.2.3-rc.1)", v, p)
		}
	}
	if hasSuffix {
		if suffix == "" {
			return fmt.Errorf("version %q: empty suffix after '-'", v)
		}
		for _, c := range suffix {
			if !isAlnum(c) && c != '.' && c != '-' && c != '+' {
				return fmt.Errorf("version %q: suffix may only hold letters, digits, '.', '-' and '+'", v)
			}
		}
	}
	return nil
}

func splitVersion(v string) (core, suffix []string) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	v, _, _ = strings.Cut(v, "+")
	c, s, ok := strings.Cut(v, "-")
	core = strings.Split(c, ".")
	if ok {
		suffix = strings.Split(s, ".")
	}
	return core, suffix
}

// compareParts compares identifier lists; pad stands in for a missing part
// ("" makes the shorter list older).
func compareParts(a, b []string, pad string) int {
	for i := 0; i < len(a) || i < len(b); i++ {
		pa, pb := pad, pad
		if i < len(a) {
			pa = a[i]
		}
		if i < len(b) {
			pb = b[i]
		}
		if pad == "" && (i >= len(a) || i >= len(b)) {
			if i >= len(a) {
				return -1
			}
			return 1
		}
		if c := compareIdent(pa, pb); c != 0 {
			return c
		}
	}
	return 0
}

// compareIdent: numbers numerically (any length), numbers before words,
// words as text.
func compareIdent(a, b string) int {
	na, nb := isNumber(a), isNumber(b)
	switch {
	case na && nb:
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return sign(len(a) - len(b))
		}
		return strings.Compare(a, b)
	case na:
		return -1
	case nb:
		return 1
	}
	return strings.Compare(a, b)
}

func isNumber(s string) bool { return s != "" && strings.Trim(s, "0123456789") == "" }

func isAlnum(c rune) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// bootLoaderCompare orders versions the way systemd-boot orders entries
// (the UAPI group's version format specification, systemd's
// strverscmp_improved): the updater must know whether the boot loader
// will prefer a new entry, and it disagrees with CompareVersions on
// suffixes ("1.0-rc1" is newer than "1.0" for the boot loader).
func bootLoaderCompare(a, b string) int {
	valid := func(c byte) bool { return isDigit(c) || isAlpha(c) || strings.IndexByte("~-^.", c) >= 0 }
	// marker compares a leading separator: the side that has it where the
	// other does not is older (-1 for a) or, for '^' and '.', also older
	// than any other continuation, as the specification says.
	marker := func(a, b string, m byte) (string, string, int, bool) {
		ha, hb := a != "" && a[0] == m, b != "" && b[0] == m
		if !ha && !hb {
			return a, b, 0, false
		}
		if ha != hb {
			if ha {
				return a, b, -1, true
			}
			return a, b, 1, true
		}
		return a[1:], b[1:], 0, false
	}
	for {
		for a != "" && !valid(a[0]) {
			a = a[1:]
		}
		for b != "" && !valid(b[0]) {
			b = b[1:]
		}
		var c int
		var done bool
		if a, b, c, done = marker(a, b, '~'); done {
			return c
		}
		if a == "" || b == "" {
			// The longer string is newer, once '~' is handled.
			return sign(len(a) - len(b))
		}
		for _, m := range []byte{'-', '^', '.'} {
			if a, b, c, done = marker(a, b, m); done {
				return c
			}
		}
		// A separator may have consumed a string entirely: an empty string
		// then compares as an empty segment and the loop ends above.
		if isDigit(first(a)) || isDigit(first(b)) {
			ea, eb := prefixLen(a, isDigit), prefixLen(b, isDigit)
			// A number is newer than a word in the same place.
			if (ea > 0) != (eb > 0) {
				if ea > 0 {
					return 1
				}
				return -1
			}
			if c := compareIdent(a[:ea], b[:eb]); c != 0 {
				return c
			}
			a, b = a[ea:], b[eb:]
			continue
		}
		ea, eb := prefixLen(a, isAlpha), prefixLen(b, isAlpha)
		if c := strings.Compare(a[:ea], b[:eb]); c != 0 {
			return c
		}
		a, b = a[ea:], b[eb:]
	}
}

func first(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

func prefixLen(s string, ok func(byte) bool) int {
	n := 0
	for n < len(s) && ok(s[n]) {
		n++
	}
	return n
}
