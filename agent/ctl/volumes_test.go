package ctl_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/berth-os/berth/agent/ctl"
	"github.com/berth-os/berth/agent/nodedoc/etcdtest"
	"github.com/berth-os/berth/agent/volume"
)

func TestVolumeLsAndInspect(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	since := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	mk := func(id volume.ID, owner string, epoch int64, second volume.CopyState) {
		r, err := volume.Create(ctx, cli, volume.Record{ID: id, SizeBytes: 256 << 20, Copies: []volume.Copy{
			{Node: "node-1", Address: "10.0.0.1", State: volume.UpToDate, Since: since},
			{Node: "node-2", Address: "10.0.0.2", State: second, Since: since, Reason: "fenced by node-1 at epoch 2: lost the connection"},
		}, Owner: owner, Epoch: epoch})
		if err != nil {
			t.Fatal(err)
		}
		_ = r
	}
	mk(volume.ID{Tenant: "store", Job: "db", Replica: 0, Name: "data"}, "node-1", 2, volume.Outdated)
	mk(volume.ID{Tenant: "store", Job: "db", Replica: 1, Name: "data"}, "node-2", 1, volume.UpToDate)
	mk(volume.ID{Tenant: "other", Job: "db", Replica: 0, Name: "data"}, "", 0, volume.UpToDate)
	env := envFor(e)

	code, out, errOut := berthctl(t, env, "--tenant", "store", "volume", "ls")
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{
		{"VOLUME", "SIZE", "OWNER", "EPOCH", "HEALTH", "COPIES"},
		{"db/0/data", "256Mi", "node-1", "2", "degraded", "(node-2", "outdated)", "node-1:up-to-date,node-2:outdated"},
		{"db/1/data", "256Mi", "node-2", "1", "ok", "node-1:up-to-date,node-2:up-to-date"},
	}
	if len(lines) != len(want) {
		t.Fatalf("volume ls: want %d lines (the other tenant's volume not listed):\n%s", len(want), out)
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %q", i, got, w)
		}
	}

	code, out, errOut = berthctl(t, env, "--tenant", "store", "volume", "inspect", "db/0/data", "-o", "json")
	var r volume.Record
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &r) != nil || r.Epoch != 2 || r.Copies[1].State != volume.Outdated {
		t.Fatalf("inspect -o json: exit %d, %s %s", code, out, errOut)
	}
	code, out, _ = berthctl(t, env, "--tenant", "store", "volume", "inspect", "db/0/data")
	if code != ctl.ExitOK || !strings.Contains(out, "health") || !strings.Contains(out, "degraded") {
		t.Errorf("inspect table: exit %d:\n%s", code, out)
	}
	code, _, errOut = berthctl(t, env, "--tenant", "store", "volume", "inspect", "db/7/data")
	if code != ctl.ExitNotFound || !strings.Contains(errOut, "volume store/db/7/data not found") {
		t.Errorf("missing volume: exit %d, %q", code, errOut)
	}
	code, _, errOut = berthctl(t, env, "--tenant", "store", "volume", "inspect", "db/data")
	if code != ctl.ExitUsage || !strings.Contains(errOut, "is not JOB/REPLICA/VOLUME") {
		t.Errorf("bad argument: exit %d, %q", code, errOut)
	}
}
