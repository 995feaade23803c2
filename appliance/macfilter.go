package appliance

import (
	"fmt"
	"net"
	"sync"

	"github.com/zcnet/zcnet/ixgbe"
)

// guestMACs is the NIC's unicast address filter as one guest's channels
// see it: every queue pair of the guest is a channel that tells the
// filter the guest's MAC. An address stays accepted while any of them
// needs it. On a NIC with pools the addresses are the guest's pool's
// (frames to them land only in its queues); without pools they are the
// port's, and the NIC's own permanent address, which it accepts anyway,
// is never added or removed.
type guestMACs struct {
	nic *ixgbe.Port
	// vf, instead of nic: the NIC port is an SR-IOV VF, whose address
	// the host sets on request (it has one, always the guest's).
	vf   *ixgbe.VF
	pool int // the guest's pool; -1: the NIC runs no pools
	// antiSpoof: while the pool has an address, the NIC drops frames the
	// guest sends from any other (an untrusted guest on a shared port).
	antiSpoof bool
	own       [6]byte
	mu        sync.Mutex
	refs      map[[6]byte]int
}

func newGuestMACs(nic *ixgbe.Port, pool int, trusted bool) *guestMACs {
	g := &guestMACs{nic: nic, pool: pool, antiSpoof: pool >= 0 && !trusted, refs: map[[6]byte]int{}}
	if pool < 0 {
		copy(g.own[:], nic.MAC())
	}
	return g
}

func (g *guestMACs) add(mac [6]byte) error {
	if g.vf != nil {
		return g.vf.SetMAC(mac[:])
	}
	if g.pool >= 0 {
		return g.nic.AddPoolMAC(g.pool, mac[:])
	}
	return g.nic.AddMAC(mac[:])
}

func (g *guestMACs) remove(mac [6]byte) error {
	if g.vf != nil {
		return nil // the VF keeps its address: it has one, always
	}
	if g.pool >= 0 {
		return g.nic.RemovePoolMAC(g.pool, mac[:])
	}
	return g.nic.RemoveMAC(mac[:])
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
	if mac != ([6]byte{}) && (g.pool >= 0 || mac != g.own) {
		if g.refs[mac] == 0 {
			if err := g.add(mac); err != nil {
				return fmt.Errorf("NIC filter: accept %s: %w", net.HardwareAddr(mac[:]), err)
			}
		}
		g.refs[mac]++
	}
	if err := g.drop(prev); err != nil {
		return err
	}
	if g.antiSpoof {
		// The address is the pool's before the check applies, and the
		// check goes when the pool has none left (the guest is leaving).
		return g.nic.SetPoolAntiSpoof(g.pool, len(g.refs) > 0)
	}
	return nil
}

// drop takes one port's claim on mac off (g.mu held).
func (g *guestMACs) drop(mac [6]byte) error {
	if mac == ([6]byte{}) || g.refs[mac] == 0 {
		return nil
	}
	if g.refs[mac]--; g.refs[mac] > 0 {
		return nil
	}
	delete(g.refs, mac)
	if err := g.remove(mac); err != nil {
		return fmt.Errorf("NIC filter: stop accepting %s: %w", net.HardwareAddr(mac[:]), err)
	}
	return nil
}
