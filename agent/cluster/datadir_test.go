package cluster

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// The record survives a save and a load, keeps the on-disk keys of data
// dirs in the field, and an empty data dir has none.
func TestDataDirRecordRoundTrip(t *testing.T) {
	dir := dataDir(t.TempDir())
	if rec, err := dir.loadRecord(); rec != nil || err != nil {
		t.Fatalf("empty data dir: %+v, %v", rec, err)
	}
	want := &dataDirRecord{
		Name: "node-1", Member: true,
		InitialCluster: "node-1=https://10.0.0.1:2380", ClusterState: "new", ClusterToken: "berth-0011223344556677",
		Endpoints: []string{"https://10.0.0.1:2379"}, AuthDone: true, JoinURLs: []string{"https://10.0.0.2:7480"},
	}
	if err := dir.saveRecord(want); err != nil {
		t.Fatal(err)
	}
	got, err := dir.loadRecord()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}

	data, err := os.ReadFile(dir.path("node.json"))
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "member", "initial_cluster", "cluster_state", "cluster_token", "endpoints", "auth_done", "join_urls"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("node.json lacks %q: %s", k, data)
		}
	}
	if fi, err := os.Stat(dir.path("node.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("node.json mode: %v, %v", fi, err)
	}

	if err := os.WriteFile(dir.path("node.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.loadRecord(); err == nil || !strings.Contains(err.Error(), dir.path("node.json")) {
		t.Fatalf("corrupt record: %v, want an error naming the file", err)
	}
}

// The store saves a change, skips a non-change, and hands out copies.
func TestRecordStore(t *testing.T) {
	dir := dataDir(t.TempDir())
	s := &recordStore{dir: dir, rec: &dataDirRecord{Name: "node-1", Endpoints: []string{"https://a:2379"}}}
	if err := s.update(func(*dataDirRecord) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir.path(recordFile)); !os.IsNotExist(err) {
		t.Fatalf("unchanged record written: %v", err)
	}
	c := s.get()
	c.Endpoints[0] = "changed"
	if s.get().Endpoints[0] != "https://a:2379" {
		t.Fatal("get does not copy")
	}
	if err := s.update(func(r *dataDirRecord) bool { r.Member = true; return true }); err != nil {
		t.Fatal(err)
	}
	got, err := dir.loadRecord()
	if err != nil || got == nil || !got.Member {
		t.Fatalf("saved record: %+v, %v", got, err)
	}
}
