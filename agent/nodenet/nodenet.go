// Package nodenet is this node's side of the cluster network. It follows
// etcd (subnet leases, node documents, replica statuses, job specs) and the
// node's own containers (the workload manager's endpoints), and keeps three
// things matching them, each owned by its own package:
//
//   - routes to the other nodes' container subnets (agent/netroute: direct
//     routes on a shared link, VXLAN otherwise);
//   - the node's nftables rules (agent/netfilter: outbound masquerade,
//     published ports in the kernel, tenants apart on the wire);
//   - the service names JOB.TENANT.berth (agent/servicedns, served on the
//     bridge's gateway addresses, the containers' resolver).
//
// It also gives the bridge and the containers the MTU the routes allow
// (netroute's Desired.MTU, through Options.SetMTU): 1450 once VXLAN over a
// 1500 underlay is in use, so a container's packets to another node are
// neither fragmented nor dropped.
//
// Nothing is removed when the agent stops: containers outlive the agent,
// and so do their routes, rules and published ports; the next agent picks
// the kernel state up and corrects it.
package nodenet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/netfilter"
	"github.com/berth-os/berth/agent/netroute"
	"github.com/berth-os/berth/agent/servicedns"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/agent/workload"
	"github.com/berth-os/berth/internal/etcdview"
	"github.com/berth-os/berth/internal/retry"
)

// Options configure the node network; New checks them.
type Options struct {
	Node   string
	Bridge string
	// Subnets waits for this node's leased subnets.
	Subnets func(context.Context) (subnet.Assigned, error)
	// OpenBridge creates the container bridge with its gateway addresses
	// (agent/netsetup), the same one the workload manager attaches to.
	OpenBridge func() error
	Routes     netroute.Config
	// SetMTU gives the bridge and the containers an MTU (agent/netsetup's
	// Network.SetMTU); nil leaves MTUs alone.
	SetMTU func(mtu int) error
	// Endpoints are this node's containers; EndpointsChanged signals a change.
	Endpoints        func() []workload.Endpoint
	EndpointsChanged <-chan struct{}
	// PortBindIP is the node address published ports answer on
	// (unspecified: all of the node's addresses).
	PortBindIP netip.Addr
	// ResolvConf is the node's resolver file whose servers get every name
	// outside berth. (default /etc/resolv.conf).
	ResolvConf string
	// DNSPort is the service-name server's port (default 53; tests).
	DNSPort uint16
	Log     *slog.Logger
}

// Net is one node's cluster network.
type Net struct {
	o    Options
	log  *slog.Logger
	view *clusterView
	rt   *netroute.Programmer

	assigned atomic.Pointer[subnet.Assigned]
	// lastProblems are the route problems of the last reconcile (only
	// Run's goroutine touches them).
	lastProblems map[string]bool
	// mtu is the MTU SetMTU last applied (0: none since the agent
	// started), mtuErr its last failure, logged once (Run's goroutine).
	mtu    int
	mtuErr string

	tenantsMu sync.Mutex
	tenantOf  map[netip.Addr]string // this node's containers
}

// New checks o.
func New(o Options) (*Net, error) {
	if o.Node == "" || o.Bridge == "" || o.Subnets == nil || o.OpenBridge == nil || o.Endpoints == nil {
		return nil, errors.New("nodenet: node, bridge, subnets, bridge opener and endpoints are required")
	}
	if err := o.Routes.Validate(); err != nil {
		return nil, fmt.Errorf("nodenet: %w", err)
	}
	if o.DNSPort == 0 {
		o.DNSPort = 53
	}
	if o.ResolvConf == "" {
		o.ResolvConf = "/etc/resolv.conf"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Net{o: o, log: o.Log.With("component", "nodenet"), view: newClusterView(o.Log),
		rt: netroute.NewProgrammer(nil, o.Log.With("component", "netroute")), tenantOf: map[netip.Addr]string{}}, nil
}

// ResolvConf is the /etc/resolv.conf of a tenant's containers: this node's
// service-name server (the bridge's gateways), the tenant's names first.
// Empty until the node's subnets are known (the workload side waits for
// them before any container starts).
func (n *Net) ResolvConf(tenant string) []byte {
	a := n.assigned.Load()
	if a == nil {
		return nil
	}
	return servicedns.ResolvConf(gateways(*a), servicedns.Search(tenant)...)
}

func gateways(a subnet.Assigned) []netip.Addr {
	var out []netip.Addr
	for _, p := range []netip.Prefix{a.IPv4, a.IPv6} {
		if p.IsValid() {
			out = append(out, p.Masked().Addr().Next())
		}
	}
	return out
}

// Run sets the network up and keeps it current until ctx ends.
func (n *Net) Run(ctx context.Context, cli *clientv3.Client) error {
	var a subnet.Assigned
	err := retry.Do(ctx, retry.Policy{Initial: time.Second, Max: 30 * time.Second, OnRetry: func(err error, wait time.Duration) {
		n.log.Warn("node network waits for its subnets and bridge", "err", err, "retry_in", wait)
	}}, func() error {
		var err error
		if a, err = n.o.Subnets(ctx); err != nil {
			return err
		}
		return n.o.OpenBridge()
	})
	if err != nil {
		return nil // ctx ended
	}
	n.assigned.Store(&a)
	dns := n.startDNS(ctx, a)
	go etcdview.Follow(ctx, cli, Prefixes, n.view, n.log)

	resync := time.NewTicker(time.Minute) // repairs what someone else changed
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			if s := dns.Load(); s != nil {
				s.Close()
			}
			return nil
		case <-n.view.changed:
		case <-n.o.EndpointsChanged:
		case <-resync.C:
		}
		// Coalesce a burst (a job of many replicas starting).
		select {
		case <-ctx.Done():
			continue
		case <-time.After(100 * time.Millisecond):
		}
		n.reconcile(a, dns.Load())
	}
}

