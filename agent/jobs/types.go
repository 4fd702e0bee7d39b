// Package jobs defines what operators submit (Job), what the scheduler
// writes (Assignment, JobPlacement), what agents report (ReplicaStatus,
// Usage), where each lives in etcd, and the strict parser of job files.
package jobs

import (
	"encoding/json"
	"fmt"
	"time"
)

// Schemas of the documents; each changes only with an incompatible change.
const (
	JobSchema        = "berth.job.v1"
	AssignmentSchema = "berth.assignment.v1"
	ReplicaSchema    = "berth.replica.v1"
	PlacementSchema  = "berth.placement.v1"
)

// Restart policies.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Replica states in ReplicaStatus.State.
const (
	StatePending  = "pending"
	StatePulling  = "pulling"
	StateStarting = "starting"
	StateRunning  = "running"
	StateExited   = "exited"
	StateFailed   = "failed"
	StateStopped  = "stopped"
)

// Job is the document at JobKey. Pointer fields are filled with their
// defaults by ParseJob and WithDefaults, so a stored job is explicit.
type Job struct {
	Schema             string            `json:"schema"`
	Name               string            `json:"name"`
	Tenant             string            `json:"tenant"`
	Image              string            `json:"image"`
	ImageDigest        string            `json:"image_digest,omitempty"` // pinned by berthctl run: what every replica runs
	Command            []string          `json:"command,omitempty"`
	Args               []string          `json:"args,omitempty"`
	Env                map[string]string `json:"env,omitempty"`
	Replicas           int               `json:"replicas"`
	Resources          Resources         `json:"resources"`
	ReadOnlyRoot       *bool             `json:"read_only_root,omitempty"`
	Volumes            []Volume          `json:"volumes,omitempty"`
	Ports              []Port            `json:"ports,omitempty"`
	Restart            string            `json:"restart"`
	NodeSelector       map[string]string `json:"node_selector,omitempty"`
	Spread             *bool             `json:"spread,omitempty"`
	Stopped            bool              `json:"stopped,omitempty"`
	StopTimeoutSeconds int               `json:"stop_timeout_seconds"`
}

// Resources a replica reserves on its node (and is limited to).
type Resources struct {
	CPUMillis   int64 `json:"cpu_millis"`
	MemoryBytes int64 `json:"memory_bytes"`
	Pids        int64 `json:"pids,omitempty"` // 0 = runtime default
}

// Volume is persistent storage mounted at Path: a directory on the node
// (Replicas 0 or 1), or a block device of SizeBytes with ext4 kept on two
// nodes by DRBD (Replicas 2, agent/volume).
type Volume struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
	Replicas  int    `json:"replicas,omitempty"`
}

// Replicated tells whether the volume is a synchronous DRBD pair.
func (v Volume) Replicated() bool { return v.Replicas == 2 }

// MinVolumeSize is the smallest replicated volume: ext4's journal and
// DRBD's metadata need room.
const MinVolumeSize = 64 << 20

// Port publishes a container port on the node.
type Port struct {
	Container int    `json:"container"`
	Host      int    `json:"host"`
	Protocol  string `json:"protocol"`
}

// Assignment is the document at AssignKey, written by the scheduler only.
type Assignment struct {
	Schema      string    `json:"schema"`
	Tenant      string    `json:"tenant"`
	Job         string    `json:"job"`
	Replica     int       `json:"replica"`
	Node        string    `json:"node"`
	Generation  int64     `json:"generation"`   // bumped on every re-placement
	Epoch       int64     `json:"epoch"`        // scheduler election revision that wrote it
	JobRevision int64     `json:"job_revision"` // mod revision of the job key
	Spec        Job       `json:"spec"`
	Assigned    time.Time `json:"assigned"`
}

// ID is the replica the assignment is for.
func (a Assignment) ID() ReplicaID {
	return ReplicaID{Tenant: a.Tenant, Job: a.Job, Replica: a.Replica}
}

// Key is where the assignment is stored.
func (a Assignment) Key() string { return AssignKey(a.Node, a.Tenant, a.Job, a.Replica) }

// ContainerID is the container that runs this assignment.
func (a Assignment) ContainerID() string {
	return ContainerID(a.Tenant, a.Job, a.Replica, a.Generation)
}

