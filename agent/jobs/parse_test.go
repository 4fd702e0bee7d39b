package jobs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const goodYAML = `# a web service
name: web
tenant: acme
image: registry.local:7480/acme/web:1.2
command: ["/bin/httpd"]
args: ["-f", "-p", "8080"]
env:
  GREETING: hello
  PORT: 8080
replicas: 3
resources:
  cpu: 500m
  memory: 256Mi
  pids: 100
read_only_root: false
volumes:
  - name: data
    path: /data
  - name: db
    path: /var/db
    size: 2Gi
    replicas: 2
ports:
  - container: 8080
    host: 80
  - container: 53
    protocol: udp
restart: on-failure
node_selector:
  zone: a
spread: false
stop_timeout_seconds: 30
`

func TestParseJobFull(t *testing.T) {
	j, err := ParseJob([]byte(goodYAML), "web.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Job{
		Schema: JobSchema, Name: "web", Tenant: "acme", Image: "registry.local:7480/acme/web:1.2",
		Command: []string{"/bin/httpd"}, Args: []string{"-f", "-p", "8080"},
		Env:      map[string]string{"GREETING": "hello", "PORT": "8080"},
		Replicas: 3, Resources: Resources{CPUMillis: 500, MemoryBytes: 256 << 20, Pids: 100},
		ReadOnlyRoot: ptr(false), Volumes: []Volume{{Name: "data", Path: "/data"}, {Name: "db", Path: "/var/db", SizeBytes: 2 << 30, Replicas: 2}},
		Ports:   []Port{{Container: 8080, Host: 80, Protocol: "tcp"}, {Container: 53, Host: 53, Protocol: "udp"}},
		Restart: RestartOnFailure, NodeSelector: map[string]string{"zone": "a"}, Spread: ptr(false),
		StopTimeoutSeconds: 30,
	}
	if !reflect.DeepEqual(j, want) {
		t.Fatalf("got  %+v\nwant %+v", j, want)
	}
	if err := j.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	// What is stored in etcd reads back equal, through ParseJob and DecodeJob.
	data, err := j.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, decode := range map[string]func([]byte) (Job, error){
		"ParseJob":  func(b []byte) (Job, error) { return ParseJob(b, "stored") },
		"DecodeJob": DecodeJob,
	} {
		back, err := decode(data)
		if err != nil || !reflect.DeepEqual(back, j) {
			t.Fatalf("%s of marshalled job: err=%v\n got %+v\nwant %+v", name, err, back, j)
		}
	}
}

func TestParseJobDefaults(t *testing.T) {
	j, err := ParseJob([]byte("name: api\nimage: api:1\nresources: {cpu: 0.25, memory: 64Mi}\n"), "api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if j.Schema != JobSchema || j.Replicas != 1 || j.Restart != RestartAlways || j.StopTimeoutSeconds != 10 ||
		j.ReadOnlyRoot == nil || !*j.ReadOnlyRoot || j.Spread == nil || !*j.Spread || j.Tenant != "" ||
		j.Resources.CPUMillis != 250 || j.Resources.MemoryBytes != 64<<20 {
		t.Fatalf("defaults not filled: %+v", j)
	}
	// ParseJob leaves the tenant to the caller; a stored job needs one.
	if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "tenant") {
		t.Fatalf("Validate without tenant: %v", err)
	}
	j.Tenant = "acme"
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	// Explicit zero replicas is kept (a job that runs nothing), not defaulted.
	j, err = ParseJob([]byte("name: api\nimage: api:1\nreplicas: 0\nresources: {cpu: 1, memory: 64Mi}\n"), "api.yaml")
	if err != nil || j.Replicas != 0 {
		t.Fatalf("replicas 0: %v %+v", err, j)
	}
}

