package netsetup

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/berth-os/berth/internal/atomicfile"
)

// ipam hands out addresses from the node subnets. State lives in one JSON file
// so agent restarts keep every container's address; a separate lock file is
// flock-ed because the JSON file itself is replaced by rename on every write.
type ipam struct {
	statePath string
	lockPath  string
	subnet4   netip.Prefix
	subnet6   netip.Prefix // invalid when IPv6 is off
}

type allocation struct {
	IPv4 netip.Addr `json:"ipv4"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

type ipamState struct {
	Allocations map[string]allocation `json:"allocations"`
}

func newIPAM(dir string, subnet4, subnet6 netip.Prefix) (*ipam, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ipam dir: %w", err)
	}
	return &ipam{
		statePath: filepath.Join(dir, "ipam.json"),
		lockPath:  filepath.Join(dir, "ipam.lock"),
		subnet4:   subnet4,
		subnet6:   subnet6,
	}, nil
}

// withLock runs fn on the current state under an exclusive flock and saves the
// state when fn reports a change.
func (m *ipam) withLock(fn func(st *ipamState) (changed bool, err error)) error {
	lock, err := os.OpenFile(m.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open ipam lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock ipam: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // close releases it anyway

	st, err := m.load()
	if err != nil {
		return err
	}
	changed, err := fn(st)
	if err != nil || !changed {
		return err
	}
	return m.save(st)
}

func (m *ipam) load() (*ipamState, error) {
	st := &ipamState{Allocations: map[string]allocation{}}
	data, err := os.ReadFile(m.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ipam state: %w", err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("parse ipam state %s: %w", m.statePath, err)
	}
	if st.Allocations == nil {
		st.Allocations = map[string]allocation{}
	}
	return st, nil
}

// save replaces the state file atomically (temp, fsync, rename, fsync of the
// directory), so a crash leaves either the old or the new state.
func (m *ipam) save(st *ipamState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ipam state: %w", err)
	}
	if err := atomicfile.WriteFile(m.statePath, data, 0o600); err != nil {
		return fmt.Errorf("replace ipam state: %w", err)
	}
	return nil
}

// allocate returns id's addresses, reusing what it had when still inside the
// current subnets, else the lowest free addresses.
func (m *ipam) allocate(id string) (allocation, error) {
	var out allocation
	err := m.withLock(func(st *ipamState) (bool, error) {
		cur, had := st.Allocations[id]
		want := cur
		used4, used6 := map[netip.Addr]bool{}, map[netip.Addr]bool{}
		for other, a := range st.Allocations {
			if other != id {
				used4[a.IPv4] = true
				used6[a.IPv6] = true
			}
		}
		if !m.subnet4.Contains(want.IPv4) || used4[want.IPv4] {
			a, err := lowestFree(m.subnet4, used4)
			if err != nil {
				return false, err
			}
			want.IPv4 = a
		}
		switch {
		case !m.subnet6.IsValid():
			// IPv6 off: forget any old v6 address so Attachment reports none.
			want.IPv6 = netip.Addr{}
		case !m.subnet6.Contains(want.IPv6) || used6[want.IPv6]:
			a, err := lowestFree(m.subnet6, used6)
			if err != nil {
				return false, err
			}
			want.IPv6 = a
		}
		out = want
		if had && cur == want {
			return false, nil
		}
		st.Allocations[id] = want
		return true, nil
	})
	return out, err
}

// release forgets id's addresses; unknown ids are fine.
func (m *ipam) release(id string) error {
	return m.withLock(func(st *ipamState) (bool, error) {
		if _, ok := st.Allocations[id]; !ok {
			return false, nil
		}
		delete(st.Allocations, id)
		return true, nil
	})
}

// lookup returns id's current allocation, if any.
func (m *ipam) lookup(id string) (allocation, bool, error) {
	var (
		out allocation
		ok  bool
	)
	err := m.withLock(func(st *ipamState) (bool, error) {
		out, ok = st.Allocations[id]
		return false, nil
	})
	return out, ok, err
}

// lowestFree scans upward from the address after the gateway. The scan is
// bounded by the number of used addresses plus one, except for a full subnet.
func lowestFree(p netip.Prefix, used map[netip.Addr]bool) (netip.Addr, error) {
	last := lastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev() // IPv4 broadcast address
	}
	for a := gateway(p).Next(); a.IsValid() && p.Contains(a); a = a.Next() {
		if a.Compare(last) > 0 {
			break
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s is exhausted: no free container address", p)
}

// lastAddr is the highest address inside p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
