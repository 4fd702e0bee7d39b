// Package servicedns answers service names for containers: every job is
// JOB.TENANT.berth, served by a small DNS server inside every agent on the
// node's container bridge gateways, which the containers use as their
// resolver (ResolvConf renders their /etc/resolv.conf).
//
// # Names (all under berth., case-insensitive, TTL 1 s)
//
//	JOB.TENANT.berth                A/AAAA: one record per running replica
//	rN.JOB.TENANT.berth             A/AAAA: replica N only
//	_PORT._tcp.JOB.TENANT.berth     SRV: one per running replica for that container port
//	_PORT._udp.JOB.TENANT.berth     (likewise for udp ports)
//	_tcp.JOB.TENANT.berth           SRV: every tcp port of the job x every running replica
//	_udp.JOB.TENANT.berth           (likewise for udp ports)
//
// A replica is answered while its status (jobs.StatusKey) says "running"
// and carries an address, its job exists, is not stopped and still wants
// that replica (N < replicas). SRV records carry the container port (the
// port a peer reaches on the container's address; host ports are the
// node's business), priority 0, weight 1, target rN.JOB.TENANT.berth, and
// the target's A/AAAA in the additional section. PORT is the decimal port
// number (jobs have no port names), e.g. _8080._tcp.web.acme.berth.
//
// Job names may contain dots, so rN.JOB is ambiguous with a job named
// "rN.JOB": the whole name as a job wins, then the replica reading.
//
// A name that exists without records of the asked type (a job with no
// running replica, an IPv4-only replica asked for AAAA) is NOERROR with no
// answer (NODATA), never NXDOMAIN: stub resolvers drop the A answer of a
// name whose AAAA says NXDOMAIN. Negative answers carry the berth. SOA with
// a 1 s minimum, so no resolver caches absence for longer.
//
// # Tenants
//
// The server learns who asks from the query's source address:
// Config.TenantOf maps a container address of this node to its tenant (by
// default, the addresses of running replicas in the view). A container
// sees only its own tenant's names; every other tenant's name is NXDOMAIN,
// byte for byte the same reply as a job that does not exist, so existence
// does not leak. Queries from the node itself (loopback, or the listen
// addresses themselves; Config.IsNode overrides) see every tenant, for
// operators and health checks. Any other source (another node, a host
// routed to the bridge) is REFUSED for every name: the server is no open
// resolver.
//
// # Everything else
//
// A name not under berth. is forwarded to the node's own upstream servers
// (Config.Upstreams, or the nameserver lines of the node's resolv.conf,
// re-read when the file changes), in order, over UDP and again over TCP
// when the UDP reply is truncated; a query that came over TCP goes to the
// upstream over TCP directly (it came because the answer is large). When
// no upstream answers, the client gets SERVFAIL and the log says why. Names
// under berth. are never forwarded.
//
// # Wiring
//
// Start(ctx, Config) binds UDP and TCP on every Config.Listen address (the
// bridge gateways, port 53) and fails with one line naming the address and
// remedy. Server.Update swaps the in-memory View atomically; Watch keeps a
// View current from etcd (job specs and replica statuses under
// /berth/v1/tenants/) and may drive Update directly.
package servicedns
