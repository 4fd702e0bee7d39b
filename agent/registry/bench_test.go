package registry

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/berth-os/berth/agent/pki"
)

// BenchmarkPullAuthorization pulls a 100 MB image over TLS from two
// registries in this process, one without the authorization layer and one
// with it (identity from the client certificate, policy per request, tag
// store), alternating, and prints the throughput ratio after/before
// (goal >= 0.95).
//
//	go test -run '^$' -bench PullAuthorization -benchtime 5x ./agent/registry/
func BenchmarkPullAuthorization(b *testing.B) {
	ca, err := pki.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	img, err := random.Image(100<<20, 1)
	if err != nil {
		b.Fatal(err)
	}
	size := int64(0)
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		size += n
	}
	tr := clientAs(b, ca, "tenant:acme", pki.ClientOnly)
	hosts := map[string]string{}
	for _, mode := range []string{"before", "after"} {
		srv := tlsRegistry(b, ca, Options{Dir: b.TempDir(), Authorize: mode == "after", Tags: &MemTags{}})
		hosts[mode] = strings.TrimPrefix(srv.URL, "https://")
		r, _ := name.ParseReference(hosts[mode] + "/acme/big:1")
		if err := remote.Write(r, img, remote.WithTransport(tr)); err != nil {
			b.Fatal(err)
		}
	}
	pull := func(mode string) time.Duration {
		start := time.Now()
		r, _ := name.ParseReference(hosts[mode] + "/acme/big:1")
		got, err := remote.Image(r, remote.WithTransport(tr))
		if err != nil {
			b.Fatal(err)
		}
		if err := readAll(got); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	pull("before") // warm the page cache for both
	pull("after")
	var before, after time.Duration
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			before += pull("before")
			after += pull("after")
		} else {
			after += pull("after")
			before += pull("before")
		}
		i++
	}
	mb := float64(size) * float64(i) / (1 << 20)
	ratio := before.Seconds() / after.Seconds() // throughput after / before
	b.ReportMetric(ratio, "ratio")
	b.ReportMetric(mb/before.Seconds(), "MiB/s-before")
	b.ReportMetric(mb/after.Seconds(), "MiB/s-after")
	fmt.Printf("pull of a %d MiB image, %d rounds: without authorization %.0f MiB/s, with %.0f MiB/s: ratio %.3f (goal >= 0.95)\n",
		size>>20, i, mb/before.Seconds(), mb/after.Seconds(), ratio)
}

func readAll(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
