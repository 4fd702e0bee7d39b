package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// Readiness shown in the READY column.
const (
	Ready    = "Ready"
	NotReady = "NotReady"
)

// NodeRow is one node in `berthctl nodes -o json|yaml`. Document is null for
// a node that has a role entry but no document: its lease expired, so it is
// down or cut off.
type NodeRow struct {
	Name     string        `json:"name"`
	Role     string        `json:"role"`
	Status   string        `json:"status"`
	Document *nodedoc.Node `json:"document"`
}

// NodeList is the JSON/YAML output of `berthctl nodes`.
type NodeList struct {
	Items []NodeRow `json:"items"`
}

// ListNodes reads every node document and role entry and joins them by name.
func ListNodes(ctx context.Context, cli *clientv3.Client) (NodeList, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(nodedoc.NodesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(nodedoc.RolesPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return NodeList{}, err
	}
	rows := map[string]*NodeRow{}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, string(kv.Key))
		if !ok {
			continue
		}
		n, err := nodedoc.ParseNode(kv.Value)
		if err != nil {
			return NodeList{}, fmt.Errorf("%s: %w", kv.Key, err)
		}
		status := NotReady
		if n.Ready {
			status = Ready
		}
		rows[name] = &NodeRow{Name: name, Role: n.Role, Status: status, Document: &n}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		name, ok := nodedoc.NameFromKey(nodedoc.RolesPrefix, string(kv.Key))
		if !ok {
			continue
		}
		var r nodedoc.RoleEntry
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return NodeList{}, fmt.Errorf("%s: decode role entry: %w", kv.Key, err)
		}
		row, ok := rows[name]
		if !ok {
			rows[name] = &NodeRow{Name: name, Role: r.Role, Status: NotReady}
			continue
		}
		if row.Role == "" {
			row.Role = r.Role
		}
	}
	list := NodeList{Items: []NodeRow{}}
	for _, r := range rows {
		list.Items = append(list.Items, *r)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list, nil
}

// listNodes reads every node document, with the session's retries.
func (s *session) listNodes(ctx context.Context) (NodeList, error) {
	var list NodeList
	err := s.request(ctx, "list nodes", func(ctx context.Context) error {
		var err error
		list, err = ListNodes(ctx, s.cli)
		return err
	})
	return list, err
}

func cmdNodes(ctx context.Context, s *session) error {
	list, err := s.listNodes(ctx)
	if err != nil {
		return err
	}
	warnings := spaceWarnings(ctx, s, list)
	if s.opts.output != "table" {
		for _, w := range warnings {
			fmt.Fprintln(s.sys.Stderr, w) // keep stdout parseable
		}
		return writeStructured(s.sys.Stdout, s.opts.output, list)
	}
	for _, w := range warnings {
		fmt.Fprintln(s.sys.Stdout, w)
	}
	now := s.sys.Now()
	t := s.table("NAME", "ROLE", "READY", "OS-VERSION", "SLOT", "UPDATE", "AGE")
	for _, r := range list.Items {
		version, slot, update, age := "-", "-", "-", "-"
		if d := r.Document; d != nil {
			version = orDash(d.OS.Version)
			slot = orDash(d.OS.Slot)
			if d.OS.LastUpdate != nil {
				update = orDash(d.OS.LastUpdate.State)
			}
			if !d.BootTime.IsZero() {
				age = HumanDuration(now.Sub(d.BootTime))
			}
		}
		t.row(r.Name, orDash(r.Role), r.Status, version, slot, update, age)
	}
	return t.flush()
}

// spaceWarnings are the lines `berthctl nodes` prints above the table when
// etcd's space is short: a NOSPACE alarm (from any endpoint's Status,
// which lists the cluster's alarms and needs no write permission) and
// members past 80% of their quota (from the node documents). A Status
// that fails only costs the warning.
func spaceWarnings(ctx context.Context, s *session, list NodeList) []string {
	var out []string
	for _, ep := range s.cli.Endpoints() {
		cctx, cancel := context.WithTimeout(ctx, min(s.opts.timeout, 2*time.Second))
		st, err := s.cli.Status(cctx, ep)
		cancel()
		if err != nil {
			continue
		}
		for _, e := range st.Errors {
			if strings.Contains(e, "NOSPACE") {
				out = append(out, "WARNING: etcd NOSPACE alarm: "+nodedoc.NoSpaceHint)
				break
			}
		}
		break
	}
	var low []string
	for _, r := range list.Items {
		if r.Document != nil && r.Document.EtcdSpace == nodedoc.SpaceLow {
			low = append(low, r.Name)
		}
	}
	if len(low) > 0 {
		out = append(out, "WARNING: etcd database past 80% of its quota on "+strings.Join(low, ", ")+" (see etcd_quota)")
	}
	return out
}

