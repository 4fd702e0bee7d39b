package servicedns

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/berth-os/berth/agent/jobs"
)

func job(tenant, name string, replicas int, ports ...jobs.Port) jobs.Job {
	return jobs.Job{Tenant: tenant, Name: name, Replicas: replicas, Ports: ports}
}

func running(tenant, name string, n int, v4, v6 string) jobs.ReplicaStatus {
	return jobs.ReplicaStatus{Tenant: tenant, Job: name, Replica: n, State: jobs.StateRunning, IPv4: v4, IPv6: v6}
}

func testView() *View {
	stopped := job("acme", "idle", 1)
	stopped.Stopped = true
	specs := []jobs.Job{
		job("acme", "web", 3, jobs.Port{Container: 8080}, jobs.Port{Container: 9090, Protocol: "tcp"}, jobs.Port{Container: 5353, Protocol: "udp"}),
		job("acme", "db", 1),
		job("acme", "x.y", 1),
		job("acme", "api", 6),
		job("acme", "r5.api", 1),
		stopped,
		job("globex", "web", 1),
	}
	st2 := running("acme", "web", 2, "10.88.3.4", "")
	st2.State = jobs.StateStopped
	statuses := []jobs.ReplicaStatus{
		running("acme", "web", 0, "10.88.3.2", "fd00:88:3::2"),
		running("acme", "web", 1, "10.88.3.3/24", ""), // a prefix is tolerated
		st2,
		running("acme", "x.y", 0, "10.88.3.5", ""),
		running("acme", "api", 5, "10.88.3.6", ""),
		running("acme", "r5.api", 0, "10.88.3.7", ""),
		running("acme", "idle", 0, "10.88.3.8", ""),
		running("acme", "ghost", 0, "10.88.3.9", ""), // no spec: no name
		running("acme", "db", 0, "", ""),             // no address yet
		running("globex", "web", 0, "10.88.4.2", "fd00:88:4::2"),
	}
	return NewView(specs, statuses)
}

// summary renders a reply as "RCODE rr;rr | extra" with owner names as sent.
func summary(m *dns.Msg) string {
	var parts []string
	for _, rr := range m.Answer {
		parts = append(parts, strings.Join(strings.Fields(rr.String()), " "))
	}
	var extra []string
	for _, rr := range m.Extra {
		extra = append(extra, strings.Join(strings.Fields(rr.String()), " "))
	}
	s := dns.RcodeToString[m.Rcode] + " " + strings.Join(parts, "; ")
	if len(extra) > 0 {
		s += " | " + strings.Join(extra, "; ")
	}
	return strings.TrimSpace(s)
}

