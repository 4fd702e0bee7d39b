package nodedoc

import (
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Values of Node.EtcdSpace.
const (
	// SpaceLow: this node's etcd member's file passed 80% of the quota.
	SpaceLow = "low"
	// SpaceFull: the cluster has a NOSPACE alarm and refuses writes.
	SpaceFull = "full"
)

// IsNoSpace tells whether err is etcd refusing a write because its
// database reached the quota (the NOSPACE alarm is raised).
func IsNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace)
}

// NoSpaceHint is what happens after a NOSPACE refusal and what to do when
// it does not.
const NoSpaceHint = "etcd's database reached its quota (NOSPACE alarm) and refuses writes; " +
	"the agents compact, defragment and disarm it by themselves once space is back; " +
	"if it persists, delete data or raise etcd_quota on every member"

// ExplainNoSpace adds NoSpaceHint to a NOSPACE refusal and returns any
// other error unchanged.
func ExplainNoSpace(err error) error {
	if err == nil || !IsNoSpace(err) {
		return err
	}
	return fmt.Errorf("%w: %s", err, NoSpaceHint)
}
