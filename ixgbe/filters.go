package ixgbe

import (
	"errors"
	"fmt"
	"net"
)

// filterState mirrors the receive filters so they can be changed without
// reading the tables back.
type filterState struct {
	rar  [numRAR][6]byte // entry 0: the permanent address
	used [numRAR]bool
	// pools are each entry's pools (MPSAR) when the port runs pools;
	// without pools every entry belongs to pool 0.
	pools [numRAR]uint64
	mta   [numMTA]uint32
	vfta  [numVFTA]uint32
}

// ErrNoFilterSlot is returned when all 128 receive address registers are
// in use; use SetPromiscuous or the multicast table instead.
var ErrNoFilterSlot = errors.New("ixgbe: all 128 unicast address filters in use")

var errPoolsNeedPoolMAC = errors.New("ixgbe: the port runs pools: give each address its pool (AddPoolMAC)")

// initFilters puts the L2 filters in a known state: the permanent address
// in RAR 0 and no other, empty multicast and VLAN tables, broadcast
// accepted, promiscuous modes as configured.
func (p *Port) initFilters() {
	f := &p.filters
	copy(f.rar[0][:], p.mac)
	f.used[0] = true
	f.pools[0] = 0 // with pools, no pool's: frames to it reach no guest
	p.writeRAR(0)
	for i := 1; i < numRAR; i++ {
		p.writeRAR(i)
	}
	for i := range numMTA {
		p.write(regMTA+4*uint32(i), 0)
	}
	for i := range numVFTA {
		p.write(regVFTA+4*uint32(i), 0)
	}
	p.initPoolVLANs()
	p.write(regMCSTCTRL, mcstctrlMFE)
	p.clear(regVLNCTRL, vlnctrlVFE)
	fctrl := p.read(regFCTRL) | fctrlBAM
	fctrl = withBit(fctrl, fctrlUPE|fctrlMPE, p.cfg.Promiscuous)
	fctrl = withBit(fctrl, fctrlMPE, p.cfg.Promiscuous || p.cfg.AllMulticast)
	p.write(regFCTRL, fctrl)
}

func withBit(v, bits uint32, on bool) uint32 {
	if on {
		return v | bits
	}
	return v &^ bits
}

// writeRAR programs receive address register i from the mirror, its
// pools in MPSAR: pool 0 (the PF's only pool) without virtualisation;
// with pools, those AddPoolMAC gave it (none for the permanent address,
// which is no guest's: frames to it are dropped).
func (p *Port) writeRAR(i int) {
	f := &p.filters
	off := 8 * uint32(i)
	if !f.used[i] {
		p.write(regRAH+off, 0) // AV off first, so no half-written address matches
		p.write(regRAL+off, 0)
		p.write(regMPSARLo+off, 0)
		p.write(regMPSARHi+off, 0)
		return
	}
	m := f.rar[i]
	p.write(regRAH+off, 0)
	p.write(regRAL+off, uint32(m[0])|uint32(m[1])<<8|uint32(m[2])<<16|uint32(m[3])<<24)
	pools := uint64(1)
	if p.qpp != 0 {
		pools = f.pools[i]
	}
	p.write(regMPSARLo+off, uint32(pools))
	p.write(regMPSARHi+off, uint32(pools>>32))
	p.write(regRAH+off, uint32(m[4])|uint32(m[5])<<8|rahAV)
}

func mac6(mac net.HardwareAddr) ([6]byte, error) {
	var m [6]byte
	if len(mac) != 6 {
		return m, fmt.Errorf("ixgbe: %q is not a 48-bit MAC address", mac)
	}
	copy(m[:], mac)
	return m, nil
}

// AddMAC makes the port accept unicast frames to mac as well. A port
// with pools takes addresses per pool (AddPoolMAC).
func (p *Port) AddMAC(mac net.HardwareAddr) error {
	if p.qpp != 0 {
		return errPoolsNeedPoolMAC
	}
	return p.claimRAR(0, mac)
}

// RemoveMAC stops accepting unicast frames to mac (added with AddMAC).
// The permanent address cannot be removed.
func (p *Port) RemoveMAC(mac net.HardwareAddr) error {
	if p.qpp != 0 {
		return errPoolsNeedPoolMAC
	}
	return p.releaseRAR(0, mac)
}

// Addresses lists the unicast addresses the port accepts besides its
// permanent one (AddMAC, AddPoolMAC).
func (p *Port) Addresses() []net.HardwareAddr {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	var out []net.HardwareAddr
	for i := 1; i < numRAR; i++ {
		if p.filters.used[i] {
			out = append(out, append(net.HardwareAddr(nil), p.filters.rar[i][:]...))
		}
	}
	return out
}

