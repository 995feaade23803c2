package appliance

import (
	"fmt"
	"net"
	"sync"

	"github.com/zcnet/zcnet/ixgbe"
)

// guestMACs is a NIC's unicast address filter shared by the channels
// on it: every queue pair of a guest is a channel that tells the
// filter the guest's MAC, and several guests may share the NIC. An address
// stays accepted while any port needs it, and the NIC's own permanent
// address is never added or removed.
type guestMACs struct {
	nic  *ixgbe.Port
	own  [6]byte
	mu   sync.Mutex
	refs map[[6]byte]int
}

func newGuestMACs(nic *ixgbe.Port) *guestMACs {
	g := &guestMACs{nic: nic, refs: map[[6]byte]int{}}
	copy(g.own[:], nic.MAC())
	return g
}

// AcceptGuestMAC implements engine.MACFilter. The new address is accepted
// before the old one is dropped, so no moment accepts neither; a zero mac
// (a port closing) only drops prev, so a guest removed at runtime leaves
// nothing in the filter.
func (g *guestMACs) AcceptGuestMAC(prev, mac [6]byte) error {
	if prev == mac {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if mac != g.own && mac != ([6]byte{}) {
		if g.refs[mac] == 0 {
			if err := g.nic.AddMAC(mac[:]); err != nil {
				return fmt.Errorf("NIC filter: accept %s: %w", net.HardwareAddr(mac[:]), err)
			}
		}
		g.refs[mac]++
	}
	return g.drop(prev)
}

// drop takes one port's claim on mac off (g.mu held).
func (g *guestMACs) drop(mac [6]byte) error {
	if mac == ([6]byte{}) || mac == g.own || g.refs[mac] == 0 {
		return nil
	}
	if g.refs[mac]--; g.refs[mac] > 0 {
		return nil
	}
	delete(g.refs, mac)
	if err := g.nic.RemoveMAC(mac[:]); err != nil {
		return fmt.Errorf("NIC filter: stop accepting %s: %w", net.HardwareAddr(mac[:]), err)
	}
	return nil
}

// accepted counts the guest addresses the filter holds besides the NIC's
// own (for tests and telemetry).
func (g *guestMACs) accepted() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.refs)
}
