package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/agent/cluster"
	"github.com/berth-os/berth/agent/config"
	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/images"
	"github.com/berth-os/berth/agent/netroute"
	"github.com/berth-os/berth/agent/netsetup"
	"github.com/berth-os/berth/agent/nodedoc"
	"github.com/berth-os/berth/agent/nodenet"
	"github.com/berth-os/berth/agent/registry"
	"github.com/berth-os/berth/agent/runtime"
	"github.com/berth-os/berth/agent/sched"
	"github.com/berth-os/berth/agent/subnet"
	"github.com/berth-os/berth/agent/volume"
	"github.com/berth-os/berth/agent/volume/thinpool"
	"github.com/berth-os/berth/agent/workload"
	"github.com/berth-os/berth/internal/retry"
)

// nodeRegistry is this node's cluster registry with what it follows:
// the peers (other agents' API URLs) and the tags in etcd.
type nodeRegistry struct {
	*registry.Registry
	peers *peerList
	tags  *registry.EtcdTags
}

// openRegistry opens the node's registry storage under the state dir.
func openRegistry(cfg config.Config, log *slog.Logger) (*nodeRegistry, error) {
	r := &nodeRegistry{peers: &peerList{self: cfg.APIURL}, tags: &registry.EtcdTags{}}
	var err error
	r.Registry, err = registry.New(registry.Options{
		Dir:        filepath.Join(cfg.StateDir, "registry"),
		Peers:      r.peers.urls,
		PeerClient: &http.Client{Transport: lazyNodeTransport(cfg.DataDir), Timeout: 5 * time.Minute},
		Log:        log.With("component", "registry"),
		Authorize:  true,
		Tags:       r.tags,
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// workloads wires the container side of the agent into cluster.Options:
// the scheduler and the node's workload manager as services, and the node
// API and the cluster registry on the agent's HTTPS listener.
func workloads(cfg config.Config, opts *cluster.Options, reg *nodeRegistry, log *slog.Logger) error {
	api := func(mux *http.ServeMux) { mux.Handle("/v2/", reg.Registry) }
	opts.Services = append(opts.Services, reg.peers.follow, func(ctx context.Context, cli *clientv3.Client) error {
		reg.tags.SetClient(cli) // tags live in etcd: one answer on every node
		<-ctx.Done()
		return nil
	}, func(ctx context.Context, cli *clientv3.Client) error {
		ensureTenantRoles(ctx, cli, log.With("component", "tenants"))
		return nil
	})
	// Every node takes part in reclaiming subnets; only a node running
	// containers leases them.
	subnets := subnet.NewNode(subnet.NodeOptions{
		Name: cfg.Name, Bootstrap: len(cfg.Join) == 0, Ranges: cfg.ClusterRanges,
		Containers: cfg.RunContainers(), Own4: cfg.BridgePrefix4, Own6: cfg.BridgePrefix6, NoIPv6: cfg.IPv6Off(),
		Addrs: cfg.NodeAddrs(), Log: log.With("component", "subnets"),
	})
	opts.Services = append(opts.Services, subnets.Run)
	opts.SubnetRoom = subnet.CheckRoom
	opts.LeasesSubnets = cfg.RunContainers() && !cfg.BridgePrefix4.IsValid()
	if !cfg.RunContainers() {
		opts.API = api
		return nil
	}

	rt, err := runtime.NewShim(runtime.ShimOptions{Root: filepath.Join(cfg.StateDir, "containers"), Log: log.With("component", "runtime")})
	if err != nil {
		return err
	}
	apiHost := ""
	if u, err := url.Parse(cfg.APIURL); err == nil {
		apiHost = u.Host
	}
	store, err := images.Open(filepath.Join(cfg.StateDir, "images"), images.Options{
		Transport: imageTransport(cfg.DataDir, apiHost), Log: log.With("component", "images"),
	})
	if err != nil {
		return err
	}
	// The bridge is configured only once the node's subnets are leased
	// (or found again): the workload side and the node network ask on
	// first use, and share one opened network.
	var netMu sync.Mutex
	var opened *netsetup.Network
	openNet := func() (*netsetup.Network, error) {
		netMu.Lock()
		defer netMu.Unlock()
		if opened != nil {
			return opened, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := subnets.Wait(ctx)
		if err != nil {
			return nil, err
		}
		n, err := netsetup.Open(netsetup.Config{
			Bridge: cfg.Bridge, Subnet4: got.IPv4, Subnet6: got.IPv6,
			DisableIPv6: !got.IPv6.IsValid(),
			StateDir:    filepath.Join(cfg.StateDir, "net"),
			NetNSDir:    cfg.NetNSDir,
		})
		if err == nil {
			opened = n
		}
		return n, err
	}
	// A node with leased subnets is part of the cluster network (routes,
	// rules, names); one with an explicit bridge_subnet keeps a node-local
	// network whose TCP ports the shim proxies.
	clusterNet := !cfg.BridgePrefix4.IsValid()
	var nn *nodenet.Net
	vols := volume.NewLocal(cfg.Name, &volume.Host{
		Agent:    "/usr/bin/berth-agent",
		MountDir: "/run/berth/volumes/mnt",
		StateDir: filepath.Join(cfg.StateDir, "volume-drbd"),
		Log:      log.With("component", "volumes"),
	}, thinpool.Config{
		Dir:  filepath.Join(cfg.StateDir, "volume-pool"),
		Size: volumePoolSize(cfg.StateDir),
		Log:  log.With("component", "volume-pool"),
	}, log.With("component", "volumes"))
	// One agent per process on nodes; tests run several, and only the
	// first one's volumes are on /metrics then.
	if err := prometheus.Register(vols); err != nil {
		log.Debug("volume metrics not registered", "err", err)
	}
	mgrOpts := workload.Options{
		Node: cfg.Name, Runtime: rt, Images: store, Replicated: vols,
		Network:       func() (workload.Network, error) { return openNet() },
		VolumesDir:    filepath.Join(cfg.StateDir, "volumes"),
		PortBindIP:    cfg.PortBindIP,
		KernelPorts:   clusterNet,
		TenantCgroups: path.Join(cfg.CgroupParent, "tenants"),
		StateDir:      cfg.StateDir,
		LocalRegistry: apiHost,
		Log:           log,
	}
	if clusterNet {
		mgrOpts.ResolvConf = func(tenant string) []byte { return nn.ResolvConf(tenant) }
	}
	mgr, err := workload.New(mgrOpts)
	if err != nil {
		return err
	}
	if clusterNet {
		nn, err = nodenet.New(nodenet.Options{
			Node: cfg.Name, Bridge: cfg.Bridge,
			Subnets:    func(ctx context.Context) (subnet.Assigned, error) { return subnets.Wait(ctx) },
			OpenBridge: func() error { _, err := openNet(); return err },
			Routes:     netroute.Config{Mode: cfg.ClusterNetwork},
			Endpoints:  mgr.Endpoints, EndpointsChanged: mgr.EndpointsChanged(),
			PortBindIP: netip.MustParseAddr(cfg.PortBindIP),
			Log:        log,
			// The MTU the routes allow, on the network the containers share.
			SetMTU: func(mtu int) error {
				n, err := openNet()
				if err != nil {
					return err
				}
				return n.SetMTU(mtu)
			},
		})
		if err != nil {
			return err
		}
		opts.Services = append(opts.Services, nn.Run)
	}
	opts.Services = append(opts.Services, vols.Run, mgr.Run, func(ctx context.Context, cli *clientv3.Client) error {
		s := sched.New(cli, sched.Options{Name: cfg.Name, Grace: cfg.RescheduleGrace.Duration, Log: log.With("component", "scheduler")})
		return s.Run(ctx)
	})
	opts.VolumePool = vols.Space
	opts.Containers = func() (int, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return mgr.Counts(ctx)
	}
	opts.API = func(mux *http.ServeMux) {
		api(mux)
		mgr.Routes(mux)
	}
	return nil
}

// volumePoolSize is the data size of a new volume pool: half of the
// state file system, in whole 64 KiB blocks. The file is sparse: space is
// taken as volumes write, and the state partition also holds images,
// containers and etcd.
func volumePoolSize(stateDir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(stateDir, &st); err != nil {
		return 0 // the pool refuses to open, saying so
	}
	half := int64(st.Blocks) * st.Bsize / 2
	return half / thinpool.BlockSize * thinpool.BlockSize
}

// ensureTenantRoles brings the etcd roles of tenants added by an older
// berthctl up to the current grants (ctl.TenantGrants), once per agent
// start: roles change only at berthctl tenant add, and without the
// registry tag ranges such a tenant's berthctl run cannot pin its own or
// library/ images. Done by the agents (etcd root) rather than asking the
// administrator to re-add each tenant, which would also reset its quota.
// It retries until it has checked every role; it never stops the agent.
func ensureTenantRoles(ctx context.Context, cli *clientv3.Client, log *slog.Logger) {
	// Only ctx's end makes it give up, and that needs no report.
	_ = retry.Do(ctx, retry.Policy{
		Initial: time.Second, Max: 30 * time.Second,
		OnRetry: func(err error, wait time.Duration) {
			log.Warn("checking tenant roles failed; retrying", "err", err, "retry_in", wait)
		},
	}, func() error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		fixed, err := ctl.EnsureTenantRoles(rctx, cli)
		cancel()
		for _, f := range fixed {
			log.Info("tenant role brought up to date", "tenant", f.Tenant, "granted", f.Granted)
		}
		return err
	})
}

// lazyNodeTransport is an HTTPS transport that presents this node's
// certificate and trusts only the cluster CA. The files exist only after
// bootstrap or join, so they are read on first use.
func lazyNodeTransport(dataDir string) http.RoundTripper {
	var once sync.Once
	var tr http.RoundTripper
	var trErr error
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		once.Do(func() {
			pkiDir := filepath.Join(dataDir, "pki")
			cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "node.crt"), filepath.Join(pkiDir, "node.key"))
			if err != nil {
				trErr = fmt.Errorf("node certificate: %w", err)
				return
			}
			ca, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
			if err != nil {
				trErr = fmt.Errorf("cluster CA: %w", err)
				return
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(ca)
			base := http.DefaultTransport.(*http.Transport).Clone()
			base.TLSClientConfig = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
			tr = base
		})
		if trErr != nil {
			return nil, trErr
		}
		return tr.RoundTrip(r)
	})
}

