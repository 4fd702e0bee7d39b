package servicedns

import (
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/berth-os/berth/agent/jobs"
)

// TTL of every answer and of negative caching: a replica that stops or
// moves leaves the resolvers' caches within this.
const TTL = 1

// AllTenants as the asking tenant sees every tenant's names (the node
// itself). It is not a valid tenant name, so no container can be it.
const AllTenants = "*"

// soa is the zone's SOA, sent with negative answers; its minimum (1 s)
// bounds how long a resolver caches "no such name".
var soa = &dns.SOA{
	Hdr:     dns.RR_Header{Name: Zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
	Ns:      "ns." + Zone,
	Mbox:    "hostmaster." + Zone,
	Serial:  1,
	Refresh: 60, Retry: 60, Expire: 60, Minttl: TTL,
}

// Answer decides the reply to one question about a name under berth. asked
// by tenant (AllTenants for the node; "" for nobody, who sees nothing). It
// is pure: the reply's Rcode, Authoritative flag and sections are set, the
// ID and EDNS are the caller's. Owner names keep the question's spelling
// (resolvers may randomise its case); targets are lower case.
func Answer(v *View, tenant string, q dns.Question) *dns.Msg {
	m := new(dns.Msg)
	m.Response = true
	m.Authoritative = true
	owner := dns.Fqdn(q.Name)
	m.Question = []dns.Question{{Name: owner, Qtype: q.Qtype, Qclass: q.Qclass}}
	name := dns.CanonicalName(q.Name)
	if !dns.IsSubDomain(Zone, name) {
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused // not ours; the server forwards these
		return m
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return nxdomain(m)
	}
	labels := dns.SplitDomainName(name) // [..., tenant, "berth"]
	n := len(labels)
	if n == 1 { // berth. itself
		if q.Qtype == dns.TypeSOA {
			m.Answer = []dns.RR{soa}
			return m
		}
		return nodata(m)
	}
	t := labels[n-2]
	if tenant == "" || (tenant != AllTenants && tenant != t) || jobs.CheckTenantName(t) != nil {
		return nxdomain(m)
	}
	rest := labels[:n-2]
	if len(rest) == 0 { // TENANT.berth: exists for its own tenant
		if tenant == AllTenants && !v.hasTenant(t) {
			return nxdomain(m)
		}
		return nodata(m)
	}
	if strings.HasPrefix(rest[0], "_") {
		return answerSRV(m, v, t, rest, owner, q.Qtype)
	}
	// The whole name as a job first, then rN.JOB.
	if e := v.job(t, jobName(rest)); e != nil {
		return addresses(m, e.replicas, owner, q.Qtype)
	}
	if len(rest) > 1 {
		if idx, ok := replicaIndex(rest[0]); ok {
			if e := v.job(t, jobName(rest[1:])); e != nil && idx < e.want {
				var only []replica
				for _, r := range e.replicas {
					if r.index == idx {
						only = append(only, r)
					}
				}
				return addresses(m, only, owner, q.Qtype)
			}
		}
	}
	return nxdomain(m)
}

// answerSRV handles _tcp.JOB, _udp.JOB, _PORT._tcp.JOB and _PORT._udp.JOB.
func answerSRV(m *dns.Msg, v *View, tenant string, rest []string, owner string, qtype uint16) *dns.Msg {
	port := 0
	if p, ok := strings.CutPrefix(rest[0], "_"); ok && len(rest) > 1 && isDigits(p) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return nxdomain(m)
		}
		port, rest = n, rest[1:]
	}
	proto, ok := map[string]string{"_tcp": "tcp", "_udp": "udp"}[rest[0]]
	if !ok || len(rest) < 2 {
		return nxdomain(m)
	}
	e := v.job(tenant, jobName(rest[1:]))
	if e == nil {
		return nxdomain(m)
	}
	var ports []uint16
	for _, p := range e.ports {
		if p.Protocol == proto && (port == 0 || p.Container == port) && p.Container > 0 && p.Container <= 65535 {
			if !containsPort(ports, uint16(p.Container)) {
				ports = append(ports, uint16(p.Container))
			}
		}
	}
	if len(ports) == 0 {
		return nxdomain(m) // the job publishes no such port: no such name
	}
	if qtype != dns.TypeSRV && qtype != dns.TypeANY {
		return nodata(m)
	}
	for _, p := range ports {
		for _, r := range e.replicas {
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: TTL},
				Priority: 0, Weight: 1, Port: p,
				Target: replicaName(e.ref, r.index),
			})
		}
	}
	for _, r := range e.replicas {
		m.Extra = append(m.Extra, addressRRs(replicaName(e.ref, r.index), r, dns.TypeANY)...)
	}
	if len(m.Answer) == 0 {
		return nodata(m)
	}
	return m
}

func addresses(m *dns.Msg, rs []replica, owner string, qtype uint16) *dns.Msg {
	for _, r := range rs {
		m.Answer = append(m.Answer, addressRRs(owner, r, qtype)...)
	}
	if len(m.Answer) == 0 {
		return nodata(m)
	}
	return m
}

// addressRRs are a replica's A and/or AAAA records as qtype asks
// (TypeANY: both).
func addressRRs(owner string, r replica, qtype uint16) []dns.RR {
	var out []dns.RR
	if r.v4.IsValid() && (qtype == dns.TypeA || qtype == dns.TypeANY) {
		out = append(out, &dns.A{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL},
			A:   r.v4.AsSlice(),
		})
	}
	if r.v6.IsValid() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY) {
		out = append(out, &dns.AAAA{
			Hdr:  dns.RR_Header{Name: owner, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: TTL},
			AAAA: r.v6.AsSlice(),
		})
	}
	return out
}

// nxdomain and nodata both carry the SOA, so a name of another tenant and
// a name that exists nowhere give the same bytes.
func nxdomain(m *dns.Msg) *dns.Msg {
	m.Rcode = dns.RcodeNameError
	m.Answer, m.Extra = nil, nil
	m.Ns = []dns.RR{soa}
	return m
}

func nodata(m *dns.Msg) *dns.Msg {
	m.Rcode = dns.RcodeSuccess
	m.Answer, m.Extra = nil, nil
	m.Ns = []dns.RR{soa}
	return m
}

// jobName joins labels back into a job name; a label holding an escaped
// byte (\. \000 ...) makes no valid job name and so matches nothing.
func jobName(labels []string) string {
	name := strings.Join(labels, ".")
	if jobs.CheckJobName(name) != nil {
		return ""
	}
	return name
}

// replicaIndex reads "rN" in canonical decimal ("r7", not "r07").
func replicaIndex(label string) (int, bool) {
	s, ok := strings.CutPrefix(label, "r")
	if !ok || !isDigits(s) {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n >= jobs.MaxReplicas || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func containsPort(ps []uint16, p uint16) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func (v *View) hasTenant(t string) bool { return v != nil && v.tenants[t] }
