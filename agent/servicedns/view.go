package servicedns

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/miekg/dns"

	"github.com/berth-os/berth/agent/jobs"
)

// Zone is the domain every service name lives under.
const Zone = "berth."

// View is an immutable snapshot of the names the server answers. Build one
// with NewView and hand it to Server.Update; it is never changed after.
type View struct {
	jobs    map[jobs.JobRef]*jobEntry
	tenants map[string]bool       // tenants with at least one job
	addrs   map[netip.Addr]string // running replicas' addresses -> tenant
}

type jobEntry struct {
	ref      jobs.JobRef
	want     int // replicas the job wants: rN with N < want exists
	ports    []jobs.Port
	replicas []replica // running with an address, by index
}

type replica struct {
	index  int
	v4, v6 netip.Addr
}

// NewView builds the names of the given jobs from their replicas'
// statuses. A job exists (as a name) when its spec is given; statuses of
// jobs not given are ignored, as are replicas that are not running, have
// no address, or that the spec no longer wants (stopped job, scaled down).
func NewView(specs []jobs.Job, statuses []jobs.ReplicaStatus) *View {
	v := &View{
		jobs:    make(map[jobs.JobRef]*jobEntry, len(specs)),
		tenants: map[string]bool{},
		addrs:   map[netip.Addr]string{},
	}
	for _, j := range specs {
		ref := jobs.JobRef{Tenant: j.Tenant, Job: j.Name}
		if jobs.CheckTenantName(ref.Tenant) != nil || jobs.CheckJobName(ref.Job) != nil {
			continue // no valid DNS name; Validate refuses such jobs anyway
		}
		want := j.Replicas
		if j.Stopped {
			want = 0
		}
		v.jobs[ref] = &jobEntry{ref: ref, want: want, ports: slices.Clone(j.WithDefaults().Ports)}
		v.tenants[ref.Tenant] = true
	}
	for _, st := range statuses {
		e := v.jobs[jobs.JobRef{Tenant: st.Tenant, Job: st.Job}]
		if e == nil || st.State != jobs.StateRunning || st.Replica < 0 || st.Replica >= e.want {
			continue
		}
		r := replica{index: st.Replica, v4: parseAddr(st.IPv4, true), v6: parseAddr(st.IPv6, false)}
		if !r.v4.IsValid() && !r.v6.IsValid() {
			continue
		}
		// One status per key; should two claim one index, keep the first.
		if slices.ContainsFunc(e.replicas, func(o replica) bool { return o.index == r.index }) {
			continue
		}
		e.replicas = append(e.replicas, r)
		for _, a := range []netip.Addr{r.v4, r.v6} {
			if a.IsValid() {
				v.addrs[a] = st.Tenant
			}
		}
	}
	for _, e := range v.jobs {
		slices.SortFunc(e.replicas, func(a, b replica) int { return a.index - b.index })
	}
	return v
}

// parseAddr reads a status address ("10.88.3.5", tolerating "10.88.3.5/24")
// of the wanted family; anything else is no address.
func parseAddr(s string, want4 bool) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Addr{}
		}
		a = p.Addr()
	}
	a = a.Unmap()
	if a.Is4() != want4 || a.IsUnspecified() || a.Zone() != "" {
		return netip.Addr{}
	}
	return a
}

// TenantOf is the tenant whose running replica has the address; it is the
// server's source-to-tenant map when Config.TenantOf is nil.
func (v *View) TenantOf(a netip.Addr) (string, bool) {
	if v == nil {
		return "", false
	}
	t, ok := v.addrs[a.Unmap().WithZone("")]
	return t, ok
}

// Len is the number of jobs with a name, for logs.
func (v *View) Len() (jobCount, running int) {
	if v == nil {
		return 0, 0
	}
	for _, e := range v.jobs {
		running += len(e.replicas)
	}
	return len(v.jobs), running
}

func (v *View) job(tenant, job string) *jobEntry {
	if v == nil {
		return nil
	}
	return v.jobs[jobs.JobRef{Tenant: tenant, Job: job}]
}

// replicaName is the canonical (lower-case, absolute) name of one replica.
func replicaName(ref jobs.JobRef, index int) string {
	return "r" + strconv.Itoa(index) + "." + ref.Job + "." + ref.Tenant + "." + Zone
}

// IsZone reports whether a query name is under berth. (those are answered
// here, never forwarded).
func IsZone(name string) bool {
	return dns.IsSubDomain(Zone, dns.CanonicalName(name))
}
