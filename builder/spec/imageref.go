package spec

import (
	"regexp"
	"strings"
)

type transport int

const (
	transportRegistry transport = iota
	transportOCILayout
	transportDockerArchive
)

// Prefixes of local image references, as skopeo spells them.
const (
	prefixOCILayout     = "oci-layout:"
	prefixDockerArchive = "docker-archive:"
)

// imageRef is a parsed image reference. Only its shape is checked here;
// the builder resolves it.
type imageRef struct {
	transport transport
	path      string // local transports: the directory or file
	name      string // registry transport: the whole reference
	suffix    string // oci-layout: ":TAG", "@sha256:HEX" or ""
}

func (r imageRef) String() string {
	switch r.transport {
	case transportOCILayout:
		return prefixOCILayout + r.path + r.suffix
	case transportDockerArchive:
		return prefixDockerArchive + r.path
	}
	return r.name
}

// The registry reference grammar, simplified from the OCI distribution
// spec: [host[:port]/]component(/component)*[:tag][@sha256:hex].
const (
	hostPart      = `(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?`
	componentPart = `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
	tagPart       = `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
	digestPart    = `sha256:[a-f0-9]{64}`
)

var (
	registryRefRe = regexp.MustCompile(`^` + hostPart + componentPart + `(?:/` + componentPart + `)*(?::` + tagPart + `)?(?:@` + digestPart + `)?$`)
	tagRe         = regexp.MustCompile(`^` + tagPart + `$`)
	digestRe      = regexp.MustCompile(`^` + digestPart + `$`)
)

const imageRefExpected = `expected "REGISTRY/REPO:TAG", "oci-layout:DIR[:TAG|@sha256:HEX]" or "docker-archive:FILE"`

// parseImageRef checks the shape of an image reference and returns a
// problem ("...; expected ...") when it is wrong.
func parseImageRef(s string) (imageRef, string) {
	switch {
	case strings.HasPrefix(s, prefixOCILayout):
		return parseOCILayoutRef(strings.TrimPrefix(s, prefixOCILayout), s)
	case strings.HasPrefix(s, prefixDockerArchive):
		file := strings.TrimPrefix(s, prefixDockerArchive)
		if file == "" {
			return imageRef{}, quote(s) + " names no file; " + imageRefExpected
		}
		return imageRef{transport: transportDockerArchive, path: file}, ""
	}
	if len(s) > 512 || !registryRefRe.MatchString(s) {
		return imageRef{}, quote(s) + " is not an image reference; " + imageRefExpected
	}
	return imageRef{transport: transportRegistry, name: s}, ""
}

// parseOCILayoutRef splits DIR[:TAG|@sha256:HEX]. A tag is the text after
// the last ':' when it contains no '/', so DIR itself cannot hold ':'.
func parseOCILayoutRef(rest, whole string) (imageRef, string) {
	r := imageRef{transport: transportOCILayout, path: rest}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		if !digestRe.MatchString(rest[i+1:]) {
			return imageRef{}, quote(whole) + " has a bad digest; " + imageRefExpected
		}
		r.path, r.suffix = rest[:i], rest[i:]
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		if !tagRe.MatchString(rest[i+1:]) {
			return imageRef{}, quote(whole) + " has a bad tag; " + imageRefExpected
		}
		r.path, r.suffix = rest[:i], rest[i:]
	}
	if r.path == "" {
		return imageRef{}, quote(whole) + " names no directory; " + imageRefExpected
	}
	return r, ""
}
