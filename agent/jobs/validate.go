package jobs

import (
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
)

// Limits of a job. Tenant names are shorter than job names so that the
// container ID (tenant.job.replica.gGENERATION) stays within the runtime's
// 128 characters.
const (
	MaxReplicas               = 1000
	MaxTenantNameLen          = 32
	MaxJobNameLen             = 63
	MaxCPUMillis              = 1_000_000 // 1000 cores
	MinMemoryBytes            = 4 << 20
	MaxMemoryBytes            = 1 << 50 // 1 PiB
	MaxPids                   = 4_194_304
	MaxStopTimeoutSeconds     = 3600
	DefaultStopTimeoutSeconds = 10
	MaxListLen                = 1000 // command, args, env, volumes, ports, node_selector entries
	MaxEncodedJobBytes        = 128 << 10
)

// FieldError is a validation problem of one field; Problem says what is
// wrong and what is expected.
type FieldError struct {
	Field   string // e.g. "volumes[1].path"
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// CheckTenantName accepts 1..32 of a-z, 0-9 and inner '-'. No dots: the
// first dot of a container ID ends the tenant.
// The registry's shared namespaces (library, berth) are reserved.
func CheckTenantName(s string) error {
	if s == SharedNamespace || s == SystemNamespace {
		return fmt.Errorf("tenant name %q is reserved (a shared namespace of the cluster registry)", s)
	}
	return checkName("tenant", s, MaxTenantNameLen, false)
}

// CheckJobName accepts 1..63 of a-z, 0-9 and inner '-' or '.', like node names.
func CheckJobName(s string) error {
	return checkName("job", s, MaxJobNameLen, true)
}

// clip keeps quoted input in messages short.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func checkName(kind, s string, maxLen int, dots bool) error {
	inner := "'-'"
	if dots {
		inner = "'-' or '.'"
	}
	if s == "" {
		return fmt.Errorf("%s name is empty; expected 1..%d of a-z, 0-9, inner %s", kind, maxLen, inner)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%s name %q is longer than %d characters", kind, clip(s), maxLen)
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		mid := r == '-' || dots && r == '.'
		if !alnum && !(mid && i > 0 && i < len(s)-1) {
			return fmt.Errorf("%s name %q: character %q at %d not allowed; expected a-z, 0-9, inner %s", kind, clip(s), r, i, inner)
		}
	}
	return nil
}

// Validate checks a complete job (tenant included), as stored in etcd.
func (j Job) Validate() error {
	if err := j.validate(true); err != nil {
		return err
	}
	return nil
}

// validate returns the first problem as a *FieldError (nil if none), so the
// parser can point at the line of the field.
func (j Job) validate(requireTenant bool) *FieldError {
	if j.Schema != JobSchema {
		return fieldErr("schema", "%q is not supported; expected %q", clip(j.Schema), JobSchema)
	}
	if err := CheckJobName(j.Name); err != nil {
		return fieldErr("name", "%v", trimKind(err))
	}
	if j.Tenant != "" || requireTenant {
		if err := CheckTenantName(j.Tenant); err != nil {
			return fieldErr("tenant", "%v", trimKind(err))
		}
	}
	if fe := checkImage(j.Image); fe != nil {
		return fe
	}
	if j.ImageDigest != "" && !IsDigest(j.ImageDigest) {
		return fieldErr("image_digest", "%q is not a sha256 digest; expected sha256:<64 hex>", clip(j.ImageDigest))
	}
	if fe := checkStrings("command", j.Command); fe != nil {
		return fe
	}
	if fe := checkStrings("args", j.Args); fe != nil {
		return fe
	}
	if fe := checkEnv(j.Env); fe != nil {
		return fe
	}
	if j.Replicas < 0 || j.Replicas > MaxReplicas {
		return fieldErr("replicas", "%d is out of range; expected 0..%d", j.Replicas, MaxReplicas)
	}
	if fe := j.Resources.check(); fe != nil {
		return fe
	}
	if j.ReadOnlyRoot == nil {
		return fieldErr("read_only_root", "missing; expected true or false")
	}
	if j.Spread == nil {
		return fieldErr("spread", "missing; expected true or false")
	}
	if fe := checkVolumes(j.Volumes); fe != nil {
		return fe
	}
	if fe := checkPorts(j.Ports); fe != nil {
		return fe
	}
	switch j.Restart {
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		return fieldErr("restart", "%q is not a policy; expected always, on-failure or never", clip(j.Restart))
	}
	if fe := checkSelector(j.NodeSelector); fe != nil {
		return fe
	}
	if j.StopTimeoutSeconds < 1 || j.StopTimeoutSeconds > MaxStopTimeoutSeconds {
		return fieldErr("stop_timeout_seconds", "%d is out of range; expected 1..%d", j.StopTimeoutSeconds, MaxStopTimeoutSeconds)
	}
	// The job is copied into every assignment; keep it well under etcd's
	// request limit so the scheduler can batch many per transaction.
	if data, err := json.Marshal(j); err != nil || len(data) > MaxEncodedJobBytes {
		return fieldErr("name", "job is larger than %d bytes encoded; expected a smaller env, command or args", MaxEncodedJobBytes)
	}
	return nil
}

