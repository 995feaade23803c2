package ixgbe

// initRX is the receive part of datasheet 4.6.7: receiving stays off while
// the filters, frame size, checksum/RSS settings and queues are set up, and
// is turned on last.
func (p *Port) initRX() error {
	p.clear(regRXCTRL, rxctrlRXEN)
	p.initFilters()

	// The 82599 strips the CRC only if both places agree.
	p.set(regHLREG0, hlreg0RXCRCSTRP)
	rdrx := p.read(regRDRXCTL)
	rdrx &^= rdrxctlRSCFrstMask
	rdrx |= rdrxctlCRCStrip | rdrxctlRSCACKC | rdrxctlFCoEWrFix
	p.write(regRDRXCTL, rdrx)

	maxFrame := uint32(p.cfg.MTU + ethOverhead)
	p.write(regMAXFRS, maxFrame<<maxfrsShift)
	if maxFrame > standardMaxFrame {
		p.set(regHLREG0, hlreg0JumboEn)
	} else {
		p.clear(regHLREG0, hlreg0JumboEn)
	}

	// Receive checksum verdicts are always on in the 82599's advanced
	// descriptors; PCSD turns dword 1 of the write-back into the RSS hash,
	// which RSS requires.
	switch {
	case p.qpp != 0:
		p.initPools()
	case p.cfg.RSS:
		p.write(regRXCSUM, rxcsumPCSD)
		key := defaultRSSKey
		if p.cfg.RSSKey != nil {
			key = *p.cfg.RSSKey
		}
		p.configureRSS(mrqcRSSEn, key, roundRobinRETA(p.cfg.RxQueues))
	default:
		p.write(regRXCSUM, 0)
		p.write(regMRQC, 0)
	}

	p.mapQueueStats(regRQSMR, len(p.rx))
	for _, q := range p.rx {
		if err := p.startRxQueue(q); err != nil {
			return err
		}
	}
	return p.enableRX()
}

// startRxQueue programs and enables one receive queue with an empty ring.
func (p *Port) startRxQueue(q *RxQueue) error {
	return regs{p.bar}.startRx(rxQueueReg(q.index, 0), q, rxSetup{
		dropWhenFull: !p.cfg.HoldWhenFull,
		vlanStrip:    p.cfg.VLANStrip || q.vme,
		timeout:      p.cfg.ResetTimeout,
	})
}

// enableRX turns receiving on through the security block's handshake:
// the RX data path must be idle (SECRXSTAT.SECRX_RDY) while RXEN changes.
func (p *Port) enableRX() error {
	p.set(regSECRXCTRL, secrxctrlRXDis)
	if err := p.waitSet(regSECRXSTAT, secrxstatRdy, p.cfg.ResetTimeout, "RX security block idle (SECRXSTAT.SECRX_RDY)"); err != nil {
		return err
	}
	p.set(regRXCTRL, rxctrlRXEN)
	p.clear(regSECRXCTRL, secrxctrlRXDis)
	return nil
}

// initTX is the transmit part of datasheet 4.6.8.
func (p *Port) initTX() error {
	p.set(regHLREG0, hlreg0TXCRCEN|hlreg0TXPadEn)
	// The arbiter must be off while the queue layout changes: one traffic
	// class, the pools' layout or none, packet buffer sizes as reset left
	// them.
	p.set(regRTTDCS, rttdcsARBDIS)
	p.write(regMTQC, p.mtqc())
	p.clear(regRTTDCS, rttdcsARBDIS)
	// TE must be set before the first queue is enabled.
	p.set(regDMATXCTL, dmatxctlTE)
	p.mapQueueStats(regTQSM, len(p.tx))
	for _, q := range p.tx {
		if err := p.startTxQueue(q); err != nil {
			return err
		}
	}
	return nil
}

func (p *Port) startTxQueue(q *TxQueue) error {
	return regs{p.bar}.startTx(txQueueReg(q.index, 0), q, p.cfg.TxThresholds, p.cfg.ResetTimeout)
}

// mapQueueStats maps queue q to per-queue statistics counter q%16 through
// RQSMR or TQSM (one byte per queue, four queues per register).
func (p *Port) mapQueueStats(base uint32, queues int) {
	for r := 0; r < (queues+3)/4; r++ {
		v := uint32(0)
		for b := 0; b < 4 && 4*r+b < queues; b++ {
			v |= uint32((4*r+b)%numQueueStats) << (8 * b)
		}
		p.write(base+4*uint32(r), v)
	}
}