func TestParseJobJSON(t *testing.T) {
	// Tabs and the \/ escape are valid JSON that YAML parsers reject.
	src := "{\n\t\"name\": \"web\",\n\t\"image\": \"reg.local\\/web:1\",\n\t\"replicas\": 2,\n\t\"resources\": {\"cpu_millis\": 1500, \"memory\": \"1Gi\"}\n}\n"
	j, err := ParseJob([]byte(src), "web.json")
	if err != nil {
		t.Fatal(err)
	}
	if j.Image != "reg.local/web:1" || j.Replicas != 2 || j.Resources.CPUMillis != 1500 || j.Resources.MemoryBytes != 1<<30 {
		t.Fatalf("got %+v", j)
	}
	// JSON errors carry the line too.
	for _, tc := range []struct{ src, want string }{
		{"{\n\t\"name\": \"web\",\n\t\"image\": \"web:1\",\n\t\"replicas\": \"two\",\n\t\"resources\": {\"cpu\": 1, \"memory\": \"1Gi\"}\n}", `web.json:4: replicas: got "two"; expected a whole number`},
		{"{\n\"name\": \"web\",\n\n\"imagee\": \"web:1\"}", "web.json:4: imagee: unknown key"},
		{"{\n\"name\": \"web\",\n\"image\": \"web:1\",\n\"resources\": {\n  \"cpu\": 1,\n  \"memory\": \"1Xi\"}}", `web.json:6: resources.memory: "1Xi" has unknown unit "Xi"`},
		{"{\n\"name\": \"web\",\n\"name\": \"web2\"}", "web.json:3: name: given twice"},
		{"{\n\"name\": \"web\"\n\"image\": \"w:1\"}", "web.json:3: invalid character '\"' after object key:value pair"},
		// Broken JSON that is valid YAML is read as YAML: still strict, still with lines.
		{"{\n\"name\": \"web\",\n\"image\": }", "web.json:3: image: got nothing (null); expected text"},
		{"{\"name\": \"web\"", "web.json:1: JSON ends early"},
		{"{\"name\": \"web\", \"image\": \"w:1\", \"resources\": {\"cpu\": 1, \"memory\": \"1Gi\"}}\n{}", "web.json:2: data after the JSON object"},
		{"{\"name\": \"web\", \"image\": \"w:1\", \"resources\": {\"cpu\": 1e3, \"memory\": 1.5e9}}", `web.json:1: resources.cpu: "1e3" is not a CPU amount`},
	} {
		_, err := ParseJob([]byte(tc.src), "web.json")
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseJob(%q)\n  error %v\n  want prefix %q (one line)", tc.src, err, tc.want)
		}
	}
}