// imageTransport carries image pulls: to this node's own registry (the
// cluster registry) with the node's certificate; to any other registry
// trusting the system's roots and the cluster CA, without presenting the
// node's identity to it.
func imageTransport(dataDir, localHost string) http.RoundTripper {
	node := lazyNodeTransport(dataDir)
	var once sync.Once
	var outside http.RoundTripper
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host == localHost {
			return node.RoundTrip(r)
		}
		once.Do(func() {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if ca, err := os.ReadFile(filepath.Join(dataDir, "pki", "ca.crt")); err == nil {
				pool.AppendCertsFromPEM(ca)
			}
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			outside = tr
		})
		return outside.RoundTrip(r)
	})
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// peerList keeps the API URLs of the other agents (from their role
// entries), for the registry's fallback to peers.
type peerList struct {
	self string
	mu   sync.Mutex
	list []string
}

func (p *peerList) urls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.list...)
}

// follow refreshes the list every few seconds until ctx ends.
func (p *peerList) follow(ctx context.Context, cli *clientv3.Client) error {
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Get(gctx, nodedoc.RolesPrefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			var list []string
			for _, kv := range resp.Kvs {
				var r nodedoc.RoleEntry
				if json.Unmarshal(kv.Value, &r) == nil && r.APIURL != "" && r.APIURL != p.self {
					list = append(list, r.APIURL)
				}
			}
			p.mu.Lock()
			p.list = list
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
}
