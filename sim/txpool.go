package sim

import "encoding/binary"

// Transmit side of virtualization: the pool a TX queue belongs to, the
// per-pool transmit enable (PFVFTE), the pool's default VLAN (PFVMVIR)
// and anti-spoofing (PFVFSPOOF, counted in SSVPC when VMECM enables it);
// veb.go is the internal switch.

const (
	mtqcVTEna = 1 << 1

	// PFVMVIR: bits 15:0 the default tag control (VID 11:0, CFI 12, user
	// priority 15:13), bits 31:30 VLANA, the VLAN action (00b: as the
	// descriptor's VLE asks).
	vmvirVLANAShift = 30
	vmvirAlways     = 1 // 01b: always the default tag
	vmvirNever      = 2 // 10b: never a tag
)

// txPoolQueues is the number of TX queues per pool in virtualization
// mode, from MTQC.NUM_TC_OR_Q (01b: 64 pools of 2, 10b: 32 of 4, 11b: 16
// of 8); pool p owns queues p*n .. p*n+n-1. It is 0 when the transmit
// side is not virtualized: PFVTCTL.VT_Ena or MTQC.VT_Ena clear, or the
// reserved 00b.
func (p *PF) txPoolQueues() int {
	if p.reg(regPFVTCTL)&vtctlVTEna == 0 {
		return 0
	}
	m := p.reg(regMTQC)
	if m&mtqcVTEna == 0 {
		return 0
	}
	switch m >> 2 & 3 {
	case 1:
		return 2
	case 2:
		return 4
	case 3:
		return 8
	}
	return 0
}

// txPoolEnabled reports whether PFVFTE lets pool transmit. A disabled
// pool's queues are not serviced: their descriptors wait, nothing is
// dropped.
func (p *PF) txPoolEnabled(pool int) bool {
	return p.reg64(regPFVFTE0, regPFVFTE0+4)&(1<<uint(pool)) != 0
}

// poolVLAN applies pool's PFVMVIR.VLANA to the tag the descriptor asks
// for (vle, tag): 00b keeps it, 01b inserts the default tag (bits 15:0)
// on every frame, in place of the descriptor's, 10b inserts none, even
// if the descriptor asks. 11b is reserved; the model keeps the
// descriptor's. A tag already in the frame's data is data: with 01b the
// frame leaves with two tags, the inserted one outermost. Anti-spoofing
// and the internal switch see the frame as it leaves, inserted tag
// included.
func (p *PF) poolVLAN(pool int, vle bool, tag uint16) (bool, uint16) {
	v := p.reg(regPFVMVIR0 + 4*uint32(pool))
	switch v >> vmvirVLANAShift {
	case vmvirAlways:
		return true, uint16(v)
	case vmvirNever:
		return false, 0
	}
	return vle, tag
}

// txSwitch runs a frame transmitted by pool through anti-spoofing, then
// the internal switch. ok is false when the frame was dropped; toWire
// says whether it goes to the network.
func (p *PF) txSwitch(pool int, f []byte) (toWire, ok bool) {
	vet := uint16(p.reg(regVLNCTRL))
	tagged := len(f) >= 18 && binary.BigEndian.Uint16(f[12:]) == vet
	if !p.antiSpoofOK(pool, f, tagged) {
		p.mc.txSpoofed.Add(1)
		if p.reg64(regVMECM0, regVMECM0+4)&(1<<uint(pool)) != 0 {
			p.stats.add(stSSVPC, 1)
		}
		return false, false
	}
	return p.vebSwitch(pool, f, tagged), true
}

// antiSpoofOK applies PFVFSPOOF(pool/8): with the pool's MAC anti-spoof
// bit (7:0) the source address must be one of the pool's own (a valid
// exact filter whose MPSAR has the pool's bit); with its VLAN bit (15:8)
// a tagged frame's VLAN must be one of the pool's (a PFVLVF entry whose
// PFVLVFB has the pool's bit). Untagged frames pass the VLAN check.
func (p *PF) antiSpoofOK(pool int, f []byte, tagged bool) bool {
	as := p.reg(regPFVFSPOOF+4*uint32(pool/8)) >> uint(pool%8)
	bit := uint64(1) << uint(pool)
	if as&1 != 0 {
		sa := macAt(f[6:])
		c := p.rarList()
		found := false
		for i, a := range c.addr {
			n := uint32(c.idx[i])
			if a == sa && p.reg64(regMPSAR0+8*n, regMPSAR0+8*n+4)&bit != 0 {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if as&(1<<8) != 0 && tagged {
		vid := uint32(f[14]&0xF)<<8 | uint32(f[15])
		for i := uint32(0); i < 64; i++ {
			v := p.reg(regPFVLVF0 + 4*i)
			if v&vlvfVIEN != 0 && v&vlvfVIDMsk == vid {
				return p.reg64(regPFVLVFB0+8*i, regPFVLVFB0+8*i+4)&bit != 0
			}
		}
		return false
	}
	return true
}
