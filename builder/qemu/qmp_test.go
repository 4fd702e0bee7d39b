package qemu

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQMP answers like qemu: a greeting, then, once capabilities are
// negotiated, the given events, then it closes (qemu exits).
func fakeQMP(t *testing.T, events ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\r\n"))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		if !strings.Contains(line, "qmp_capabilities") {
			return
		}
		conn.Write([]byte(`{"return": {}}` + "\r\n"))
		for _, e := range events {
			conn.Write([]byte(e + "\r\n"))
		}
	}()
	return sock
}

func TestQMPShutdownReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []string
		want   string
	}{
		{"guest reboot", []string{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}`,
			`{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}`}, "guest-reset"},
		{"guest power-off", []string{`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}`}, "guest-shutdown"},
		{"killed: no event", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := qmpShutdownReason(fakeQMP(t, tc.events...), time.Second)
			if err != nil || got != tc.want {
				t.Errorf("reason %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := qmpShutdownReason(filepath.Join(t.TempDir(), "none.sock"), 300*time.Millisecond); err == nil {
		t.Errorf("no socket: no error")
	}
}
