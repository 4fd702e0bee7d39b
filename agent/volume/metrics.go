package volume

import (
	"context"
	"os"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Metrics of this node's volume copies, read at each scrape from
// /proc/drbd, the pool and the owner's mounted file system: nothing is
// kept between scrapes, so a volume removed is gone from /metrics at once.
var (
	descSize      = prometheus.NewDesc("berth_volume_size_bytes", "Size of the replicated volume.", []string{"volume", "tenant"}, nil)
	descUsed      = prometheus.NewDesc("berth_volume_used_bytes", "Bytes used in the volume's file system (on the node that has it mounted).", []string{"volume", "tenant"}, nil)
	descPrimary   = prometheus.NewDesc("berth_volume_primary", "1 when this node's copy is the DRBD primary.", []string{"volume", "tenant"}, nil)
	descUpToDate  = prometheus.NewDesc("berth_volume_copy_up_to_date", "1 when this node's copy is UpToDate in DRBD.", []string{"volume", "tenant"}, nil)
	descConnected = prometheus.NewDesc("berth_volume_connected", "1 while this node's copy replicates with its peer (or resyncs).", []string{"volume", "tenant"}, nil)
	descOOS       = prometheus.NewDesc("berth_volume_out_of_sync_bytes", "Bytes a resync still has to move between the two copies.", []string{"volume", "tenant"}, nil)
	descWritten   = prometheus.NewDesc("berth_volume_written_bytes_total", "Bytes written to this node's copy (local writes and replicated ones).", []string{"volume", "tenant"}, nil)
	descRead      = prometheus.NewDesc("berth_volume_read_bytes_total", "Bytes read from this node's copy.", []string{"volume", "tenant"}, nil)
	descSent      = prometheus.NewDesc("berth_volume_sent_bytes_total", "Bytes sent to the peer (replication and resync).", []string{"volume", "tenant"}, nil)
	descPoolSize  = prometheus.NewDesc("berth_volume_pool_size_bytes", "Data size of the node's volume pool.", nil, nil)
	descPoolFree  = prometheus.NewDesc("berth_volume_pool_unpromised_bytes", "Pool bytes not promised to any volume.", nil, nil)
	descPoolUsed  = prometheus.NewDesc("berth_volume_pool_used_bytes", "Pool data bytes written (thin blocks in use).", nil, nil)
)

// Describe implements prometheus.Collector.
func (l *Local) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSize, descUsed, descPrimary, descUpToDate, descConnected, descOOS, descWritten, descRead, descSent, descPoolSize, descPoolFree, descPoolUsed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (l *Local) Collect(ch chan<- prometheus.Metric) {
	if p := l.Space(); p != nil {
		ch <- prometheus.MustNewConstMetric(descPoolSize, prometheus.GaugeValue, float64(p.SizeBytes))
		ch <- prometheus.MustNewConstMetric(descPoolFree, prometheus.GaugeValue, float64(p.FreeBytes))
	}
	if pool := l.Host.Pool; pool != nil {
		// The pool's status needs dmsetup: only when a scrape asks.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if st, err := pool.Status(ctx); err == nil {
			ch <- prometheus.MustNewConstMetric(descPoolUsed, prometheus.GaugeValue, float64(st.UsedData))
		}
		cancel()
	}
	copies := l.copies()
	if len(copies) == 0 {
		return
	}
	proc := l.Host.Proc
	if proc == "" {
		proc = "/proc/drbd"
	}
	data, _ := os.ReadFile(proc)
	for _, s := range volumeSamples(copies, ParseProc(string(data)), l.Host.usedBytes) {
		ch <- prometheus.MustNewConstMetric(s.desc, s.kind, s.value, s.volume, s.tenant)
	}
}

type sample struct {
	desc           *prometheus.Desc
	kind           prometheus.ValueType
	value          float64
	volume, tenant string
}

// volumeSamples turns this node's copies and their DRBD states into
// metric samples (sorted by volume); used reports a mounted file
// system's used bytes (false when not mounted here).
func volumeSamples(copies map[ID]Resource, states map[int]DeviceState, used func(Resource) (int64, bool)) []sample {
	ids := make([]ID, 0, len(copies))
	for id := range copies {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	var out []sample
	for _, id := range ids {
		res := copies[id]
		v, t := id.String(), id.Tenant
		add := func(d *prometheus.Desc, k prometheus.ValueType, x float64) {
			out = append(out, sample{desc: d, kind: k, value: x, volume: v, tenant: t})
		}
		add(descSize, prometheus.GaugeValue, float64(res.SizeBytes))
		st, ok := states[res.Minor]
		if !ok || !st.ConfiguredMinor {
			add(descUpToDate, prometheus.GaugeValue, 0)
			add(descConnected, prometheus.GaugeValue, 0)
			continue
		}
		add(descPrimary, prometheus.GaugeValue, b(st.Role == "Primary"))
		add(descUpToDate, prometheus.GaugeValue, b(st.Disk == "UpToDate"))
		add(descConnected, prometheus.GaugeValue, b(st.Connected()))
		add(descOOS, prometheus.GaugeValue, float64(st.OutOfSyncKiB*1024))
		add(descWritten, prometheus.CounterValue, float64(st.WrittenKiB*1024))
		add(descRead, prometheus.CounterValue, float64(st.ReadKiB*1024))
		add(descSent, prometheus.CounterValue, float64(st.SentKiB*1024))
		if used != nil {
			if u, ok := used(res); ok {
				add(descUsed, prometheus.GaugeValue, float64(u))
			}
		}
	}
	return out
}

// usedBytes is the used space of the volume's file system when it is
// mounted on this node.
func (h *Host) usedBytes(res Resource) (int64, bool) {
	mp := h.Mountpoint(res)
	if !mounted(mp) {
		return 0, false
	}
	var st unix.Statfs_t
	if unix.Statfs(mp, &st) != nil {
		return 0, false
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, true
}
