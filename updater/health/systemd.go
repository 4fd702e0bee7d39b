package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
)

// Systemd is the little the gate needs from the service manager; tests use
// a fake, nodes use ConnectSystemd.
type Systemd interface {
	// FailedUnits names the units whose active state is "failed".
	FailedUnits(ctx context.Context) ([]string, error)
	// ActiveState is a unit's ActiveState property: active, reloading,
	// inactive, failed, activating or deactivating.
	ActiveState(ctx context.Context, unit string) (string, error)
	// Reboot queues a clean reboot as "systemctl reboot" does. The gate
	// never calls it; the CLI does after an unhealthy counted boot, so the
	// boot loader can fall back, and it reuses this connection.
	Reboot(ctx context.Context) error
	Close()
}

// ConnectSystemd connects to systemd over the system bus and, when that is
// not available and the caller is root, over systemd's private socket (the
// gate may run before or without dbus-daemon). The connection stays usable
// until ctx is done or Close is called.
func ConnectSystemd(ctx context.Context) (Systemd, error) {
	conn, busErr := sdbus.NewSystemConnectionContext(ctx)
	if busErr == nil {
		return &dbusSystemd{conn: conn}, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("connect to systemd on the system bus: %w", busErr)
	}
	conn, privErr := sdbus.NewSystemdConnectionContext(ctx)
	if privErr != nil {
		return nil, fmt.Errorf("connect to systemd: system bus: %w; private socket: %w", busErr, privErr)
	}
	return &dbusSystemd{conn: conn}, nil
}

type dbusSystemd struct {
	conn *sdbus.Conn
}

func (s *dbusSystemd) FailedUnits(ctx context.Context) ([]string, error) {
	units, err := s.conn.ListUnitsFilteredContext(ctx, []string{"failed"})
	if err != nil {
		return nil, fmt.Errorf("list failed units: %w", err)
	}
	var names []string
	for _, u := range units {
		// The filter matches load and sub states too; keep the active state's meaning.
		if u.ActiveState == "failed" {
			names = append(names, u.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

func (s *dbusSystemd) ActiveState(ctx context.Context, unit string) (string, error) {
	p, err := s.conn.GetUnitPropertyContext(ctx, unit, "ActiveState")
	if err != nil {
		return "", fmt.Errorf("read ActiveState of %s: %w", unit, err)
	}
	state, ok := p.Value.Value().(string)
	if !ok {
		return "", errors.New("ActiveState of " + unit + " is not a string: " + p.Value.String())
	}
	return state, nil
}

func (s *dbusSystemd) Reboot(ctx context.Context) error {
	// replace-irreversibly, like systemctl: later jobs cannot cancel the
	// reboot. It also stops the caller's own unit, which conflicts with
	// shutdown.target, so callers must not expect to outlive it for long.
	if _, err := s.conn.StartUnitContext(ctx, "reboot.target", "replace-irreversibly", nil); err != nil {
		return fmt.Errorf("start reboot.target: %w", err)
	}
	return nil
}

func (s *dbusSystemd) Close() { s.conn.Close() }
