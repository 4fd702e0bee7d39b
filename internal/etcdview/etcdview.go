// Package etcdview keeps an in-memory view of some etcd prefixes current:
// one consistent load of every prefix at one revision, then watches from
// the next revision, and a fresh load whenever a watch is lost (a
// compacted revision, a lost leader), so the view never misses an event.
package etcdview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/internal/retry"
)

// View receives the data. Reset starts a full load (forget everything),
// Put and Delete follow, and Synced marks the end of a load or of one
// watch response: the moment to act on the view.
type View interface {
	Reset()
	Put(key string, value []byte)
	Delete(key string)
	Synced()
}

// Follow loads prefixes into v and keeps it current until ctx ends.
func Follow(ctx context.Context, cli *clientv3.Client, prefixes []string, v View, log *slog.Logger) {
	backoff := retry.NewBackoff(retry.Policy{Initial: 500 * time.Millisecond, Max: 10 * time.Second})
	for ctx.Err() == nil {
		rev, err := load(ctx, cli, prefixes, v)
		if err == nil {
			backoff.Reset()
			err = follow(ctx, cli, prefixes, v, rev)
		}
		if ctx.Err() != nil {
			return
		}
		wait := backoff.Next()
		log.Warn("etcd view interrupted; loading again", "prefixes", prefixes, "err", err, "retry_in", wait)
		retry.Sleep(ctx, wait)
	}
}

func load(ctx context.Context, cli *clientv3.Client, prefixes []string, v View) (int64, error) {
	var rev int64
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	for _, p := range prefixes {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := cli.Get(cctx, p, opts...)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("load %s: %w", p, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, x := range resp.Kvs {
			all = append(all, kv{string(x.Key), x.Value})
		}
	}
	v.Reset()
	for _, x := range all {
		v.Put(x.k, x.v)
	}
	v.Synced()
	return rev, nil
}

func follow(ctx context.Context, cli *clientv3.Client, prefixes []string, v View, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	type resp struct {
		wr     clientv3.WatchResponse
		closed bool
	}
	events := make(chan resp)
	for _, p := range prefixes {
		wc := cli.Watch(wctx, p, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		go func() {
			for wr := range wc {
				select {
				case events <- resp{wr: wr}:
				case <-wctx.Done():
					return
				}
			}
			select {
			case events <- resp{closed: true}:
			case <-wctx.Done():
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-events:
			if r.closed {
				return errors.New("watch closed")
			}
			if err := r.wr.Err(); err != nil {
				return err
			}
			for _, ev := range r.wr.Events {
				if ev.Type == mvccpb.DELETE {
					v.Delete(string(ev.Kv.Key))
				} else {
					v.Put(string(ev.Kv.Key), ev.Kv.Value)
				}
			}
			v.Synced()
		}
	}
}
