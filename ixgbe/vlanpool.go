package ixgbe

import (
	"errors"
	"fmt"
)

// A pool on an access VLAN, the way Linux's PF driver gives a VF a port
// VLAN (ixgbe_sriov.c, ixgbe_enable_port_vlan): on the wire the pool's
// frames carry the VLAN's 802.1Q tag, the guest behind the pool sends and
// receives them untagged. The pieces, per the 82599 datasheet as Linux and
// DPDK program them:
//
//   - receive: the VLAN's pool filter entry (PFVLVF with VIEN, the pool's
//     bit in PFVLVFB; ixgbe_set_vlvf_generic), its VFTA bit and
//     VLNCTRL.VFE, so a tagged frame reaches only the pools of its VLAN;
//     VMOLR.AUPE off, so untagged frames do not reach the pool
//     (ixgbe_set_vmolr); RXDCTL.VME on the pool's queues, so the tag is
//     stripped and reported in the descriptor (RxDone.VLAN).
//   - transmit: PFVMVIR with VLANA 01b, "always insert the default
//     VLAN", and the VID (ixgbe_set_vmvir); VLAN anti-spoofing
//     (PFVFSPOOF bits 15:8) while the pool's MAC anti-spoofing is on, as
//     Linux pairs them for a VF with spoofchk.

const (
	regPFVMVIR  = 0x08000 // + 4p (VMVIR)
	regPFVLVF   = 0x0F100 // + 4n (VLVF), n = 0..63
	regPFVLVFB  = 0x0F200 // + 8n pools 0-31, + 8n + 4 pools 32-63
	numVLVF     = 64
	vlvfVIEN    = 1 << 31
	vmvirAlways = 1 << 30 // VLANA 01b: always insert the default VLAN
	spoofVLANAS = 8       // PFVFSPOOF: VLAN anti-spoofing bits follow the MAC ones
	maxVID      = 4095
)

// ErrNoVLANSlot is returned when all 64 VLAN pool filters (PFVLVF) are
// taken by other VLANs.
var ErrNoVLANSlot = errors.New("ixgbe: all 64 VLAN pool filters in use")

// poolVLANState mirrors the pools' VLANs and the VLAN pool filter table.
type poolVLANState struct {
	vid    [maxPools]uint16 // each pool's VLAN, 0: untagged
	tagged uint64           // pools with a VLAN
	slot   [numVLVF]vlvfSlot
	// vfe is VLAN filtering as SetVLANFilter asked; VLNCTRL.VFE is also on
	// while any pool has a VLAN.
	vfe bool
}

// vlvfSlot is one PFVLVF entry: a VLAN and its pools (none: free).
type vlvfSlot struct {
	vid   uint16
	pools uint64
}

// initPoolVLANs clears the VLAN pool filters and every pool's default
// VLAN, as Linux's ixgbe_clear_vfta_generic clears PFVLVF/PFVLVFB with
// the VFTA.
func (p *Port) initPoolVLANs() {
	p.pvlan = poolVLANState{}
	for i := range uint32(numVLVF) {
		p.write(regPFVLVF+4*i, 0)
		p.write(regPFVLVFB+8*i, 0)
		p.write(regPFVLVFB+8*i+4, 0)
	}
	for pool := range uint32(maxPools) {
		p.write(regPFVMVIR+4*pool, 0)
	}
}

