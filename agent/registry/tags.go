package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-os/berth/agent/nodedoc"
)

// TagsPrefix holds the cluster registry's tags, one key per tag:
// TagsPrefix + REPO + ":" + TAG. A repository name has no ':' and a tag no
// '/', so the key splits at its last ':'; a prefix per namespace
// (TagsPrefix + "acme/") lets etcd RBAC grant a tenant its own tags.
const TagsPrefix = nodedoc.Prefix + "registry/tags/"

// TagKey is the etcd key of repo:tag.
func TagKey(repo, tag string) string { return TagsPrefix + repo + ":" + tag }

// TagNamespacePrefix is the prefix of every tag of a namespace (acme, library).
func TagNamespacePrefix(ns string) string { return TagsPrefix + ns + "/" }

// Tag is the value at TagKey.
type Tag struct {
	Digest    string    `json:"digest"`
	MediaType string    `json:"media_type"`
	Pushed    time.Time `json:"pushed"`
	By        string    `json:"by,omitempty"` // the identity that pushed it
}

// TagEntry is one tag of a listing.
type TagEntry struct {
	Repo, Name string
	Tag
}

// Tags is where the registry keeps tags when they must be one truth for
// the whole cluster. Blobs and manifests stay in each node's store and are
// fetched by digest.
type Tags interface {
	Get(ctx context.Context, repo, tag string) (Tag, bool, error)
	Put(ctx context.Context, repo, tag string, t Tag) error
	// Delete removes repo:tag; false when it did not exist.
	Delete(ctx context.Context, repo, tag string) (bool, error)
	// List returns every tag of repositories starting with prefix ("" = all).
	List(ctx context.Context, prefix string) ([]TagEntry, error)
}

// EtcdTags keeps tags in etcd under TagsPrefix. The client arrives once the
// agent's etcd is up (SetClient); until then requests fail as unavailable.
type EtcdTags struct {
	mu  sync.RWMutex
	cli *clientv3.Client
}

// SetClient makes the store usable.
func (e *EtcdTags) SetClient(cli *clientv3.Client) {
	e.mu.Lock()
	e.cli = cli
	e.mu.Unlock()
}

func (e *EtcdTags) client() (*clientv3.Client, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.cli == nil {
		return nil, errTagsUnavailable
	}
	return e.cli, nil
}

var errTagsUnavailable = fmt.Errorf("tag store not ready: etcd is not up yet")

// Get reads repo:tag (a linearizable read: every node answers the same).
func (e *EtcdTags) Get(ctx context.Context, repo, tag string) (Tag, bool, error) {
	cli, err := e.client()
	if err != nil {
		return Tag{}, false, err
	}
	resp, err := cli.Get(ctx, TagKey(repo, tag))
	if err != nil {
		return Tag{}, false, fmt.Errorf("read tag %s:%s: %w", repo, tag, err)
	}
	if len(resp.Kvs) == 0 {
		return Tag{}, false, nil
	}
	var t Tag
	if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
		return Tag{}, false, fmt.Errorf("tag %s:%s: corrupt record: %w", repo, tag, err)
	}
	return t, true, nil
}

// Put writes repo:tag.
func (e *EtcdTags) Put(ctx context.Context, repo, tag string, t Tag) error {
	cli, err := e.client()
	if err != nil {
		return err
	}
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode tag: %w", err)
	}
	if _, err := cli.Put(ctx, TagKey(repo, tag), string(data)); err != nil {
		return fmt.Errorf("write tag %s:%s: %w", repo, tag, err)
	}
	return nil
}

// Delete removes repo:tag.
func (e *EtcdTags) Delete(ctx context.Context, repo, tag string) (bool, error) {
	cli, err := e.client()
	if err != nil {
		return false, err
	}
	resp, err := cli.Delete(ctx, TagKey(repo, tag))
	if err != nil {
		return false, fmt.Errorf("delete tag %s:%s: %w", repo, tag, err)
	}
	return resp.Deleted > 0, nil
}

// List reads every tag under prefix.
func (e *EtcdTags) List(ctx context.Context, prefix string) ([]TagEntry, error) {
	cli, err := e.client()
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, TagsPrefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	out := make([]TagEntry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		repo, tag, ok := splitTagKey(string(kv.Key))
		var t Tag
		if !ok || json.Unmarshal(kv.Value, &t) != nil {
			continue // not ours to serve; a corrupt record is not a tag
		}
		out = append(out, TagEntry{Repo: repo, Name: tag, Tag: t})
	}
	return out, nil
}

func splitTagKey(key string) (repo, tag string, ok bool) {
	rest, ok := strings.CutPrefix(key, TagsPrefix)
	if !ok {
		return "", "", false
	}
	i := strings.LastIndex(rest, ":")
	if i <= 0 || !repoPattern.MatchString(rest[:i]) || !tagPattern.MatchString(rest[i+1:]) {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// MemTags is an in-process Tags for tests and single-node use.
type MemTags struct {
	mu sync.Mutex
	m  map[string]Tag
}

// Get reads repo:tag.
func (m *MemTags) Get(_ context.Context, repo, tag string) (Tag, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.m[repo+":"+tag]
	return t, ok, nil
}

// Put writes repo:tag.
func (m *MemTags) Put(_ context.Context, repo, tag string, t Tag) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]Tag{}
	}
	m.m[repo+":"+tag] = t
	return nil
}

// Delete removes repo:tag.
func (m *MemTags) Delete(_ context.Context, repo, tag string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.m[repo+":"+tag]
	delete(m.m, repo+":"+tag)
	return ok, nil
}

// List returns the tags of repositories starting with prefix.
func (m *MemTags) List(_ context.Context, prefix string) ([]TagEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []TagEntry
	for _, k := range slices.Sorted(maps.Keys(m.m)) {
		if repo, tag, ok := splitTagKey(TagsPrefix + k); ok && strings.HasPrefix(repo, prefix) {
			out = append(out, TagEntry{Repo: repo, Name: tag, Tag: m.m[k]})
		}
	}
	return out, nil
}