func cmdNode(ctx context.Context, s *session) error {
	name := s.opts.args[0]
	if err := nodedoc.CheckName(name); err != nil {
		return fail(ExitUsage, "%v", err)
	}
	var doc, role []byte
	err := s.request(ctx, "get node "+name, func(ctx context.Context) error {
		resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(nodedoc.NodeKey(name)), clientv3.OpGet(nodedoc.RoleKey(name))).Commit()
		if err != nil {
			return err
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			doc = kvs[0].Value
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			role = kvs[0].Value
		}
		return nil
	})
	if err != nil {
		return err
	}
	if doc == nil {
		if role != nil {
			var r nodedoc.RoleEntry
			_ = json.Unmarshal(role, &r) // only for the message
			return fail(ExitNotFound, "node %q has no document: it is NotReady (registered as %s, its lease expired)", name, orDash(r.Role))
		}
		return fail(ExitNotFound, "node %q not found", name)
	}
	n, err := nodedoc.ParseNode(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", nodedoc.NodeKey(name), err)
	}
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, n)
	}
	return writeFields(s.sys.Stdout, n)
}

// Member is one etcd member in `berthctl members -o json|yaml`.
type Member struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	Leader     bool     `json:"leader"`
	Learner    bool     `json:"learner"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
}

func cmdMembers(ctx context.Context, s *session) error {
	var members []Member
	err := s.request(ctx, "list members", func(ctx context.Context) error {
		resp, err := s.cli.MemberList(ctx)
		if err != nil {
			return err
		}
		leader, err := leaderID(ctx, s.cli)
		if err != nil {
			return err
		}
		for _, m := range resp.Members {
			members = append(members, Member{
				ID: strconv.FormatUint(m.ID, 16), Name: m.Name, Leader: m.ID == leader, Learner: m.IsLearner,
				PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs,
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(members, func(i, j int) bool { return members[i].Name < members[j].Name })
	if s.opts.output != "table" {
		return writeStructured(s.sys.Stdout, s.opts.output, map[string][]Member{"members": members})
	}
	t := s.table("ID", "NAME", "STATUS", "PEER-URLS", "CLIENT-URLS")
	for _, m := range members {
		status := "follower"
		switch {
		case m.Leader:
			status = "leader"
		case m.Learner:
			status = "learner"
		}
		name := m.Name
		if name == "" {
			name = "(not started)" // added as learner, never connected
		}
		t.row(m.ID, name, status, strings.Join(m.PeerURLs, ","), orDash(strings.Join(m.ClientURLs, ",")))
	}
	return t.flush()
}

// leaderID asks the endpoints in turn which member leads.
func leaderID(ctx context.Context, cli *clientv3.Client) (uint64, error) {
	var errs []error
	for _, ep := range cli.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err == nil {
			return st.Leader, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return 0, errors.Join(errs...)
}

// WatchEvent is one line of `berthctl watch -o json`.
type WatchEvent struct {
	Time     time.Time     `json:"time"`
	Type     string        `json:"type"` // PUT or DELETE
	Name     string        `json:"name"`
	Revision int64         `json:"revision"`
	Document *nodedoc.Node `json:"document,omitempty"`
}

func cmdWatch(ctx context.Context, s *session) error {
	// Read the current revision first: it proves the cluster answers (a
	// watch alone would wait silently) and no change after it is missed.
	var rev int64
	err := s.request(ctx, "watch nodes", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, nodedoc.NodesPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.cli.Watch(wctx, nodedoc.NodesPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return explain("watch nodes", err, s.opts.cfg, s.opts.timeout)
		}
		for _, ev := range wr.Events {
			name, ok := nodedoc.NameFromKey(nodedoc.NodesPrefix, string(ev.Kv.Key))
			if !ok {
				continue
			}
			we := WatchEvent{Time: s.sys.Now().UTC().Truncate(time.Second), Type: "PUT", Name: name, Revision: ev.Kv.ModRevision}
			if ev.Type == clientv3.EventTypeDelete {
				we.Type = "DELETE"
			} else if n, err := nodedoc.ParseNode(ev.Kv.Value); err == nil {
				we.Document = &n
			}
			if err := writeWatchLine(s, we); err != nil {
				return err
			}
		}
	}
	return nil // ctx done: interrupted by the user
}

func writeWatchLine(s *session, we WatchEvent) error {
	var line string
	switch {
	case s.opts.output == "json" || s.opts.output == "yaml":
		// One JSON object per line, so the stream stays line-oriented.
		data, err := json.Marshal(we)
		if err != nil {
			return fmt.Errorf("encode watch event: %w", err)
		}
		line = string(data)
	case we.Type == "DELETE":
		line = fmt.Sprintf("%s DELETE %s (document removed: lease expired or revoked)", we.Time.Format(time.RFC3339), we.Name)
	case we.Document == nil:
		line = fmt.Sprintf("%s PUT %s (unreadable document)", we.Time.Format(time.RFC3339), we.Name)
	default:
		d := we.Document
		status := NotReady
		if d.Ready {
			status = Ready
		}
		line = fmt.Sprintf("%s PUT %s %s role=%s version=%s slot=%s", we.Time.Format(time.RFC3339), we.Name, status,
			orDash(d.Role), orDash(d.OS.Version), orDash(d.OS.Slot))
	}
	_, err := fmt.Fprintln(s.sys.Stdout, line)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// HumanDuration prints an age the way kubectl does: 45s, 12m, 5h, 3d.
func HumanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}
