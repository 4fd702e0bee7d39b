package servicedns

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/miekg/dns"
)

// DefaultResolvConf is where the node's own upstream servers are read
// when Config gives neither Upstreams nor ResolvConf.
const DefaultResolvConf = "/etc/resolv.conf"

// maxNameservers is what glibc reads of resolv.conf; more are ignored.
const maxNameservers = 3

// Search is the search list of a tenant's containers: TENANT.berth, berth.
func Search(tenant string) []string {
	return []string{tenant + "." + strings.TrimSuffix(Zone, "."), strings.TrimSuffix(Zone, ".")}
}

// ResolvConf renders the /etc/resolv.conf of a container: the given
// servers (the node's bridge gateways) and search list (usually
// Search(tenant)). ndots:2 lets "web" and "web.acme" hit the search list
// (answered locally, never forwarded) before going out as absolute names;
// edns0 lets answers of many replicas come over UDP. Invalid servers and
// search domains are left out.
func ResolvConf(servers []netip.Addr, search ...string) []byte {
	var b bytes.Buffer
	b.WriteString("# written by berth-agent: service names JOB.TENANT.berth, other names via the node\n")
	n := 0
	for _, s := range servers {
		if !s.IsValid() || s.IsUnspecified() || n == maxNameservers {
			continue
		}
		fmt.Fprintf(&b, "nameserver %s\n", s.Unmap())
		n++
	}
	var domains []string
	for _, d := range search {
		d = strings.TrimSuffix(strings.TrimSpace(d), ".")
		if _, ok := dns.IsDomainName(d); ok && d != "" && !strings.ContainsAny(d, " \t\\#;") {
			domains = append(domains, d)
		}
	}
	if len(domains) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(domains, " "))
	}
	b.WriteString("options ndots:2 edns0\n")
	return b.Bytes()
}

// parseResolvConf returns the nameservers of a resolv.conf, port 53.
func parseResolvConf(data []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue // glibc skips what it cannot read, so do we
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}

func readResolvConf(path string) ([]netip.AddrPort, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream servers: %w; set Config.ResolvConf to the node's resolv.conf or give Config.Upstreams", err)
	}
	ups := parseResolvConf(data)
	if len(ups) == 0 {
		return nil, fmt.Errorf("%s has no usable nameserver line; add one or give Config.Upstreams", path)
	}
	return ups, nil
}
