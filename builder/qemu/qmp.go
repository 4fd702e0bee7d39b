package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpShutdownReason connects to a qemu's QMP socket and follows its
// events until qemu exits, returning the reason of the last SHUTDOWN
// event ("guest-reset", "guest-shutdown", "guest-panic", ...) or "" when
// there was none (qemu killed). The socket may take a moment to appear
// after qemu starts; dial is retried for up to wait.
func qmpShutdownReason(sock string, wait time.Duration) (string, error) {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
		if conn, err = net.Dial("unix", sock); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("qmp %s: %w", sock, err)
	}
	defer conn.Close()
	dec := json.NewDecoder(bufio.NewReader(conn))
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil {
		return "", fmt.Errorf("qmp %s: greeting: %w", sock, err)
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		return "", fmt.Errorf("qmp %s: %w", sock, err)
	}
	reason := ""
	for {
		var msg struct {
			Event string `json:"event"`
			Data  struct {
				Reason string `json:"reason"`
			} `json:"data"`
		}
		if err := dec.Decode(&msg); err != nil {
			// qemu exited and closed the socket.
			return reason, nil
		}
		if msg.Event == "SHUTDOWN" {
			reason = msg.Data.Reason
		}
	}
}
