package volume

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/berth-os/berth/agent/volume/thinpool"
)

func TestVolumeSamples(t *testing.T) {
	a := ID{Tenant: "store", Job: "db", Replica: 0, Name: "data"}
	b := ID{Tenant: "store", Job: "db", Replica: 1, Name: "data"}
	copies := map[ID]Resource{
		b: {Volume: b, Minor: 3, SizeBytes: 1 << 30},
		a: {Volume: a, Minor: 0, SizeBytes: 256 << 20},
	}
	states := ParseProc(` 0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:4096 nr:0 dw:100 dr:200 al:0 bm:0 lo:0 pe:1 ua:0 ap:0 ep:1 wo:f oos:61440
`)
	used := func(r Resource) (int64, bool) { return 42, r.Minor == 0 }
	var got []string
	for _, s := range volumeSamples(copies, states, used) {
		got = append(got, fmt.Sprintf("%s %s %g", metricName(s.desc), s.volume, s.value))
	}
	want := []string{
		"berth_volume_size_bytes store/db/0/data 2.68435456e+08",
		"berth_volume_primary store/db/0/data 1",
		"berth_volume_copy_up_to_date store/db/0/data 1",
		"berth_volume_connected store/db/0/data 1",
		"berth_volume_out_of_sync_bytes store/db/0/data 6.291456e+07",
		"berth_volume_written_bytes_total store/db/0/data 102400",
		"berth_volume_read_bytes_total store/db/0/data 204800",
		"berth_volume_sent_bytes_total store/db/0/data 4.194304e+06",
		"berth_volume_used_bytes store/db/0/data 42",
		// Minor 3 is not configured in DRBD: size, and down.
		"berth_volume_size_bytes store/db/1/data 1.073741824e+09",
		"berth_volume_copy_up_to_date store/db/1/data 0",
		"berth_volume_connected store/db/1/data 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// metricName reads the fully-qualified name out of a Desc's String().
func metricName(d *prometheus.Desc) string {
	s := d.String()
	i := strings.Index(s, `fqName: "`) + len(`fqName: "`)
	return s[i : i+strings.Index(s[i:], `"`)]
}

// The collector as /metrics serves it passes Prometheus' own linter.
func TestVolumeMetricsLint(t *testing.T) {
	proc := t.TempDir() + "/drbd"
	if err := os.WriteFile(proc, []byte(" 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n    ns:1 nr:0 dw:2 dr:3 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := ID{Tenant: "store", Job: "db", Replica: 0, Name: "data"}
	l := NewLocal("n1", &Host{Proc: proc, MountDir: t.TempDir()}, thinpool.Config{}, nil)
	l.onNode = map[ID]Resource{id: {Volume: id, Minor: 0, SizeBytes: 1 << 30}}
	problems, err := testutil.CollectAndLint(l)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	if n := testutil.CollectAndCount(l); n != 8 {
		t.Fatalf("%d samples, want 8 (no pool, not mounted here)", n)
	}
}
