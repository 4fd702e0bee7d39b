package cluster

import (
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// NodeClient is an etcd client acting as this node (its certificate), for
// commands run beside the agent such as DRBD's fence-peer handler: it
// works while the agent itself is down, through the endpoints the data
// dir last recorded (this node's own member among them when it votes).
// It returns the node's name as well.
func NodeClient(dataDirPath string) (*clientv3.Client, string, error) {
	d := dataDir(dataDirPath)
	rec, err := d.loadRecord()
	if err != nil {
		return nil, "", err
	}
	if rec == nil || len(rec.Endpoints) == 0 {
		return nil, "", errors.New("this node has not joined a cluster (no endpoints in its data dir)")
	}
	tlsCfg, err := d.clientTLS()
	if err != nil {
		return nil, "", err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: rec.Endpoints, TLS: tlsCfg, DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, "", fmt.Errorf("etcd client: %w", err)
	}
	return cli, rec.Name, nil
}