// reconcile makes routes, rules and names match one snapshot.
func (n *Net) reconcile(a subnet.Assigned, dns *servicedns.Server) {
	s := n.view.snapshot()
	local := n.o.Endpoints()
	n.setLocalTenants(local)

	entries, peers := routeInputs(s)
	if links, err := n.rt.Links(); err != nil {
		n.log.Warn("routes not updated: cannot read this node's links", "err", err)
	} else {
		d, problems := netroute.Plan(n.o.Node, entries, peers, links, n.o.Routes)
		// Reconciles follow every change; a problem is logged when it
		// appears, not again at each of them.
		seen := make(map[string]bool, len(problems))
		for _, p := range problems {
			msg := p.String()
			seen[msg] = true
			if !n.lastProblems[msg] {
				n.log.Warn("cluster route", "problem", msg)
			}
		}
		n.lastProblems = seen
		n.applyMTU(d, false, false)
		err := n.rt.Apply(d)
		if err != nil {
			n.log.Warn("cluster routes partly applied; retried at the next change", "err", err)
		}
		n.applyMTU(d, true, err == nil)
	}

	fc := filterConfig(s, local, a, n.o.Bridge, n.o.PortBindIP)
	if err := netfilter.Validate(fc); err != nil {
		n.log.Error("node rules not updated: the inputs are refused", "err", err)
	} else if rs, err := netfilter.Rules(fc); err != nil {
		n.log.Error("node rules not updated", "err", err)
	} else if err := netfilter.Apply(rs); err != nil {
		n.log.Error("node rules not updated", "err", err)
	}

	if dns != nil {
		dns.Update(servicedns.NewView(s.Specs, s.Statuses))
	}
}

// applyMTU gives the bridge and the containers d.MTU when mtuStep says
// so at this point of a reconcile; a failure is retried at the next one.
func (n *Net) applyMTU(d netroute.Desired, afterRoutes, routesOK bool) {
	if n.o.SetMTU == nil || !mtuStep(n.mtu, d.MTU, afterRoutes, routesOK) {
		return
	}
	if err := n.o.SetMTU(d.MTU); err != nil {
		if msg := err.Error(); msg != n.mtuErr {
			n.mtuErr = msg
			n.log.Warn("container network MTU not (fully) set; retried at the next reconcile", "mtu", d.MTU, "err", err)
		}
		return
	}
	n.log.Info("container network MTU set", "old", n.mtu, "new", d.MTU, "why", mtuReason(d))
	n.mtu, n.mtuErr = d.MTU, ""
}

// mtuStep says whether to set the containers' MTU to desired now, before
// (afterRoutes false) or after the routes of the same plan are applied;
// applied is the MTU set last (0: none yet). Containers never get more
// than the path carries: a lower MTU is set at once, before the routes
// lead anywhere narrower, a higher one only after the routes were
// applied without error (a VXLAN device that failed to go may still
// carry traffic). The first MTU since the agent started comes after the
// routes: the kernel's current MTU is not known. desired 0 (no underlay
// link known) leaves everything as it is.
func mtuStep(applied, desired int, afterRoutes, routesOK bool) bool {
	switch {
	case desired <= 0 || desired == applied:
		return false
	case desired < applied:
		return !afterRoutes
	case applied == 0:
		return afterRoutes
	default:
		return afterRoutes && routesOK
	}
}

// mtuReason says where an MTU comes from, for the log line of a change.
func mtuReason(d netroute.Desired) string {
	if d.VXLAN != nil {
		return fmt.Sprintf("VXLAN device %s in use: the underlay link's MTU minus the encapsulation", d.VXLAN.Name)
	}
	return "no VXLAN path: the MTU of the underlay links the routes use"
}

func (n *Net) setLocalTenants(local []workload.Endpoint) {
	m := map[netip.Addr]string{}
	for _, ep := range local {
		for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
			if a.IsValid() {
				m[a] = ep.Tenant
			}
		}
	}
	n.tenantsMu.Lock()
	n.tenantOf = m
	n.tenantsMu.Unlock()
}

// localTenant names the tenant of one of this node's container addresses:
// the DNS server answers a container with its own tenant's names only.
func (n *Net) localTenant(a netip.Addr) (string, bool) {
	n.tenantsMu.Lock()
	defer n.tenantsMu.Unlock()
	t, ok := n.tenantOf[a.Unmap()]
	return t, ok
}

// startDNS serves names on the bridge's gateways. An IPv6 gateway may
// still be tentative (duplicate address detection) for a moment, so it
// retries in the background; the returned pointer is set once it serves.
func (n *Net) startDNS(ctx context.Context, a subnet.Assigned) *atomic.Pointer[servicedns.Server] {
	var p atomic.Pointer[servicedns.Server]
	var listen []netip.AddrPort
	for _, g := range gateways(a) {
		listen = append(listen, netip.AddrPortFrom(g, n.o.DNSPort))
	}
	go func() {
		_ = retry.Do(ctx, retry.Policy{Initial: 500 * time.Millisecond, Max: 10 * time.Second, OnRetry: func(err error, wait time.Duration) {
			n.log.Warn("service names not served yet", "err", err, "retry_in", wait)
		}}, func() error {
			s, err := servicedns.Start(ctx, servicedns.Config{
				Listen: listen, ResolvConf: n.o.ResolvConf, TenantOf: n.localTenant,
				Log: n.log.With("component", "servicedns"),
			})
			if err != nil {
				return err
			}
			p.Store(s)
			n.view.Synced() // a first view at once
			n.log.Info("service names served", "listen", listen)
			return nil
		})
	}()
	return &p
}
