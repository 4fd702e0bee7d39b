package volume

import (
	"reflect"
	"testing"
)

func TestParseProc(t *testing.T) {
	text := `version: 8.4.11 (api:1/proto:86-101)
srcversion: 211FB288A383ED945B83420 
 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
    ns:1024 nr:0 dw:1028 dr:2048 al:1 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 1: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:4096 nr:0 dw:0 dr:4096 al:0 bm:0 lo:0 pe:1 ua:0 ap:0 ep:1 wo:f oos:61440
	[=>..................] sync'ed: 10.5% (61440/65536)K
	finish: 0:00:10 speed: 10,000 (10,000) K/sec
 2: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C s-----
    ns:0 nr:0 dw:8 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:8
 3: cs:Unconfigured
`
	got := ParseProc(text)
	want := map[int]DeviceState{
		0: {Minor: 0, Connection: "Connected", Role: "Primary", PeerRole: "Secondary", Disk: "UpToDate", PeerDisk: "UpToDate",
			SentKiB: 1024, WrittenKiB: 1028, ReadKiB: 2048, ConfiguredMinor: true},
		1: {Minor: 1, Connection: "SyncSource", Role: "Primary", PeerRole: "Secondary", Disk: "UpToDate", PeerDisk: "Inconsistent",
			SentKiB: 4096, ReadKiB: 4096, OutOfSyncKiB: 61440, ConfiguredMinor: true},
		2: {Minor: 2, Connection: "WFConnection", Role: "Primary", PeerRole: "Unknown", Disk: "UpToDate", PeerDisk: "DUnknown",
			Suspended: true, WrittenKiB: 8, OutOfSyncKiB: 8, ConfiguredMinor: true},
		3: {Minor: 3, Connection: "Unconfigured"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if !got[1].Connected() || got[2].Connected() || got[3].Connected() {
		t.Fatal("Connected is wrong")
	}
	if len(ParseProc("")) != 0 || len(ParseProc("version: 8.4.11\n")) != 0 {
		t.Fatal("no minors expected")
	}
}