func TestAnswer(t *testing.T) {
	v := testView()
	const (
		A, AAAA, SRV, TXT, ANY, SOA = dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeANY, dns.TypeSOA
	)
	for _, c := range []struct {
		tenant, name string
		qtype        uint16
		want         string
	}{
		{"acme", "web.acme.berth.", A, "NOERROR web.acme.berth. 1 IN A 10.88.3.2; web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "web.acme.berth.", AAAA, "NOERROR web.acme.berth. 1 IN AAAA fd00:88:3::2"},
		{"acme", "web.acme.berth.", ANY, "NOERROR web.acme.berth. 1 IN A 10.88.3.2; web.acme.berth. 1 IN AAAA fd00:88:3::2; web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "WeB.AcMe.BERTH.", A, "NOERROR WeB.AcMe.BERTH. 1 IN A 10.88.3.2; WeB.AcMe.BERTH. 1 IN A 10.88.3.3"},
		{"acme", "web.acme.berth", A, "NOERROR web.acme.berth. 1 IN A 10.88.3.2; web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "r0.web.acme.berth.", A, "NOERROR r0.web.acme.berth. 1 IN A 10.88.3.2"},
		{"acme", "r1.web.acme.berth.", AAAA, "NOERROR"}, // IPv4 only: NODATA, not NXDOMAIN
		{"acme", "r2.web.acme.berth.", A, "NOERROR"},    // stopped
		{"acme", "r3.web.acme.berth.", A, "NXDOMAIN"},   // beyond replicas
		{"acme", "r01.web.acme.berth.", A, "NXDOMAIN"},  // not canonical
		{"acme", "db.acme.berth.", A, "NOERROR"},        // no address yet
		{"acme", "idle.acme.berth.", A, "NOERROR"},      // job stopped
		{"acme", "ghost.acme.berth.", A, "NXDOMAIN"},    // status without job
		{"acme", "nope.acme.berth.", A, "NXDOMAIN"},     // unknown job
		{"acme", "web.acme.berth.", TXT, "NOERROR"},     // exists, no such type
		{"acme", "x.y.acme.berth.", A, "NOERROR x.y.acme.berth. 1 IN A 10.88.3.5"},
		{"acme", "r0.x.y.acme.berth.", A, "NOERROR r0.x.y.acme.berth. 1 IN A 10.88.3.5"},
		{"acme", "r5.api.acme.berth.", A, "NOERROR r5.api.acme.berth. 1 IN A 10.88.3.7"}, // the job named r5.api wins
		{"acme", "acme.berth.", A, "NOERROR"},
		{"acme", "berth.", SOA, "NOERROR berth. 1 IN SOA ns.berth. hostmaster.berth. 1 60 60 60 1"},
		{"acme", "berth.", A, "NOERROR"},
		// other tenants do not exist for acme
		{"acme", "web.globex.berth.", A, "NXDOMAIN"},
		{"acme", "r0.web.globex.berth.", A, "NXDOMAIN"},
		{"acme", "_tcp.web.globex.berth.", SRV, "NXDOMAIN"},
		{"acme", "globex.berth.", A, "NXDOMAIN"},
		{"globex", "web.globex.berth.", A, "NOERROR web.globex.berth. 1 IN A 10.88.4.2"},
		{"globex", "web.acme.berth.", A, "NXDOMAIN"},
		{AllTenants, "web.globex.berth.", A, "NOERROR web.globex.berth. 1 IN A 10.88.4.2"},
		{AllTenants, "r0.web.acme.berth.", A, "NOERROR r0.web.acme.berth. 1 IN A 10.88.3.2"},
		{AllTenants, "initech.berth.", A, "NXDOMAIN"},
		{"", "web.acme.berth.", A, "NXDOMAIN"}, // nobody sees nothing
		// SRV
		{"acme", "_8080._tcp.web.acme.berth.", SRV, "NOERROR _8080._tcp.web.acme.berth. 1 IN SRV 0 1 8080 r0.web.acme.berth.; _8080._tcp.web.acme.berth. 1 IN SRV 0 1 8080 r1.web.acme.berth. | r0.web.acme.berth. 1 IN A 10.88.3.2; r0.web.acme.berth. 1 IN AAAA fd00:88:3::2; r1.web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "_tcp.web.acme.berth.", SRV, "NOERROR _tcp.web.acme.berth. 1 IN SRV 0 1 8080 r0.web.acme.berth.; _tcp.web.acme.berth. 1 IN SRV 0 1 8080 r1.web.acme.berth.; _tcp.web.acme.berth. 1 IN SRV 0 1 9090 r0.web.acme.berth.; _tcp.web.acme.berth. 1 IN SRV 0 1 9090 r1.web.acme.berth. | r0.web.acme.berth. 1 IN A 10.88.3.2; r0.web.acme.berth. 1 IN AAAA fd00:88:3::2; r1.web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "_5353._udp.WEB.acme.berth.", SRV, "NOERROR _5353._udp.WEB.acme.berth. 1 IN SRV 0 1 5353 r0.web.acme.berth.; _5353._udp.WEB.acme.berth. 1 IN SRV 0 1 5353 r1.web.acme.berth. | r0.web.acme.berth. 1 IN A 10.88.3.2; r0.web.acme.berth. 1 IN AAAA fd00:88:3::2; r1.web.acme.berth. 1 IN A 10.88.3.3"},
		{"acme", "_8080._tcp.web.acme.berth.", A, "NOERROR"},
		{"acme", "_8080._udp.web.acme.berth.", SRV, "NXDOMAIN"},
		{"acme", "_9999._tcp.web.acme.berth.", SRV, "NXDOMAIN"},
		{"acme", "_08080._tcp.web.acme.berth.", SRV, "NXDOMAIN"},
		{"acme", "_tcp.db.acme.berth.", SRV, "NXDOMAIN"}, // no ports
		{"acme", "_http._tcp.web.acme.berth.", SRV, "NXDOMAIN"},
		{"acme", "_tcp.acme.berth.", SRV, "NXDOMAIN"},
		// names that are no valid job or tenant
		{"acme", "we_b.acme.berth.", A, "NXDOMAIN"},
		{"acme", "-web.acme.berth.", A, "NXDOMAIN"},
		{"acme", `web\.x.acme.berth.`, A, "NXDOMAIN"},
		{"acme", `web\000.acme.berth.`, A, "NXDOMAIN"},
		{"acme", "web.ac_me.berth.", A, "NXDOMAIN"},
		{"acme", "web.library.berth.", A, "NXDOMAIN"},
		{"acme", strings.Repeat("a", 63) + ".acme.berth.", A, "NXDOMAIN"},
	} {
		q := dns.Question{Name: c.name, Qtype: c.qtype, Qclass: dns.ClassINET}
		m := Answer(v, c.tenant, q)
		if got := summary(m); got != c.want {
			t.Errorf("%s asks %s %s:\n got %s\nwant %s", c.tenant, c.name, dns.TypeToString[c.qtype], got, c.want)
		}
		if !m.Authoritative || !m.Response {
			t.Errorf("%s %s: reply not authoritative", c.tenant, c.name)
		}
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			if len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Errorf("%s %s: negative reply without the zone SOA: %v", c.tenant, c.name, m.Ns)
			}
		}
		if _, err := m.Pack(); err != nil {
			t.Errorf("%s %s: reply does not pack: %v", c.tenant, c.name, err)
		}
	}
}

// Another tenant's job and a job that exists nowhere must give the same
// reply, byte for byte past the question.
func TestAnswerDoesNotLeakExistence(t *testing.T) {
	v := testView()
	body := func(name string, qtype uint16) []byte {
		m := Answer(v, "acme", dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET})
		m.Question = nil
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV} {
		pairs := [][2]string{
			{"web.globex.berth.", "nope.globex.berth."},
			{"web.globex.berth.", "web.initech.berth."},
			{"web.globex.berth.", "nope.acme.berth."},
			{"globex.berth.", "initech.berth."},
			{"_tcp.web.globex.berth.", "_tcp.nope.acme.berth."},
		}
		for _, p := range pairs {
			if a, b := body(p[0], qt), body(p[1], qt); !bytes.Equal(a, b) {
				t.Errorf("%s and %s (%s) differ:\n%x\n%x", p[0], p[1], dns.TypeToString[qt], a, b)
			}
		}
	}
}

