package nodeconfig

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
)

// checkHostname accepts RFC 1123 host names that fit the kernel's 64-byte
// limit: dot-separated labels of letters, digits and inner hyphens.
func checkHostname(s string) error {
	if s == "" {
		return errors.New("is empty")
	}
	if len(s) > 63 {
		return fmt.Errorf("%q is longer than 63 characters", s)
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" {
			return fmt.Errorf("%q has an empty label (two dots, or a dot at an end)", s)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q: a label may not start or end with '-'", s)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q: character %q not allowed (use letters, digits, '-' and '.')", s, r)
			}
		}
	}
	return nil
}

// sshKeyTypes are the public key types OpenSSH's sshd accepts.
var sshKeyTypes = map[string]bool{
	"ssh-ed25519":                        true,
	"ssh-rsa":                            true,
	"ecdsa-sha2-nistp256":                true,
	"ecdsa-sha2-nistp384":                true,
	"ecdsa-sha2-nistp521":                true,
	"sk-ssh-ed25519@openssh.com":         true,
	"sk-ecdsa-sha2-nistp256@openssh.com": true,
}

// checkAuthorizedKey accepts one authorized_keys line: [OPTIONS] TYPE
// BASE64 [COMMENT], where the base64 blob really is a key of TYPE (its
// first field names the type), so a truncated paste is caught here and
// not at the first failed login.
func checkAuthorizedKey(s string) error {
	s = strings.TrimSpace(s)
	if strings.ContainsAny(s, "\n\r") {
		return errors.New("must be one line")
	}
	fields := strings.Fields(s)
	if len(fields) > 0 && !sshKeyTypes[fields[0]] {
		if strings.Contains(fields[0], `"`) {
			return errors.New(`options with quoted values are not supported; drop the options or the quotes`)
		}
		fields = fields[1:] // options such as from=...,no-pty
	}
	if len(fields) < 2 || !sshKeyTypes[fields[0]] {
		return fmt.Errorf("%q is not a public key line like \"ssh-ed25519 AAAA... user@host\"", abbreviate(s))
	}
	blob, err := base64.StdEncoding.DecodeString(fields[1])
	if err != nil {
		return fmt.Errorf("%s key: the base64 part is damaged: %v", fields[0], err)
	}
	if len(blob) < 4 {
		return fmt.Errorf("%s key: the key data is too short", fields[0])
	}
	n := binary.BigEndian.Uint32(blob)
	if uint64(len(blob)-4) < uint64(n) || !bytes.Equal(blob[4:4+n], []byte(fields[0])) {
		return fmt.Errorf("%s key: the key data is not a %s key", fields[0], fields[0])
	}
	return nil
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// checkNamePattern accepts a systemd [Match] Name= list: whitespace
// separated shell globs over interface names, each optionally negated.
func checkNamePattern(s string) error {
	globs := strings.Fields(s)
	if len(globs) == 0 {
		return errors.New("is empty")
	}
	for _, g := range globs {
		g = strings.TrimPrefix(g, "!")
		if g == "" || strings.ContainsAny(g, "/'\"\\") {
			return fmt.Errorf("%q is not an interface name pattern like \"en*\"", g)
		}
		for _, r := range g {
			if r < 0x21 || r > 0x7e {
				return fmt.Errorf("%q: character %q not allowed in an interface name", g, r)
			}
		}
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("%q: %v", g, err)
		}
	}
	return nil
}

// checkMAC accepts an Ethernet (EUI-48) address and returns it in the
// lower-case colon form.
func checkMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not a MAC address like 52:54:00:12:34:56", s)
	}
	return hw.String(), nil
}

// checkAddress accepts ADDRESS/PREFIXLEN of a host on a network.
func checkAddress(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Zone() != "" {
		if _, aerr := netip.ParseAddr(s); aerr == nil {
			return netip.Prefix{}, fmt.Errorf("%q has no prefix length: write it like 10.240.0.11/24", s)
		}
		return netip.Prefix{}, fmt.Errorf("%q is not an address with prefix length like 10.240.0.11/24 or fd00::11/64", s)
	}
	a := p.Addr()
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.Prefix{}, fmt.Errorf("%q: %s cannot be a host address", s, a)
	}
	if a.Is4() && p.Bits() < 31 {
		if a == p.Masked().Addr() {
			return netip.Prefix{}, fmt.Errorf("%q is the network address of %s, not a host on it", s, p.Masked())
		}
		if a == lastAddr(p) {
			return netip.Prefix{}, fmt.Errorf("%q is the broadcast address of %s, not a host on it", s, p.Masked())
		}
	}
	return p, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := binary.BigEndian.Uint32(b[:]) | host
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// checkGateway accepts a router address of the wanted family.
func checkGateway(s string, want4 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	family, example := "IPv6", "fd00:240::1"
	if want4 {
		family, example = "IPv4", "10.240.0.1"
	}
	if err != nil || a.Zone() != "" || a.Is4() != want4 || a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%q is not an %s address like %s", s, family, example)
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.Addr{}, fmt.Errorf("%q cannot be a gateway", s)
	}
	return a, nil
}
