package sim

import "sync/atomic"

// bar is BAR0 of a PF, the vfio.BAR the driver programs.
type bar PF

// Len implements vfio.BAR.
func (b *bar) Len() int { return BAR0Size }

// Read32 implements vfio.BAR. Every read is one model tick.
func (b *bar) Read32(off uint32) uint32 {
	p := (*PF)(b)
	if p.closed.Load() || !p.cfg.memoryEnabled() {
		return 0xFFFFFFFF // master abort: nothing decodes the address
	}
	if off >= BAR0Size || off%4 != 0 {
		p.noteUnknown(off)
		return 0
	}
	now := p.tick()
	ri := &bar0Map.info[off/4]
	switch ri.kind {
	case kindRW, kindRO, kindW1C, kindKey, kindRAR:
		return atomic.LoadUint32(&p.regs[ri.canon])
	case kindStat:
		return p.stats.read32(statID(ri.idx))
	case kindStatLo:
		return p.stats.readLo(statID(ri.idx))
	case kindStatHi:
		return p.stats.readHi(statID(ri.idx))
	case kindRXDCTL:
		v := atomic.LoadUint32(&p.regs[ri.canon]) &^ dctlEnable
		if p.rxQueueEnabled(int(ri.idx), now) {
			v |= dctlEnable
		}
		return v
	case kindTXDCTL:
		v := atomic.LoadUint32(&p.regs[ri.canon]) &^ dctlEnable
		if p.txQueueEnabled(int(ri.idx), now) {
			v |= dctlEnable
		}
		return v
	case kindSpecial:
		return p.readSpecial(ri.canon*4, now)
	}
	p.noteUnknown(off)
	return 0
}

// Write32 implements vfio.BAR.
func (b *bar) Write32(off uint32, v uint32) {
	p := (*PF)(b)
	if p.closed.Load() || !p.cfg.memoryEnabled() {
		return
	}
	if off >= BAR0Size || off%4 != 0 {
		p.noteUnknown(off)
		return
	}
	ri := &bar0Map.info[off/4]
	switch ri.kind {
	case kindRW:
		atomic.StoreUint32(&p.regs[ri.canon], v)
	case kindKey:
		atomic.StoreUint32(&p.regs[ri.canon], v)
		p.rssOK.Store(false)
	case kindRAR:
		atomic.StoreUint32(&p.regs[ri.canon], v)
		p.rarStale.Store(true)
	case kindRO, kindStat, kindStatLo, kindStatHi:
		// Read-only: the write has no effect.
	case kindW1C:
		p.ctl.Lock()
		atomic.StoreUint32(&p.regs[ri.canon], atomic.LoadUint32(&p.regs[ri.canon])&^v)
		p.ctl.Unlock()
	case kindRXDCTL:
		p.writeRXDCTL(int(ri.idx), v)
	case kindTXDCTL:
		p.writeTXDCTL(int(ri.idx), v)
	case kindSpecial:
		p.writeSpecial(ri.canon*4, v)
	default:
		p.noteUnknown(off)
	}
}

const (
	dctlEnable = 1 << 25
	dctlSWFLSH = 1 << 26
	rxdctlVME  = 1 << 30
)

func (p *PF) rxQueueEnabled(q int, now uint64) bool {
	return queueEnabled(&p.rxEnableAt[q], now) && ringValid(p.reg(rxQueueBase(q)+rqRDLEN))
}

func (p *PF) txQueueEnabled(q int, now uint64) bool {
	return queueEnabled(&p.txEnableAt[q], now) && ringValid(p.reg(txQueueBase(q)+tqTDLEN))
}

// writeRXDCTL latches the queue enable. Enabling takes QueueEnableDelay
// ticks to show; disabling waits for the RX engine to finish its current
// pass and writes back what it holds, so when the write returns the
// queue's memory is no longer touched.
func (p *PF) writeRXDCTL(q int, v uint32) {
	p.rxMu.Lock()
	defer p.rxMu.Unlock()
	p.setReg(rxQueueBase(q)+rqRXDCTL, v)
	at := &p.rxEnableAt[q]
	switch {
	case v&dctlEnable == 0:
		at.Store(0)
		p.flushWriteBacks(&p.rx.wb)
	case at.Load() == 0:
		at.Store(p.clock.Load() + p.opts.QueueEnableDelay + 1)
	}
}

func (p *PF) writeTXDCTL(q int, v uint32) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	p.setReg(txQueueBase(q)+tqTXDCTL, v&^dctlSWFLSH)
	at := &p.txEnableAt[q]
	word, bit := &p.txActive[q/64], uint64(1)<<(q%64)
	switch {
	case v&dctlEnable == 0:
		at.Store(0)
		word.Store(word.Load() &^ bit)
		p.tx.queues[q].ctx = [2]txContext{}
		p.flushWriteBacks(&p.tx.wb)
	case at.Load() == 0:
		at.Store(p.clock.Load() + p.opts.QueueEnableDelay + 1)
		word.Store(word.Load() | bit)
	}
}

// flushWriteBacks writes back everything an engine holds, for a queue
// being disabled (the others' write-backs go too, keeping their order).
// The caller holds the engine's lock.
func (p *PF) flushWriteBacks(wb *writeBacks) {
	if len(wb.held) == 0 || !p.cfg.busMaster() {
		return
	}
	p.iommu.mu.RLock()
	causes := wb.flush(&p.iommu, true)
	p.iommu.mu.RUnlock()
	p.raise(causes)
}