// claimRAR gives pool the receive address entry of mac: the one mac has
// already, or a free one.
func (p *Port) claimRAR(pool int, mac net.HardwareAddr) error {
	m, err := mac6(mac)
	if err != nil {
		return err
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	f := &p.filters
	free := -1
	for i := range numRAR {
		if f.used[i] && f.rar[i] == m {
			f.pools[i] |= 1 << uint(pool)
			p.writeRAR(i)
			return nil
		}
		if !f.used[i] && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return ErrNoFilterSlot
	}
	f.rar[free], f.used[free], f.pools[free] = m, true, 1<<uint(pool)
	p.writeRAR(free)
	return nil
}

// releaseRAR takes pool off the entry of mac, freeing the entry when no
// pool is left on it. The permanent address (entry 0) stays, its pools
// as they were before AddPoolMAC.
func (p *Port) releaseRAR(pool int, mac net.HardwareAddr) error {
	m, err := mac6(mac)
	if err != nil {
		return err
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	f := &p.filters
	for i := range numRAR {
		if f.used[i] && f.rar[i] == m && f.pools[i]&(1<<uint(pool)) != 0 {
			f.pools[i] &^= 1 << uint(pool)
			f.used[i] = i == 0 || f.pools[i] != 0
			p.writeRAR(i)
			return nil
		}
	}
	return fmt.Errorf("ixgbe: %s is not a filtered address of pool %d", mac, pool)
}

// mtaHash is the 12-bit multicast table index of a destination address
// with MCSTCTRL.MO = 0: address bits 47:36, i.e. the top nibble of byte 4
// and all of byte 5.
func mtaHash(m [6]byte) uint32 {
	return (uint32(m[4])>>4 | uint32(m[5])<<4) & 0xFFF
}

// SetMulticast replaces the multicast addresses the port accepts. The
// table is a 4096-bit hash, so some other groups get through too.
func (p *Port) SetMulticast(groups []net.HardwareAddr) error {
	var mta [numMTA]uint32
	for _, g := range groups {
		m, err := mac6(g)
		if err != nil {
			return err
		}
		if m[0]&1 == 0 {
			return fmt.Errorf("ixgbe: %s is not a multicast address", g)
		}
		h := mtaHash(m)
		mta[h>>5] |= 1 << (h & 31)
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	for i := range numMTA {
		if p.filters.mta[i] != mta[i] {
			p.write(regMTA+4*uint32(i), mta[i])
		}
	}
	p.filters.mta = mta
	return nil
}

// SetPromiscuous turns acceptance of every unicast and multicast frame on
// or off. (The datasheet prefers FCTRL changed with receiving off; the
// Intel drivers change these bits live, as this does.)
func (p *Port) SetPromiscuous(on bool) {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	p.cfg.Promiscuous = on
	p.writeFCTRLModes()
}

// SetAllMulticast turns acceptance of every multicast frame on or off.
func (p *Port) SetAllMulticast(on bool) {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	p.cfg.AllMulticast = on
	p.writeFCTRLModes()
}

func (p *Port) writeFCTRLModes() {
	v := p.read(regFCTRL)
	v = withBit(v, fctrlUPE, p.cfg.Promiscuous)
	v = withBit(v, fctrlMPE, p.cfg.Promiscuous || p.cfg.AllMulticast)
	p.write(regFCTRL, v)
}

// AddVLAN accepts frames tagged with vid once the VLAN filter is on.
func (p *Port) AddVLAN(vid uint16) error { return p.setVLAN(vid, true) }

// RemoveVLAN stops accepting frames tagged with vid.
func (p *Port) RemoveVLAN(vid uint16) error { return p.setVLAN(vid, false) }

func (p *Port) setVLAN(vid uint16, on bool) error {
	if vid >= 4096 {
		return fmt.Errorf("ixgbe: VLAN ID %d out of range 0-4095", vid)
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	i, bit := vid>>5, uint32(1)<<(vid&31)
	p.filters.vfta[i] = withBit(p.filters.vfta[i], bit, on)
	p.write(regVFTA+4*uint32(i), p.vftaWord(int(i)))
	return nil
}

// SetVLANFilter turns VLAN filtering on (only tagged frames whose ID was
// added, and untagged frames, are accepted) or off. While a pool has a
// VLAN (SetPoolVLAN) filtering stays on regardless.
func (p *Port) SetVLANFilter(on bool) {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	p.pvlan.vfe = on
	p.writeVLNCTRL()
}
