package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"sort"
	"strconv"
)

// BaseRecipe versions how the builder turns a Base into a root. Bump it
// whenever that changes (mmdebstrap options, hooks, cleanup), so cached
// base roots built the old way are not reused.
const BaseRecipe = "berth-base/1"

// Arch is the only architecture berth builds for.
const Arch = "amd64"

// BaseKey is a hex SHA-256 of everything that defines the base root, for
// caching it between builds. Package order and duplicates do not matter;
// layers, files, units and everything else do not enter it. For local OCI
// references the key covers the path, not the content: a builder caching
// them should also fold in the image's manifest digest.
func (s *Spec) BaseKey() string {
	h := sha256.New()
	writeFields(h, BaseRecipe, Arch, strconv.FormatInt(s.Epoch, 10))
	switch {
	case s.Base.Debian != nil:
		d := s.Base.Debian
		writeFields(h, "debian", d.Suite, d.Mirror, d.Variant)
		pkgs := sortedUnique(d.Packages)
		writeFields(h, strconv.Itoa(len(pkgs)))
		writeFields(h, pkgs...)
	default:
		writeFields(h, "oci", s.Base.OCI)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeFields length-prefixes each field so no two field lists can hash
// the same bytes.
func writeFields(h hash.Hash, fields ...string) {
	for _, f := range fields {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
}

func sortedUnique(list []string) []string {
	out := append([]string(nil), list...)
	sort.Strings(out)
	n := 0
	for i, s := range out {
		if i == 0 || s != out[n-1] {
			out[n] = s
			n++
		}
	}
	return out[:n]
}
