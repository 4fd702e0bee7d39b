package volume

import (
	"bufio"
	"strconv"
	"strings"
)

// DeviceState is one DRBD minor as /proc/drbd (8.4) shows it.
type DeviceState struct {
	Minor           int
	Connection      string // Connected, WFConnection, StandAlone, SyncSource, SyncTarget, Unconfigured...
	Role, PeerRole  string // Primary, Secondary, Unknown
	Disk, PeerDisk  string // UpToDate, Inconsistent, Outdated, DUnknown, Diskless...
	Suspended       bool   // I/O frozen (the fence-peer handler has not let it go yet)
	SentKiB         int64  // ns: sent to the peer
	ReceivedKiB     int64  // nr: received from the peer
	WrittenKiB      int64  // dw: written to the local disk
	ReadKiB         int64  // dr: read from the local disk
	OutOfSyncKiB    int64  // oos: what a resync still has to move
	ConfiguredMinor bool   // false for "cs:Unconfigured"
}

// Connected tells whether both sides replicate (or resync).
func (d DeviceState) Connected() bool {
	switch d.Connection {
	case "Connected", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT":
		return true
	}
	return false
}

// ParseProc reads /proc/drbd of DRBD 8.4 into its minors' states.
//
//	0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
//	   ns:1024 nr:0 dw:1024 dr:2048 al:1 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
func ParseProc(text string) map[int]DeviceState {
	out := map[int]DeviceState{}
	cur := -1
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		head, rest, ok := strings.Cut(line, ": ")
		if n, err := strconv.Atoi(head); ok && err == nil && strings.HasPrefix(rest, "cs:") {
			cur = n
			d := DeviceState{Minor: n}
			for _, f := range strings.Fields(rest) {
				k, v, _ := strings.Cut(f, ":")
				switch k {
				case "cs":
					d.Connection = v
					d.ConfiguredMinor = v != "Unconfigured"
				case "ro":
					d.Role, d.PeerRole, _ = strings.Cut(v, "/")
				case "ds":
					d.Disk, d.PeerDisk, _ = strings.Cut(v, "/")
				}
			}
			// The I/O flags follow the protocol letter: "r-----"; an 's'
			// in first place means suspended.
			if f := strings.Fields(rest); len(f) >= 5 && len(f[4]) > 0 {
				d.Suspended = f[4][0] == 's'
			}
			out[n] = d
			continue
		}
		if cur < 0 || !strings.HasPrefix(line, "ns:") {
			continue
		}
		d := out[cur]
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, ":")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "ns":
				d.SentKiB = n
			case "nr":
				d.ReceivedKiB = n
			case "dw":
				d.WrittenKiB = n
			case "dr":
				d.ReadKiB = n
			case "oos":
				d.OutOfSyncKiB = n
			}
		}
		out[cur] = d
	}
	return out
}