// trimKind drops the "job name " / "tenant name " lead of a name error,
// which the field name already says.
func trimKind(err error) string {
	s := err.Error()
	for _, p := range []string{"job name ", "tenant name "} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			return rest
		}
	}
	return s
}

func checkImage(ref string) *FieldError {
	if ref == "" {
		return fieldErr("image", "missing; expected an image reference like registry.example:5000/app:1.2 or app@sha256:...")
	}
	if !utf8.ValidString(ref) || strings.ContainsAny(ref, " \t\r\n") {
		return fieldErr("image", "%q contains white space or invalid UTF-8; expected an image reference", clip(ref))
	}
	if _, err := name.ParseReference(ref); err != nil {
		return fieldErr("image", "%q is not an image reference; expected like registry.example:5000/app:1.2 or app@sha256:...", clip(ref))
	}
	return nil
}

func checkText(field, s string) *FieldError {
	if !utf8.ValidString(s) {
		return fieldErr(field, "is not valid UTF-8; expected text")
	}
	if strings.ContainsRune(s, 0) {
		return fieldErr(field, "contains a NUL byte; expected text without NUL")
	}
	return nil
}

func checkStrings(field string, list []string) *FieldError {
	if len(list) > MaxListLen {
		return fieldErr(field, "has %d entries; expected at most %d", len(list), MaxListLen)
	}
	for i, s := range list {
		if fe := checkText(fmt.Sprintf("%s[%d]", field, i), s); fe != nil {
			return fe
		}
	}
	return nil
}

func checkEnv(env map[string]string) *FieldError {
	if len(env) > MaxListLen {
		return fieldErr("env", "has %d entries; expected at most %d", len(env), MaxListLen)
	}
	for _, k := range sortedKeys(env) {
		if !validEnvName(k) {
			return fieldErr("env."+printable(clip(k)), "%q is not a variable name; expected letters, digits and '_', not starting with a digit", clip(k))
		}
		if fe := checkText("env."+k, env[k]); fe != nil {
			return fe
		}
	}
	return nil
}