// ReplicaStatus is the document at StatusKey, written by the node running it.
type ReplicaStatus struct {
	Schema      string     `json:"schema"`
	Tenant      string     `json:"tenant"`
	Job         string     `json:"job"`
	Replica     int        `json:"replica"`
	Node        string     `json:"node"`
	Generation  int64      `json:"generation"`
	State       string     `json:"state"`
	ContainerID string     `json:"container_id,omitempty"`
	ImageDigest string     `json:"image_digest,omitempty"` // manifest digest of the image the container runs
	Restarts    int        `json:"restarts"`
	ExitCode    *int       `json:"exit_code,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	IPv4        string     `json:"ipv4,omitempty"`
	IPv6        string     `json:"ipv6,omitempty"`
	Updated     time.Time  `json:"updated"`
}

// JobPlacement is the scheduler's summary at PlacementKey: how many replicas
// are placed and, when not all are, why.
type JobPlacement struct {
	Schema      string    `json:"schema"`
	Tenant      string    `json:"tenant"`
	Job         string    `json:"job"`
	JobRevision int64     `json:"job_revision"`
	Desired     int       `json:"desired"`
	Placed      int       `json:"placed"`            // assigned to a live node
	Waiting     int       `json:"waiting,omitempty"` // assigned to a node that is gone but within grace, or holds its volumes
	Message     string    `json:"message"`
	Updated     time.Time `json:"updated"`
}

// Usage is the document at UsageKey: what a tenant consumed on one node.
type Usage struct {
	CPUSeconds     float64   `json:"cpu_seconds"`
	MemoryGiBHours float64   `json:"memory_gib_hours"`
	Updated        time.Time `json:"updated"`
}

// Quota is the document at QuotaKey; 0 means unlimited.
type Quota struct {
	CPUMillis   int64 `json:"cpu_millis"`
	MemoryBytes int64 `json:"memory_bytes"`
}

// VolumeHome is the document at VolumeHomeKey.
type VolumeHome struct {
	Node string `json:"node"`
}

// Marshal encodes a job as stored in etcd.
func (j Job) Marshal() ([]byte, error) {
	data, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("encode job %s/%s: %w", j.Tenant, j.Name, err)
	}
	return data, nil
}

// DecodeJob reads a stored job (compact JSON written by Marshal) and
// validates it, so that a reader never acts on a half-valid job.
func DecodeJob(data []byte) (Job, error) {
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return Job{}, fmt.Errorf("decode job: %w", err)
	}
	j = j.WithDefaults()
	if err := j.Validate(); err != nil {
		return Job{}, fmt.Errorf("job %s/%s: %w", j.Tenant, j.Name, err)
	}
	return j, nil
}

// DecodeAssignment reads a stored assignment and checks its schema.
func DecodeAssignment(data []byte) (Assignment, error) {
	var a Assignment
	if err := json.Unmarshal(data, &a); err != nil {
		return Assignment{}, fmt.Errorf("decode assignment: %w", err)
	}
	if a.Schema != AssignmentSchema {
		return Assignment{}, fmt.Errorf("assignment %s has schema %q, want %q", a.ID(), a.Schema, AssignmentSchema)
	}
	return a, nil
}

// WithDefaults fills what the operator left out.
func (j Job) WithDefaults() Job {
	if j.Schema == "" {
		j.Schema = JobSchema
	}
	if j.ReadOnlyRoot == nil {
		j.ReadOnlyRoot = ptr(true)
	}
	if j.Spread == nil {
		j.Spread = ptr(true)
	}
	if j.Restart == "" {
		j.Restart = RestartAlways
	}
	if j.StopTimeoutSeconds == 0 {
		j.StopTimeoutSeconds = DefaultStopTimeoutSeconds
	}
	if len(j.Ports) > 0 {
		ports := make([]Port, len(j.Ports))
		for i, p := range j.Ports {
			if p.Host == 0 {
				p.Host = p.Container // a listed port is meant to be published
			}
			if p.Protocol == "" {
				p.Protocol = "tcp"
			}
			ports[i] = p
		}
		j.Ports = ports
	}
	return j
}

func ptr[T any](v T) *T { return &v }