func TestAnswerRefusesOtherZones(t *testing.T) {
	m := Answer(testView(), AllTenants, dns.Question{Name: "example.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	if m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Errorf("example.com.: %s", summary(m))
	}
	for name, want := range map[string]bool{"berth.": true, "BERTH": true, "a.b.berth.": true, "xberth.": false, "berth.com.": false, ".": false} {
		if IsZone(name) != want {
			t.Errorf("IsZone(%q) = %v, want %v", name, !want, want)
		}
	}
}

func TestViewTenantOf(t *testing.T) {
	v := testView()
	for _, c := range []struct {
		addr string
		want string
	}{
		{"10.88.3.2", "acme"}, {"fd00:88:3::2", "acme"}, {"::ffff:10.88.3.3", "acme"}, {"10.88.4.2", "globex"},
		{"10.88.3.4", ""}, // stopped
		{"10.88.3.8", ""}, // job stopped
		{"10.88.3.9", ""}, // no job
		{"127.0.0.1", ""},
	} {
		got, ok := v.TenantOf(mustAddr(t, c.addr))
		if got != c.want || ok != (c.want != "") {
			t.Errorf("TenantOf(%s) = %q %v, want %q", c.addr, got, ok, c.want)
		}
	}
	jobsN, runningN := v.Len()
	if jobsN != 7 || runningN != 6 {
		t.Errorf("Len = %d jobs %d running, want 7, 6", jobsN, runningN)
	}
	// A wrong family in a status field is no address.
	w := NewView([]jobs.Job{job("acme", "web", 1)}, []jobs.ReplicaStatus{running("acme", "web", 0, "fd00::1", "10.0.0.1")})
	if m := Answer(w, "acme", dns.Question{Name: "web.acme.berth.", Qtype: dns.TypeANY, Qclass: dns.ClassINET}); len(m.Answer) != 0 {
		t.Errorf("swapped families answered: %s", summary(m))
	}
	if !slices.Equal(Search("acme"), []string{"acme.berth", "berth"}) {
		t.Errorf("Search = %v", Search("acme"))
	}
}