// SetPoolVLAN puts pool on access VLAN vid (1 to 4095), or with vid 0
// takes it off its VLAN. On a VLAN the pool receives only frames tagged
// vid (to its addresses, and broadcast and multicast it accepts), with
// the tag stripped: the frame in the buffer is untagged and RxDone
// reports the tag (VLANStripped, VLAN); untagged frames and other VLANs
// do not reach it. Every frame it sends leaves tagged vid: the NIC
// inserts the tag, so the guest sends untagged frames (a tag the guest
// puts in a frame stays inside, under vid). With the internal switch on,
// frames between pools are switched by the same rules: pools on one VLAN
// reach each other, pools on different VLANs (or a VLAN and untagged) do
// not. While the pool's anti-spoofing is on (SetPoolAntiSpoof) its VLAN
// is checked too; spoofed frames count in Stats.TxSpoofed.
//
// While any pool has a VLAN the port filters VLANs (VLNCTRL.VFE): pools
// without one then receive untagged frames only. Several pools may share
// a VLAN. vid 0 restores the pool's untagged behaviour. The pool's RX
// queues keep stripping across StopRxQueue/StartRxQueue.
func (p *Port) SetPoolVLAN(pool int, vid uint16) error {
	if err := p.checkPool(pool); err != nil {
		return err
	}
	if vid > maxVID {
		return fmt.Errorf("ixgbe: VLAN ID %d out of range 1-%d (0: none)", vid, maxVID)
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	s := &p.pvlan
	old := s.vid[pool]
	if old == vid {
		return nil
	}
	bit := uint64(1) << uint(pool)
	// Join the new VLAN's filter first, so the pool's tagged frames have
	// a way in before its untagged ones lose theirs.
	if vid != 0 {
		n, err := s.findSlot(vid)
		if err != nil {
			return err
		}
		s.slot[n].vid = vid
		s.slot[n].pools |= bit
		p.writeVLVF(n)
		p.write(regVFTA+4*uint32(vid>>5), p.vftaWord(int(vid>>5)))
	}
	s.vid[pool] = vid
	if vid != 0 {
		s.tagged |= bit
	} else {
		s.tagged &^= bit
	}
	p.writeVLNCTRL()
	vmolr := regPFVML2FLT + 4*uint32(pool)
	p.write(vmolr, withBit(p.read(vmolr), vmolrAUPE, vid == 0))
	for i := range p.qpp {
		q := p.rx[pool*p.qpp+i]
		q.vme = vid != 0
		reg := rxQueueReg(q.index, rxqRXDCTL)
		p.write(reg, withBit(p.read(reg), rxdctlVME, q.vme || p.cfg.VLANStrip))
	}
	if vid != 0 {
		p.write(regPFVMVIR+4*uint32(pool), vmvirAlways|uint32(vid))
	} else {
		p.write(regPFVMVIR+4*uint32(pool), 0)
	}
	p.writeSpoof(p.pools.spoof)
	// Leave the old VLAN last: its VFTA bit goes before its filter entry
	// (as Linux orders it), so no frame of it slips past the pool filter.
	if old != 0 {
		n, _ := s.findSlot(old)
		s.slot[n].pools &^= bit
		if s.slot[n].pools == 0 {
			p.write(regVFTA+4*uint32(old>>5), p.vftaWord(int(old>>5)))
		}
		p.writeVLVF(n)
	}
	return nil
}

// PoolVLAN is pool's access VLAN (0: none).
func (p *Port) PoolVLAN(pool int) uint16 {
	if p.checkPool(pool) != nil {
		return 0
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	return p.pvlan.vid[pool]
}

// findSlot is the VLAN filter entry of vid, or the first free one.
func (s *poolVLANState) findSlot(vid uint16) (int, error) {
	free := -1
	for i, e := range s.slot {
		if e.pools != 0 && e.vid == vid {
			return i, nil
		}
		if e.pools == 0 && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return 0, ErrNoVLANSlot
	}
	return free, nil
}

// writeVLVF programs VLAN filter entry n from the mirror: the pool bitmap
// first, then the entry valid with its VID; a free entry is invalidated
// first, then its bitmap cleared.
func (p *Port) writeVLVF(n int) {
	e := p.pvlan.slot[n]
	off := uint32(n)
	if e.pools == 0 {
		p.write(regPFVLVF+4*off, 0)
		p.write(regPFVLVFB+8*off, 0)
		p.write(regPFVLVFB+8*off+4, 0)
		return
	}
	p.write(regPFVLVFB+8*off, uint32(e.pools))
	p.write(regPFVLVFB+8*off+4, uint32(e.pools>>32))
	p.write(regPFVLVF+4*off, vlvfVIEN|uint32(e.vid))
}

// vftaWord is VFTA register i: the VLANs AddVLAN accepted and those of
// the pools.
func (p *Port) vftaWord(i int) uint32 {
	w := p.filters.vfta[i]
	for _, e := range p.pvlan.slot {
		if e.pools != 0 && int(e.vid>>5) == i {
			w |= 1 << (e.vid & 31)
		}
	}
	return w
}

// writeVLNCTRL sets VLNCTRL.VFE as SetVLANFilter asked, or while any pool
// has a VLAN.
func (p *Port) writeVLNCTRL() {
	p.write(regVLNCTRL, withBit(p.read(regVLNCTRL), vlnctrlVFE, p.pvlan.vfe || p.pvlan.tagged != 0))
}

// writeSpoof programs PFVFSPOOF: MAC anti-spoofing for the pools in
// spoof, VLAN anti-spoofing for those of them with a VLAN.
func (p *Port) writeSpoof(spoof uint64) {
	vlan := spoof & p.pvlan.tagged
	for n := range uint32(8) {
		mac := uint32(spoof>>(8*n)) & 0xFF
		as := uint32(vlan>>(8*n)) & 0xFF
		p.write(regPFVFSPOOF+4*n, mac|as<<spoofVLANAS)
	}
}