func validEnvName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i, r := range k {
		letter := r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r == '_'
		if !letter && !(i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func (r Resources) check() *FieldError {
	if r.CPUMillis <= 0 {
		return fieldErr("resources.cpu", "missing or zero; expected cores like 0.5 or 2, or millicores like 500m (the scheduler places by it)")
	}
	if r.CPUMillis > MaxCPUMillis {
		return fieldErr("resources.cpu", "%dm is more than %d cores; expected less", r.CPUMillis, MaxCPUMillis/1000)
	}
	if r.MemoryBytes <= 0 {
		return fieldErr("resources.memory", "missing or zero; expected a size like 256Mi or 1Gi (the scheduler places by it)")
	}
	if r.MemoryBytes < MinMemoryBytes {
		return fieldErr("resources.memory", "%d bytes is below the 4Mi minimum; expected a size with a unit like 256Mi", r.MemoryBytes)
	}
	if r.MemoryBytes > MaxMemoryBytes {
		return fieldErr("resources.memory", "%d bytes is more than 1Pi; expected less", r.MemoryBytes)
	}
	if r.Pids < 0 || r.Pids > MaxPids {
		return fieldErr("resources.pids", "%d is out of range; expected 0 (default) .. %d", r.Pids, MaxPids)
	}
	return nil
}

// Paths a volume must not cover: the runtime mounts its own file systems there.
var reservedPaths = []string{"/proc", "/sys", "/dev"}

func checkVolumes(vols []Volume) *FieldError {
	if len(vols) > 64 {
		return fieldErr("volumes", "has %d entries; expected at most 64", len(vols))
	}
	names, paths := map[string]int{}, map[string]int{}
	for i, v := range vols {
		f := fmt.Sprintf("volumes[%d]", i)
		if err := checkName("volume", v.Name, 63, true); err != nil {
			return fieldErr(f+".name", "%v", strings.TrimPrefix(err.Error(), "volume name "))
		}
		if prev, dup := names[v.Name]; dup {
			return fieldErr(f+".name", "%q is also the name of volumes[%d]; expected unique names", v.Name, prev)
		}
		names[v.Name] = i
		if fe := checkText(f+".path", v.Path); fe != nil {
			return fe
		}
		if !path.IsAbs(v.Path) || path.Clean(v.Path) != v.Path || v.Path == "/" {
			return fieldErr(f+".path", "%q is not a clean absolute path below /; expected like /data", clip(v.Path))
		}
		for _, r := range reservedPaths {
			if v.Path == r || strings.HasPrefix(v.Path, r+"/") {
				return fieldErr(f+".path", "%q is under %s, which the runtime provides; expected another path", clip(v.Path), r)
			}
		}
		if prev, dup := paths[v.Path]; dup {
			return fieldErr(f+".path", "%q is also the path of volumes[%d]; expected unique paths", clip(v.Path), prev)
		}
		switch {
		case v.Replicas < 0 || v.Replicas > 2:
			return fieldErr(f+".replicas", "%d copies; expected 1 (on the node) or 2 (a synchronous pair on two nodes)", v.Replicas)
		case v.Replicated() && v.SizeBytes == 0:
			return fieldErr(f+".size", "missing; a replicated volume is a block device: give its size, like 1Gi")
		case v.Replicated() && v.SizeBytes < MinVolumeSize:
			return fieldErr(f+".size", "%s is too small; expected at least %s", FormatMemory(v.SizeBytes), FormatMemory(MinVolumeSize))
		case v.Replicated() && v.SizeBytes%(1<<20) != 0:
			return fieldErr(f+".size", "%d bytes is not whole MiB; expected like 512Mi or 2Gi", v.SizeBytes)
		case !v.Replicated() && v.SizeBytes != 0:
			return fieldErr(f+".size", "set on a node-local volume (replicas %d), which is a directory without a size; drop it or set replicas: 2", max(v.Replicas, 1))
		}
		paths[v.Path] = i
	}
	// One volume inside another would hide part of it depending on mount order.
	for _, a := range vols {
		for j, b := range vols {
			if strings.HasPrefix(b.Path, a.Path+"/") {
				return fieldErr(fmt.Sprintf("volumes[%d].path", j), "%q is inside volume %q at %q; expected separate paths", clip(b.Path), a.Name, clip(a.Path))
			}
		}
	}
	return nil
}

func checkPorts(ports []Port) *FieldError {
	if len(ports) > 64 {
		return fieldErr("ports", "has %d entries; expected at most 64", len(ports))
	}
	seen := map[string]int{}
	for i, p := range ports {
		f := fmt.Sprintf("ports[%d]", i)
		if p.Container < 1 || p.Container > 65535 {
			return fieldErr(f+".container", "%d is not a port; expected 1..65535", p.Container)
		}
		if p.Host < 1 || p.Host > 65535 {
			return fieldErr(f+".host", "%d is not a port; expected 1..65535", p.Host)
		}
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return fieldErr(f+".protocol", "%q is not supported; expected tcp or udp", clip(p.Protocol))
		}
		k := fmt.Sprintf("%d/%s", p.Host, p.Protocol)
		if prev, dup := seen[k]; dup {
			return fieldErr(f+".host", "%s is also published by ports[%d]; expected unique host ports", k, prev)
		}
		seen[k] = i
	}
	return nil
}

func checkSelector(sel map[string]string) *FieldError {
	if len(sel) > 64 {
		return fieldErr("node_selector", "has %d entries; expected at most 64", len(sel))
	}
	for _, k := range sortedKeys(sel) {
		if k == "" || len(k) > 253 || !utf8.ValidString(k) || strings.ContainsAny(k, "\x00\n") {
			return fieldErr("node_selector", "label name %q is empty, too long or not text; expected a label name", clip(printable(k)))
		}
		if fe := checkText("node_selector."+k, sel[k]); fe != nil {
			return fe
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// printable keeps an error message on one line whatever the key holds.
func printable(s string) string {
	q := fmt.Sprintf("%q", s)
	return q[1 : len(q)-1]
}
