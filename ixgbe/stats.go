package ixgbe

// Stats are the port's counters since Open, accumulated in software from
// the device's clear-on-read registers (datasheet 8.2.3.23), so they never
// wrap.
//
// Frames the NIC drops before a queue are in RxMissed, RxCRCErrors,
// RxUndersize, RxFragments, RxOversize and RxJabbers (and RxLengthErrs,
// which counts undersize and oversize frames again, so it must not be
// added to them). The length counters see only frames that passed the
// address filters. A unicast frame the address filters reject is counted
// nowhere: the 82599 has no register for it (TPR counts rejected
// broadcasts only), so a guest whose MAC is missing from the filters loses
// frames no counter shows; only the simulator can count them.
type Stats struct {
	RxPackets     uint64 // GPRC: good packets received (also counts missed ones, an 82599 erratum)
	RxBytes       uint64 // GORC: good octets received
	RxBroadcast   uint64 // BPRC
	RxMulticast   uint64 // MPRC
	RxTotal       uint64 // TPR: all packets seen, good or bad
	RxTotalBytes  uint64 // TOR
	RxMissed      uint64 // ΣMPC: dropped because the packet buffer was full
	RxCRCErrors   uint64 // CRCERRS
	RxIllegal     uint64 // ILLERRC: illegal bytes
	RxErrorBytes  uint64 // ERRBC
	RxLengthErrs  uint64 // RLEC: undersize and oversize frames, overlapping RUC and ROC
	RxUndersize   uint64 // RUC
	RxFragments   uint64 // RFC
	RxOversize    uint64 // ROC
	RxJabbers     uint64 // RJC
	RxLocalFaults uint64 // MLFC
	RxRemoteFault uint64 // MRFC
	TxPackets     uint64 // GPTC
	TxBytes       uint64 // GOTC
	TxBroadcast   uint64 // BPTC
	TxMulticast   uint64 // MPTC
	TxTotal       uint64 // TPT
	// TxSpoofed counts frames a pool sent from an address not its own,
	// or on a VLAN not its own, dropped by anti-spoofing (SSVPC; ports
	// with pools only).
	TxSpoofed uint64

	// Queues are the 16 per-queue counter sets; queue q counts in set
	// q%16 (RQSMR/TQSM map it so).
	Queues [numQueueStats]QueueStats
}

// QueueStats are one per-queue counter set.
type QueueStats struct {
	RxPackets uint64 // QPRC
	RxBytes   uint64 // QBRC
	RxDropped uint64 // QPRDC: dropped for want of a free descriptor
	TxPackets uint64 // QPTC
	TxBytes   uint64 // QBTC
}

// Stats reads every counter, adds it to the running totals and returns
// them.
func (p *Port) Stats() Stats {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if !p.closed {
		p.readStats()
	}
	return p.stats
}

// read36 reads a 36-bit counter split over a low register and a high one
// holding bits 35:32; the low half is read first, as the device expects.
func (p *Port) read36(lo, hi uint32) uint64 {
	l := p.read(lo)
	h := p.read(hi) & 0xF
	return uint64(h)<<32 | uint64(l)
}

// readStats adds the device's counters to p.stats (which clears them).
func (p *Port) readStats() {
	s := &p.stats
	add := func(dst *uint64, reg uint32) { *dst += uint64(p.read(reg)) }
	add(&s.RxPackets, regGPRC)
	s.RxBytes += p.read36(regGORCL, regGORCH)
	add(&s.RxBroadcast, regBPRC)
	add(&s.RxMulticast, regMPRC)
	add(&s.RxTotal, regTPR)
	s.RxTotalBytes += p.read36(regTORL, regTORH)
	for i := range uint32(8) {
		add(&s.RxMissed, regMPC0+4*i)
	}
	add(&s.RxCRCErrors, regCRCERRS)
	add(&s.RxIllegal, regILLERRC)
	add(&s.RxErrorBytes, regERRBC)
	add(&s.RxLengthErrs, regRLEC)
	add(&s.RxUndersize, regRUC)
	add(&s.RxFragments, regRFC)
	add(&s.RxOversize, regROC)
	add(&s.RxJabbers, regRJC)
	add(&s.RxLocalFaults, regMLFC)
	add(&s.RxRemoteFault, regMRFC)
	add(&s.TxPackets, regGPTC)
	s.TxBytes += p.read36(regGOTCL, regGOTCH)
	add(&s.TxBroadcast, regBPTC)
	add(&s.TxMulticast, regMPTC)
	add(&s.TxTotal, regTPT)
	add(&s.TxSpoofed, regSSVPC)
	for i := range numQueueStats {
		q := &s.Queues[i]
		add(&q.RxPackets, regQPRC(i))
		q.RxBytes += p.read36(regQBRCL(i), regQBRCH(i))
		add(&q.RxDropped, regQPRDC(i))
		add(&q.TxPackets, regQPTC(i))
		q.TxBytes += p.read36(regQBTCL(i), regQBTCH(i))
	}
}
