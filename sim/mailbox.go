package sim

// The PF/VF mailbox hardware: one 16-word buffer per pool (PFMBMEM(v) on
// the PF, VFMBMEM on VF v: the same storage), VFMAILBOX on the VF side and
// PFMAILBOX(v) on the PF side, PFMBICR/PFMBIMR and EICR.MAILBOX, the VF
// reset events (PFVFLRE/PFVFLREC) and the PF reset indication
// (RSTI/RSTD). The bits follow the Intel shared code (ixgbe_mbx.h in
// Linux and DPDK, ixgbevf mbx.h); the behaviour is what the Linux PF
// (ixgbe_mbx.c) and VF (ixgbevf mbx.c) drivers and DPDK's base code
// expect of it:
//
//   - VFMAILBOX: REQ (bit 0, write 1) sets the VF's VFREQ bit in PFMBICR;
//     ACK (bit 1, write 1) its VFACK bit; either raises EICR.MAILBOX when
//     the VF's PFMBIMR bit is set. VFU (bit 2) is the VF's lock: a write
//     with VFU set takes it unless the PF holds PFU, a write without VFU
//     drops it (so the legacy "write REQ" also releases it; the newer
//     protocol writes REQ|VFU and keeps it). PFU (bit 3) reads the PF's
//     lock. PFSTS (4), PFACK (5) and RSTD (7) clear when read; RSTI (6)
//     is a level: set from a PF reset until the PF driver sets
//     CTRL_EXT.PFRSTD, which also sets RSTD.
//   - PFMAILBOX(v): STS (bit 0, write 1) sets the VF's PFSTS, ACK (bit 1)
//     its PFACK, either raising the VF's mailbox interrupt (VTIVAR_MISC);
//     VFU (bit 2) reads the VF's lock; PFU (bit 3) is the PF's lock,
//     taken by a write with PFU set unless the VF holds VFU and dropped by
//     a write without it (so the legacy "write STS" releases it); RVFU
//     (bit 4, write 1) clears VFU.
//   - PFMBICR(i) covers VFs 16i..16i+15: VFREQ in bits 15:0, VFACK in
//     31:16, write 1 to clear. PFMBIMR(v/32) bit v%32 lets VF v raise
//     EICR.MAILBOX.
//   - PFVFLRE (0x600 for VFs 0-31, 0x1C0 for 32-63) collects VF reset
//     events (VFCTRL.RST, a VF function-level reset); writing 1 to
//     PFVFLREC(v/32) clears them. No interrupt is raised for them (which
//     cause the 82599 uses was not at hand); a PF driver finds them when
//     it services the mailbox.
//
// Lock arbitration (VFU only while PFU is clear and the other way round)
// is inferred from how the drivers take the lock: write the bit, read it
// back.

// VFMAILBOX bits; the state word of each mailbox keeps them in these
// positions.
const (
	vfmbREQ   = 1 << 0
	vfmbACK   = 1 << 1
	vfmbVFU   = 1 << 2
	vfmbPFU   = 1 << 3
	vfmbPFSTS = 1 << 4
	vfmbPFACK = 1 << 5
	vfmbRSTI  = 1 << 6
	vfmbRSTD  = 1 << 7
	vfmbR2C   = vfmbPFSTS | vfmbPFACK | vfmbRSTD

	pfmbSTS  = 1 << 0
	pfmbACK  = 1 << 1
	pfmbVFU  = 1 << 2
	pfmbPFU  = 1 << 3
	pfmbRVFU = 1 << 4
)

// mbxUpdate applies f to mailbox v's state atomically and returns the old
// state.
func (p *PF) mbxUpdate(v int, f func(uint32) uint32) uint32 {
	m := &p.sriov.mbx[v]
	for {
		old := m.Load()
		if m.CompareAndSwap(old, f(old)) {
			return old
		}
	}
}

// resetVFMailboxes is the PF reset's effect on the mailboxes: RSTI on
// every one (locks and pending indications dropped) until PFRSTD.
func (p *PF) resetVFMailboxes() {
	for v := range p.sriov.mbx {
		p.sriov.mbx[v].Store(vfmbRSTI)
	}
}

