package slot

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// errBusy means another updater holds the lock.
var errBusy = errors.New("another berth-update is changing the slots right now")

// lock takes StateDir/lock so that two updaters never write the same slot
// or entries. The kernel drops the lock when its holder dies, so a killed
// updater never blocks the next one.
func (s System) lock() (unlock func(), err error) {
	if err := os.MkdirAll(s.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.OpenFile(s.lockPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errBusy
		}
		return nil, fmt.Errorf("lock %s: %w", s.lockPath(), err)
	}
	return func() { f.Close() }, nil
}

// lockHeld reports whether a live updater holds the lock. It only reads:
// Status must not write to the state partition.
func (s System) lockHeld() bool {
	f, err := os.Open(s.lockPath())
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB), unix.EWOULDBLOCK)
}
