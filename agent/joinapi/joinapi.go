// Package joinapi is the agent's join endpoint (POST /v1/join over HTTPS) and
// its client. A new node proves it holds the join token's secret; it trusts
// the server only if the server's certificate chains to a CA whose public-key
// hash equals the one in the token (so no CA file has to be copied first).
package joinapi

import (
	"net"
	"net/url"
)

// Path is the join endpoint.
const Path = "/v1/join"

// Roles a joining node is given.
const (
	RoleLearner = "learner" // a new etcd member that the leader's agent promotes to voter
	RoleClient  = "client"  // no etcd member: the node uses the cluster through a client
)

// Request is what a joining node sends.
type Request struct {
	Name      string `json:"name"`
	Secret    string `json:"secret"`
	PeerURL   string `json:"peer_url"`
	ClientURL string `json:"client_url"`
	APIURL    string `json:"api_url"`
	// Containers: the node will run containers and lease container
	// subnets; the join is refused when the cluster's range has none left.
	Containers bool `json:"containers,omitempty"`
}

// Response tells the node how to start and gives it its credentials.
type Response struct {
	Role string `json:"role"`
	// InitialCluster is etcd's initial-cluster string (learners only).
	InitialCluster string `json:"initial_cluster,omitempty"`
	// ClientURLs are the voting members' client URLs.
	ClientURLs []string `json:"client_urls"`
	CACert     string   `json:"ca_cert"`
	// CAKey is sent only to future voters, so any voter can admit nodes.
	CAKey    string `json:"ca_key,omitempty"`
	NodeCert string `json:"node_cert"`
	NodeKey  string `json:"node_key"`
	Token    string `json:"token"`
}

// errorBody is the JSON of every refusal.
type errorBody struct {
	Error string `json:"error"`
}

// CertAddresses returns the IP and DNS SANs a node certificate needs for
// the given URLs. On loopback a connection's source address is 127.0.0.1
// whatever 127.x address the node listens on, and etcd checks a peer's
// certificate against the source address, so loopback nodes also get
// 127.0.0.1.
func CertAddresses(rawURLs ...string) (ips []net.IP, dns []string) {
	seenIP := map[string]bool{}
	seenDNS := map[string]bool{}
	loopback := false
	for _, raw := range rawURLs {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			continue
		}
		host := u.Hostname()
		if ip := net.ParseIP(host); ip != nil {
			if !seenIP[ip.String()] {
				seenIP[ip.String()] = true
				ips = append(ips, ip)
			}
			loopback = loopback || ip.IsLoopback()
			continue
		}
		if !seenDNS[host] {
			seenDNS[host] = true
			dns = append(dns, host)
		}
	}
	if lo := net.IPv4(127, 0, 0, 1); loopback && !seenIP[lo.String()] {
		ips = append(ips, lo)
	}
	return ips, dns
}