// writeSRIOV handles the PF registers SR-IOV gives behaviour to; it
// reports whether off was one of them.
func (p *PF) writeSRIOV(off uint32, v uint32) bool {
	switch {
	case off == regCTRLEXT:
		old := p.reg(regCTRLEXT)
		p.setReg(regCTRLEXT, v)
		// The edge of PFRSTD tells every VF the PF is up (a driver's
		// later read-modify-write of CTRL_EXT does not repeat it).
		if v&ctrlExtPFRSTD != 0 && old&ctrlExtPFRSTD == 0 {
			for i := range p.sriov.mbx {
				p.mbxUpdate(i, func(s uint32) uint32 { return s&^vfmbRSTI | vfmbRSTD })
			}
		}
		return true
	case off >= regPFMAILBOX0 && off < regPFMAILBOX0+4*numPools:
		p.writePFMailbox(int(off-regPFMAILBOX0)/4, v)
		return true
	case off == regPFVFLREC0 || off == regPFVFLREC0+4:
		lre := uint32(regPFVFLRE0)
		if off != regPFVFLREC0 {
			lre = regPFVFLRE1
		}
		p.ctl.Lock()
		p.setReg(lre, p.reg(lre)&^v)
		p.ctl.Unlock()
		return true
	}
	return false
}

func (p *PF) readPFMailbox(v int) uint32 {
	return p.sriov.mbx[v].Load() & (pfmbVFU | pfmbPFU)
}

func (p *PF) writePFMailbox(v int, w uint32) {
	p.mbxUpdate(v, func(s uint32) uint32 {
		if w&pfmbRVFU != 0 {
			s &^= vfmbVFU
		}
		if w&pfmbPFU == 0 {
			s &^= vfmbPFU
		} else if s&vfmbVFU == 0 {
			s |= vfmbPFU
		}
		if w&pfmbSTS != 0 {
			s |= vfmbPFSTS
		}
		if w&pfmbACK != 0 {
			s |= vfmbPFACK
		}
		return s
	})
	if w&(pfmbSTS|pfmbACK) != 0 {
		if vf := p.VF(v); vf != nil {
			vf.mailboxInterrupt()
		}
	}
}

// readVFMailbox is a VF's read of VFMAILBOX: the R2C bits clear.
func (p *PF) readVFMailbox(v int) uint32 {
	return p.mbxUpdate(v, func(s uint32) uint32 { return s &^ vfmbR2C })
}

func (p *PF) writeVFMailbox(v int, w uint32) {
	p.mbxUpdate(v, func(s uint32) uint32 {
		if w&vfmbVFU == 0 {
			return s &^ vfmbVFU
		}
		if s&vfmbPFU == 0 {
			s |= vfmbVFU
		}
		return s
	})
	if w&vfmbREQ != 0 {
		p.mailboxCause(v, 0)
	}
	if w&vfmbACK != 0 {
		p.mailboxCause(v, 16)
	}
}

// mailboxCause sets VF v's VFREQ (shift 0) or VFACK (16) bit in PFMBICR
// and raises EICR.MAILBOX if PFMBIMR lets the VF interrupt.
func (p *PF) mailboxCause(v int, shift uint) {
	p.ctl.Lock()
	defer p.ctl.Unlock()
	r := regPFMBICR0 + 4*uint32(v/16)
	p.setReg(r, p.reg(r)|1<<(shift+uint(v%16)))
	if p.reg(regPFMBIMR0+4*uint32(v/32))&(1<<uint(v%32)) != 0 {
		p.raiseLocked(eicrMailbox)
	}
}

// vfResetEvent records a VF reset in PFVFLRE for the PF driver.
func (p *PF) vfResetEvent(v int) {
	lre := uint32(regPFVFLRE0)
	if v >= 32 {
		lre = regPFVFLRE1
	}
	p.ctl.Lock()
	p.setReg(lre, p.reg(lre)|1<<uint(v%32))
	p.ctl.Unlock()
}
