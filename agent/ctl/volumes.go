package ctl

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/berth-os/berth/agent/jobs"
	"github.com/berth-os/berth/agent/volume"
)

// cmdVolumeLs lists the tenant's replicated volumes from their records.
func cmdVolumeLs(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	var recs []volume.Record
	err = s.request(ctx, "list volumes", func(ctx context.Context) error {
		var err error
		recs, err = volume.ListTenant(ctx, s.cli, tenant)
		return err
	})
	if err != nil {
		return err
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string]any{"tenant": tenant, "items": recs})
	}
	t := s.table("VOLUME", "SIZE", "OWNER", "EPOCH", "HEALTH", "COPIES")
	for _, r := range recs {
		var copies []string
		for _, c := range r.Copies {
			copies = append(copies, c.Node+":"+string(c.State))
		}
		name := r.ID.Job + "/" + strconv.Itoa(r.ID.Replica) + "/" + r.ID.Name
		t.row(name, jobs.FormatMemory(r.SizeBytes), orDash(r.Owner), strconv.FormatInt(r.Epoch, 10), volume.Health(r), strings.Join(copies, ","))
	}
	return t.flush()
}

// cmdVolumeInspect prints one of the tenant's volume records.
func cmdVolumeInspect(ctx context.Context, s *session) error {
	tenant, err := s.tenant()
	if err != nil {
		return err
	}
	id, err := volume.ParseID(tenant + "/" + s.opts.args[0])
	if err != nil || jobs.CheckJobName(id.Job) != nil {
		return fail(ExitUsage, "%q is not JOB/REPLICA/VOLUME (e.g. db/0/data)", s.opts.args[0])
	}
	var rec volume.Record
	err = s.request(ctx, "read volume", func(ctx context.Context) error {
		var err error
		rec, err = volume.Get(ctx, s.cli, id)
		if errors.Is(err, volume.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	if rec.ID != id {
		return fail(ExitNotFound, "volume %s not found (berthctl volume ls lists the tenant's)", id)
	}
	if s.opts.output == "table" {
		return writeFields(s.sys.Stdout, struct {
			volume.Record
			Health string `json:"health"`
		}{rec, volume.Health(rec)})
	}
	return writeStructured(s.sys.Stdout, s.opts.output, rec)
}
