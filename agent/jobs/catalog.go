package jobs

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// Catalog is an in-memory copy of the tenants' job documents and replica
// statuses, fed key by key from etcd (internal/etcdview): what the node
// network builds its service names and tenant rules from. Documents that
// do not decode, or that disagree with their key, are left out with a
// warning (a hand-written key must not give a container a name or an
// address of another tenant).
type Catalog struct {
	specs    map[JobRef]Job
	statuses map[string]ReplicaStatus // by key
	log      *slog.Logger
}

// NewCatalog returns an empty catalog; log may be nil.
func NewCatalog(log *slog.Logger) *Catalog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Catalog{log: log}
	c.Reset()
	return c
}

// Reset forgets everything (before a full load).
func (c *Catalog) Reset() {
	c.specs, c.statuses = map[JobRef]Job{}, map[string]ReplicaStatus{}
}

// Put records one key's document; it reports whether the key is one the
// catalog keeps (a job or a replica status).
func (c *Catalog) Put(key string, value []byte) bool { return c.apply(key, value, false) }

// Delete forgets one key's document.
func (c *Catalog) Delete(key string) bool { return c.apply(key, nil, true) }

func (c *Catalog) apply(key string, value []byte, deleted bool) bool {
	if ref, ok := ParseJobKey(key); ok {
		delete(c.specs, ref)
		if deleted {
			return true
		}
		j, err := DecodeJob(value)
		if err == nil && (j.Tenant != ref.Tenant || j.Name != ref.Job) {
			err = fmt.Errorf("names %s/%s", j.Tenant, j.Name)
		}
		if err != nil {
			c.log.Warn("job document is invalid; it gets no service name until fixed", "key", key, "err", err)
			return true
		}
		c.specs[ref] = j
		return true
	}
	id, ok := ParseStatusKey(key)
	if !ok {
		return false // placement, usage, ...
	}
	delete(c.statuses, key)
	if deleted {
		return true
	}
	var st ReplicaStatus
	if err := json.Unmarshal(value, &st); err != nil || st.Tenant != id.Tenant || st.Job != id.Job || st.Replica != id.Replica {
		c.log.Warn("replica status is invalid; the replica gets no name or address until it is rewritten", "key", key, "err", err)
		return true
	}
	c.statuses[key] = st
	return true
}

// Specs returns the valid job documents.
func (c *Catalog) Specs() []Job {
	out := make([]Job, 0, len(c.specs))
	for _, j := range c.specs {
		out = append(out, j)
	}
	return out
}

// Statuses returns the valid replica statuses.
func (c *Catalog) Statuses() []ReplicaStatus {
	out := make([]ReplicaStatus, 0, len(c.statuses))
	for _, st := range c.statuses {
		out = append(out, st)
	}
	return out
}
