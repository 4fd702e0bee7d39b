package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/berth-os/berth/agent/joinapi"
	"github.com/berth-os/berth/agent/pki"
	"github.com/berth-os/berth/internal/atomicfile"
)

// provisioner produces the data-dir record the agent starts from: the one
// already there (restart), a new cluster's (bootstrap), an existing
// cluster's (join) or, after self-healing removed this member, the same
// cluster's again (rejoin, rejoin.go).
type provisioner struct {
	dir         dataDir
	name        string
	clusterName string
	peerURL     string
	clientURL   string
	apiURL      string
	voters      int
	// join and token are the configured ones; a rejoin replaces them with
	// rejoin.json's, which a later removal then writes again.
	join        []string
	token       string
	tokenOutput func(token string)
	log         *slog.Logger
	containers  bool // the node will lease container subnets (told at join)
}

// open returns the record of the data dir, making one first when the data
// dir has none.
func (p *provisioner) open(ctx context.Context) (*dataDirRecord, error) {
	if err := os.MkdirAll(string(p.dir), 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	rec, err := p.dir.loadRecord()
	if err != nil {
		return nil, err
	}
	switch {
	case rec != nil:
		if rec.Name != p.name {
			return nil, fmt.Errorf("data dir %s belongs to node %q, not %q", p.dir, rec.Name, p.name)
		}
		p.log.Info("restarting from data dir", "member", rec.Member)
		return rec, nil
	case exists(p.dir.path(etcdDir)) || exists(p.dir.path(pkiDir)):
		return nil, fmt.Errorf("data dir %s holds an interrupted bootstrap or join: empty it and start again", p.dir)
	case len(p.join) == 0 && exists(p.dir.path(rejoinFile)):
		return p.rejoin(ctx)
	case len(p.join) == 0:
		return p.bootstrap()
	default:
		return p.joinCluster(ctx)
	}
}

// bootstrap creates the cluster's CA, token and this node's credentials
// for a new single-voter cluster.
func (p *provisioner) bootstrap() (*dataDirRecord, error) {
	p.log.Info("bootstrapping a new cluster", "voters", p.voters)
	ca, err := pki.NewCA(p.clusterName)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	token, err := pki.NewToken(pki.CAHash(ca.Cert))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if p.token != "" {
		// A secret chosen before the cluster existed (provisioning):
		// nodes configured with it can join without knowing the CA hash.
		preset, err := pki.ParseToken(p.token)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		token.Secret = preset.Secret
	}
	ips, dns := joinapi.CertAddresses(p.peerURL, p.clientURL, p.apiURL)
	certPEM, keyPEM, err := ca.Issue(p.name, pki.ServerClient, ips, dns)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: node certificate: %w", err)
	}
	// Token and record last: their presence marks a complete setup.
	if err := ca.Save(p.dir.path(pkiDir)); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := pki.WritePair(p.dir.path(pkiDir), "node", certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := atomicfile.WriteFile(p.dir.path(tokenFile), []byte(token.String()+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	clusterToken := make([]byte, 8)
	if _, err := rand.Read(clusterToken); err != nil {
		return nil, fmt.Errorf("cluster token: %w", err)
	}
	rec := &dataDirRecord{
		Name:           p.name,
		Member:         true,
		InitialCluster: p.name + "=" + p.peerURL,
		ClusterState:   embed.ClusterStateFlagNew,
		ClusterToken:   p.clusterName + "-" + hex.EncodeToString(clusterToken),
		Endpoints:      []string{p.clientURL},
	}
	if err := p.dir.saveRecord(rec); err != nil {
		return nil, err
	}
	p.tokenOutput(token.String())
	p.log.Info("join token written", "file", p.dir.path(tokenFile))
	return rec, nil
}

// joinCluster asks an existing agent to admit this node and stores what
// it gets.
func (p *provisioner) joinCluster(ctx context.Context) (*dataDirRecord, error) {
	token, err := pki.ParseToken(p.token)
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	p.log.Info("joining cluster", "via", p.join)
	jctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if token.Bare() {
		if token.CAHash, err = joinapi.DiscoverCA(jctx, p.join, token.Secret); err != nil {
			return nil, err
		}
		p.log.Info("cluster CA authenticated with the join secret", "ca_hash", token.CAHash)
	}
	resp, err := joinapi.Join(jctx, p.join, token, joinapi.Request{
		Name: p.name, PeerURL: p.peerURL, ClientURL: p.clientURL, APIURL: p.apiURL, Containers: p.containers,
	})
	if err != nil {
		return nil, err
	}
	dir := p.dir.path(pkiDir)
	if err := atomicfile.WriteFile(dir+"/ca.crt", []byte(resp.CACert), 0o644); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if resp.CAKey != "" {
		if err := atomicfile.WriteFile(dir+"/ca.key", []byte(resp.CAKey), 0o600); err != nil {
			return nil, fmt.Errorf("join: %w", err)
		}
	}
	if err := pki.WritePair(dir, "node", []byte(resp.NodeCert), []byte(resp.NodeKey)); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := atomicfile.WriteFile(p.dir.path(tokenFile), []byte(resp.Token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	rec := &dataDirRecord{
		Name:      p.name,
		Member:    resp.Role == joinapi.RoleLearner,
		Endpoints: resp.ClientURLs,
		AuthDone:  true,
	}
	if rec.Member {
		rec.InitialCluster = resp.InitialCluster
		rec.ClusterState = embed.ClusterStateFlagExisting
	}
	if err := p.dir.saveRecord(rec); err != nil {
		return nil, err
	}
	p.log.Info("joined cluster", "role", resp.Role)
	return rec, nil
}