func (p *PF) readSpecial(off uint32, now uint64) uint32 {
	if off >= regPFMAILBOX0 && off < regPFMAILBOX0+4*numPools {
		return p.readPFMailbox(int(off-regPFMAILBOX0) / 4)
	}
	switch off {
	case regSTATUS:
		v := p.reg(regSTATUS) &^ statusGIO
		if p.reg(regCTRL)&ctrlGIODis == 0 {
			v |= statusGIO
		}
		return v
	case regESDP:
		return p.reg(regESDP) | 1<<2 // SDP2: an SFP+ module sits in the cage
	case regFRTIMER:
		return uint32(now)
	case regEEC:
		v := p.reg(regEEC)&^(eecARD|eecGNT) | eecPRES
		if now >= p.resetDoneAt.Load() {
			v |= eecARD
		}
		if v&eecREQ != 0 {
			v |= eecGNT
		}
		return v
	case regSWSM:
		// Reading SWSM returns SMBI and sets it: the first reader owns the
		// software semaphore until it writes SMBI back to 0.
		for {
			v := p.reg(regSWSM)
			if atomic.CompareAndSwapUint32(&p.regs[regSWSM/4], v, v|swsmSMBI) {
				return v
			}
		}
	case regEICR:
		return p.readEICR(true)
	case regEICS:
		return p.readEICR(false)
	case regEIMS:
		return p.reg(regEIMS)
	case regEIMC:
		return 0
	case regLINKS:
		p.ctl.Lock()
		p.checkLinkLocked()
		up := p.linkReported
		p.ctl.Unlock()
		if up {
			return linksUp | linksSpeed10G | linksANComp
		}
		return 0
	case regANLP1:
		return 4 << 16 // AN state machine past its idle state
	case regRDRXCTL:
		v := p.reg(regRDRXCTL) &^ rdrxctlDMAIDone
		if now >= p.resetDoneAt.Load() {
			v |= rdrxctlDMAIDone
		}
		return v
	case regSECRXSTAT:
		return secrxRDY
	case regSECTXSTAT:
		return sectxRDY
	}
	return p.reg(off)
}

func (p *PF) writeSpecial(off uint32, v uint32) {
	if p.writeSRIOV(off, v) { // CTRL_EXT.PFRSTD, PFMAILBOX, PFVFLREC (mailbox.go)
		return
	}
	switch off {
	case regCTRL:
		if v&ctrlRST != 0 {
			// RST self-clears at once (drivers poll it) and leaves CTRL at
			// its reset value.
			p.globalReset()
			return
		}
		p.setReg(regCTRL, v&^(ctrlRST|ctrlLRST))
		if v&ctrlLRST != 0 {
			p.ctl.Lock()
			p.restartANLocked()
			p.ctl.Unlock()
		}
	case regESDP:
		p.setReg(regESDP, v)
	case regEEC:
		p.setReg(regEEC, v&^(eecPRES|eecARD|eecGNT))
	case regEERD:
		if v&eerdStart != 0 {
			addr := v >> 2 & 0x3FFF
			p.setReg(regEERD, uint32(eepromWord(addr))<<16|addr<<2|eerdDone)
			return
		}
		p.setReg(regEERD, v)
	case regSWSM:
		p.setReg(regSWSM, v)
	case regEICR:
		p.ctl.Lock()
		p.setReg(regEICR, p.reg(regEICR)&^v)
		p.ctl.Unlock()
	case regEICS:
		p.raise(v &^ (1 << 31))
	case regEIMS:
		p.ctl.Lock()
		p.setReg(regEIMS, p.reg(regEIMS)|v)
		p.deliverLocked(v)
		p.ctl.Unlock()
	case regEIMC:
		p.ctl.Lock()
		p.setReg(regEIMS, p.reg(regEIMS)&^v)
		p.ctl.Unlock()
	case regAUTOC:
		p.setReg(regAUTOC, v&^autocRestartAN)
		if v&autocRestartAN != 0 {
			p.ctl.Lock()
			p.restartANLocked()
			p.ctl.Unlock()
		}
	case regRDRXCTL:
		p.setReg(regRDRXCTL, v&^rdrxctlDMAIDone)
	case regSTATUS, regFRTIMER, regLINKS, regANLP1, regSECRXSTAT, regSECTXSTAT:
		// Read-only.
	default:
		p.setReg(off, v)
	}
}

// The modelled EEPROM: the pointer words (0x03-0x0F) read 0xFFFF (no
// section), so the Intel shared code's checksum walk sums only words
// 0x00-0x3E, and word 0x3F makes that sum 0xBABA.
const (
	eepromChecksumWord = 0x3F
	eepromSum          = 0xBABA
	eepromWords        = 256
)

func eepromWord(addr uint32) uint16 {
	switch {
	case addr >= eepromWords:
		return 0xFFFF
	case addr >= 0x03 && addr <= 0x0F:
		return 0xFFFF
	case addr == eepromChecksumWord:
		var sum uint16
		for a := uint32(0); a < eepromChecksumWord; a++ {
			sum += eepromWord(a)
		}
		return eepromSum - sum
	}
	return 0
}
