// Package sdstate asks systemd (over D-Bus, go-systemd) what the system
// is doing, for decisions that differ between "this service restarts" and
// "the machine goes down".
package sdstate

import (
	"context"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Stopping reports whether the system is shutting down (systemd's
// SystemState is "stopping"). Without systemd on the bus (a test host, a
// container) it reports false: a stopping service is then taken to be
// restarting.
func Stopping() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return false
	}
	defer conn.Close()
	state, err := conn.GetManagerProperty("SystemState")
	if err != nil {
		return false
	}
	return strings.Trim(state, `"`) == "stopping"
}