// TestParseJobErrors: every bad input gives one line naming the file, the
// line and the field, and what was expected.
func TestParseJobErrors(t *testing.T) {
	base := "name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 64Mi\n" // lines 1..5
	for _, tc := range []struct{ src, want string }{
		{"", "j.yaml:1: empty file"},
		{"   \n# only a comment\n", "j.yaml:1: empty file"},
		{"- a\n- b\n", "j.yaml:1: got a list; expected a mapping"},
		{"just text", `j.yaml:1: got "just text"; expected a mapping`},
		{"name: web\n  image: x\n", "j.yaml:2: mapping values are not allowed"},
		{"name: [web\n", "j.yaml:"},
		{base + "---\nname: b\n", "j.yaml:6: a second YAML document"},
		{base + "bogus: 1\n", "j.yaml:6: bogus: unknown key; expected one of schema, name"},
		{base + "Name: x\n", "j.yaml:6: Name: unknown key"},
		{base + "name: again\n", "j.yaml:6: name: given twice"},
		{strings.Replace(base, "name: web", "name: web.v2", 1), `j.yaml:1: name: "web.v2" is not a DNS label: '.' is not allowed, the job's service name is JOB.TENANT.berth; use "web-v2"`},
		{base + "replicas: 1001\n", "j.yaml:6: replicas: 1001 is out of range; expected 0..1000"},
		{base + "replicas: -1\n", "j.yaml:6: replicas: -1 is out of range"},
		{base + "replicas: 2.5\n", "j.yaml:6: replicas: got the number 2.5; expected a whole number"},
		{base + "replicas: 99999999999999999999\n", "j.yaml:6: replicas:"},
		{base + "replicas: three\n", `j.yaml:6: replicas: got "three"; expected a whole number`},
		{base + "replicas:\n", "j.yaml:6: replicas: got nothing (null); expected a whole number"},
		{base + "command: /bin/sh\n", `j.yaml:6: command: got "/bin/sh"; expected a list`},
		{base + "command: [/bin/sh, 1]\n", "j.yaml:6: command[1]: got the number 1; expected text (quote it)"},
		{base + "args: {a: b}\n", "j.yaml:6: args: got a mapping; expected a list"},
		{base + "env:\n  1BAD: x\n", `j.yaml:7: env.1BAD: "1BAD" is not a variable name`},
		{base + "env:\n  A-B: x\n", `j.yaml:7: env.A-B: "A-B" is not a variable name`},
		{base + "env:\n  A: [x]\n", "j.yaml:7: env.A: got a list; expected a value"},
		{base + "env:\n  A: ~\n", "j.yaml:7: env.A: got nothing (null); expected text"},
		{base + "env:\n  A: x\n  A: y\n", "j.yaml:8: env.A: given twice"},
		{base + "env: [A=1]\n", "j.yaml:6: env: got a list; expected a mapping of NAME: value"},
		{base + "read_only_root: yes\n", `j.yaml:6: read_only_root: got "yes"; expected true or false`},
		{base + "spread: 1\n", "j.yaml:6: spread: got the number 1; expected true or false"},
		{base + "restart: sometimes\n", `j.yaml:6: restart: "sometimes" is not a policy; expected always, on-failure or never`},
		{base + "stop_timeout_seconds: 0\n", "j.yaml:6: stop_timeout_seconds: 0 is out of range; expected 1..3600"},
		{base + "schema: berth.job.v2\n", `j.yaml:6: schema: "berth.job.v2" is not supported; expected "berth.job.v1"`},
		{base + "tenant: Acme\n", `j.yaml:6: tenant: "Acme": character 'A' at 0 not allowed`},
		{base + "tenant: a.b\n", `j.yaml:6: tenant: "a.b": character '.' at 1 not allowed`},
		{base + "tenant: " + strings.Repeat("a", 33) + "\n", "j.yaml:6: tenant: " + `"` + strings.Repeat("a", 33) + `" is longer than 32`},
		{base + "node_selector: {zone: [a]}\n", "j.yaml:6: node_selector.zone: got a list; expected a value"},
		{base + "volumes:\n  - name: data\n    path: data\n", `j.yaml:8: volumes[0].path: "data" is not a clean absolute path`},
		{base + "volumes:\n  - name: data\n    path: /data/../etc\n", `j.yaml:8: volumes[0].path: "/data/../etc" is not a clean absolute path`},
		{base + "volumes:\n  - name: data\n    path: /\n", `j.yaml:8: volumes[0].path: "/" is not a clean absolute path`},
		{base + "volumes:\n  - name: p\n    path: /proc/x\n", `j.yaml:8: volumes[0].path: "/proc/x" is under /proc`},
		{base + "volumes:\n  - name: a\n    path: /d\n  - name: b\n    path: /d\n", `j.yaml:10: volumes[1].path: "/d" is also the path of volumes[0]`},
		{base + "volumes:\n  - name: a\n    path: /d\n  - name: a\n    path: /e\n", `j.yaml:9: volumes[1].name: "a" is also the name of volumes[0]`},
		{base + "volumes:\n  - name: a\n    path: /d\n  - name: b\n    path: /d/e\n", `j.yaml:10: volumes[1].path: "/d/e" is inside volume "a"`},
		{base + "volumes:\n  - name: Data\n    path: /d\n", `j.yaml:7: volumes[0].name: "Data": character 'D'`},
		{base + "volumes:\n  - name: a\n    path: /d\n    size: 1Gi\n", "j.yaml:9: volumes[0].size: set on a node-local volume (replicas 1), which is a directory without a size"},
		{base + "volumes:\n  - name: a\n    path: /d\n    replicas: 2\n", "j.yaml:7: volumes[0].size: missing; a replicated volume is a block device"},
		{base + "volumes:\n  - name: a\n    path: /d\n    replicas: 3\n    size: 1Gi\n", "j.yaml:9: volumes[0].replicas: 3 copies; expected 1 (on the node) or 2"},
		{base + "volumes:\n  - name: a\n    path: /d\n    replicas: 2\n    size: 10Mi\n", "j.yaml:10: volumes[0].size: 10Mi is too small; expected at least 64Mi"},
		{base + "volumes:\n  - name: a\n    path: /d\n    replicas: 2\n    size: 100000000\n", "j.yaml:10: volumes[0].size: 100000000 bytes is not whole MiB"},
		{base + "volumes:\n  - name: a\n    path: /d\n    size: lots\n", "j.yaml:9: volumes[0].size: \"lots\" is not a size"},
		{base + "volumes:\n  - name: a\n    path: /d\n    colour: red\n", "j.yaml:9: volumes[0].colour: unknown key; expected one of name, path, size, size_bytes, replicas"},
		{base + "volumes:\n  - /data\n", `j.yaml:7: volumes[0]: got "/data"; expected a mapping`},
		{base + "ports:\n  - container: 0\n", "j.yaml:7: ports[0].container: 0 is not a port; expected 1..65535"},
		{base + "ports:\n  - container: 80\n    host: 70000\n", "j.yaml:8: ports[0].host: 70000 is not a port"},
		{base + "ports:\n  - container: 80\n    protocol: sctp\n", `j.yaml:8: ports[0].protocol: "sctp" is not supported; expected tcp or udp`},
		{base + "ports:\n  - container: 80\n  - container: 81\n    host: 80\n", "j.yaml:9: ports[1].host: 80/tcp is also published by ports[0]"},
		{base + "ports:\n  - host: 80\n", "j.yaml:7: ports[0].container: 0 is not a port"},
		{base + "image2: x\n", "j.yaml:6: image2: unknown key"},
		{"name: web\nresources:\n  cpu: 1\n  memory: 64Mi\n", "j.yaml:1: image: missing; expected an image reference"},
		{"name: web\nimage: 'not a ref'\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:2: image: "not a ref" contains white space`},
		{"name: web\nimage: UPPER/Case:1\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:2: image: "UPPER/Case:1" is not an image reference`},
		{"name: web\nimage: 'web:'\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:2: image: "web:" is not an image reference`},
		{"name: web\nimage: https://r/web:1\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:2: image: "https://r/web:1" is not an image reference`},
		{"image: web:1\nresources: {cpu: 1, memory: 64Mi}\n", "j.yaml:1: name: is empty"},
		{"name: -web\nimage: web:1\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:1: name: "-web": character '-' at 0`},
		{"name: 123\nimage: web:1\nresources: {cpu: 1, memory: 64Mi}\n", "j.yaml:1: name: got the number 123; expected text (quote it)"},
		{"name: web\nimage: web:1\n", "j.yaml:1: resources.cpu: missing or zero"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n", "j.yaml:3: resources.memory: missing or zero"},
		{"name: web\nimage: web:1\nresources: 1\n", "j.yaml:3: resources: got the number 1; expected a mapping"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 512\n", "j.yaml:5: resources.memory: 512 bytes is below the 4Mi minimum"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 1.5\n", `j.yaml:5: resources.memory: "1.5": not a whole number`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 64MB\n", `j.yaml:5: resources.memory: "64MB" has unknown unit "MB"`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: -64Mi\n", `j.yaml:5: resources.memory: "-64Mi" is not a size`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 2Pi\n", `j.yaml:5: resources.memory: "2Pi": too large`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 0.0005\n  memory: 64Mi\n", `j.yaml:4: resources.cpu: "0.0005": not a whole number`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 2 cores\n  memory: 64Mi\n", `j.yaml:4: resources.cpu: "2 cores" is not a CPU amount`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 5k\n  memory: 64Mi\n", `j.yaml:4: resources.cpu: "5k" has unit "k"`},
		{"name: web\nimage: web:1\nresources:\n  cpu: 0\n  memory: 64Mi\n", "j.yaml:4: resources.cpu: missing or zero"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 2000\n  memory: 64Mi\n", `j.yaml:4: resources.cpu: "2000": too large`},
		{"name: web\nimage: web:1\nresources:\n  cpu: true\n  memory: 64Mi\n", "j.yaml:4: resources.cpu: got the boolean true; expected an amount"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  cpu_millis: 1000\n  memory: 64Mi\n", "j.yaml:5: resources.cpu_millis: given together with cpu"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 64Mi\n  pids: -3\n", "j.yaml:6: resources.pids: -3 is out of range"},
		{"name: web\nimage: web:1\nresources:\n  cpu: 1\n  memory: 64Mi\n  disk: 1Gi\n", "j.yaml:6: resources.disk: unknown key; expected one of cpu, cpu_millis, memory, memory_bytes, pids"},
		{"base: &b\n  cpu: 1\nname: web\n", "j.yaml:1: base: unknown key"},
		{"name: &n web\nimage: *n\n", "j.yaml:2: image: aliases (*name) are not supported"},
		{"<<: {name: web}\n", "j.yaml:1: key a value tagged !!merge is not a plain name"},
		{"? [a]\n: 1\n", "j.yaml:1: key a list is not a plain name"},
		{"name: !!binary d2Vi\n", "j.yaml:1: name: got a value tagged !!binary; expected text"},
		{"name: \"a\\0b\"\nimage: w:1\nresources: {cpu: 1, memory: 64Mi}\n", `j.yaml:1: name: "a\x00b": character '\x00'`},
		{"name: web\nimage: web:1\nresources: {cpu: 1, memory: 64Mi}\ncommand: [\"a\\0b\"]\n", "j.yaml:4: command[0]: contains a NUL byte"},
		{"name: web\ttab: 1\n", "j.yaml:1:"},
		{"{name: web, image: web:1, resources: {cpu: 1, memory: 64Mi}, x: 1}", "j.yaml:1: x: unknown key"},
	} {
		_, err := ParseJob([]byte(tc.src), "j.yaml")
		if err == nil {
			t.Errorf("ParseJob(%q) accepted, want error %q", tc.src, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseJob(%q)\n  error %q\n  want prefix %q (one line)", tc.src, err, tc.want)
		}
	}
}

func TestParseJobTooLarge(t *testing.T) {
	big := "name: web\nimage: web:1\nresources: {cpu: 1, memory: 64Mi}\nenv:\n  A: " + strings.Repeat("x", 200<<10) + "\n"
	if _, err := ParseJob([]byte(big), "j.yaml"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("200 KiB env value: %v", err)
	}
	// Messages quote a clipped value, not the whole input.
	long := "name: " + strings.Repeat("A", 500<<10) + "\nimage: w:1\nresources: {cpu: 1, memory: 64Mi}\n"
	if _, err := ParseJob([]byte(long), "j.yaml"); err == nil || len(err.Error()) > 300 {
		t.Fatalf("500 KiB name: error of %d bytes", len(fmt.Sprint(err)))
	}
	if _, err := ParseJob(make([]byte, MaxJobFileBytes+1), "j.yaml"); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestQuantities(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{{"500m", 500}, {"0.5", 500}, {"2", 2000}, {".25", 250}, {"1.001", 1001}, {"1m", 1}, {"0.1", 100}} {
		got, err := ParseCPU(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseCPU(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		want int64
	}{{"256Mi", 256 << 20}, {"1Gi", 1 << 30}, {"512M", 512e6}, {"1048576", 1 << 20}, {"1.5Gi", 3 << 29}, {"2k", 2000}, {"1Ki", 1024}} {
		got, err := ParseMemory(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "m", "1.m", "1e3", "0x10", "1,5", " 1", "1.0000000000000000000000001"} {
		if v, err := ParseCPU(bad); err == nil {
			t.Errorf("ParseCPU(%q) = %d, want error", bad, v)
		}
	}
	for _, bad := range []string{"", "Mi", "1.5Ki5", "1 Gi", "1gi", "1.1", "-1"} {
		if v, err := ParseMemory(bad); err == nil {
			t.Errorf("ParseMemory(%q) = %d, want error", bad, v)
		}
	}
	if FormatMemory(3<<29) != "1.5Gi" || FormatMemory(64<<20) != "64Mi" || FormatCPU(1500) != "1500m" || FormatCPU(2000) != "2" {
		t.Errorf("format: %s %s %s %s", FormatMemory(3<<29), FormatMemory(64<<20), FormatCPU(1500), FormatCPU(2000))
	}
}

// FuzzParseJob: ParseJob never panics, every error is one line, and an
// accepted job marshals to JSON that parses back equal.
func FuzzParseJob(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte("name: api\nimage: api:1\nresources: {cpu: 0.25, memory: 64Mi}\n"))
	f.Add([]byte(`{"name":"w","image":"w:1","resources":{"cpu_millis":5,"memory_bytes":4194304},"env":{"A":"\/\u00e9"}}`))
	f.Add([]byte("name: &a w\nimage: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJob(data, "fuzz")
		if err != nil {
			if strings.Contains(err.Error(), "\n") || len(err.Error()) > 1000 {
				t.Fatalf("multi-line or overlong error: %q", err)
			}
			return
		}
		out, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("marshal accepted job: %v", err)
		}
		back, err := ParseJob(out, "fuzz-again")
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(back, j) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", back, j)
		}
	})
}
