package ixgbe

import (
	"fmt"
	"net"
)

// Pools (VMDq): with virtualization on, the 82599 picks the pool a
// received frame belongs to by its destination MAC (each RAR entry has a
// bitmap of pools, MPSAR) before it picks a queue, and writes the frame
// only into queues of that pool; broadcast and multicast are replicated,
// one copy per accepting pool. A pool's transmit queues are checked
// against its addresses (anti-spoofing) and frames between pools are
// switched inside the NIC. Register layouts follow the 82599 datasheet
// (7.10, 8.2.3.27) as Linux's ixgbe_configure_virtualization and DPDK's
// ixgbe_pf_host_configure program them.
//
// The layout is 64 pools of 2 queues, or 32 pools of 4 when a pool needs
// more than 2 queue pairs; RSS spreads a pool's frames over its first
// PoolQueues queues. Pool p owns queues p*QueuesPerPool() onwards.

// Registers and bits of virtualization (see ../shared/reference).
const (
	regPFVTCTL   = 0x051B0
	regPFVFRE    = 0x051E0 // + 4n, pools 32n..32n+31
	regPFVFTE    = 0x08110 // + 4n
	regPFVML2FLT = 0x0F000 // + 4p (VMOLR)
	regPFVFSPOOF = 0x08200 // + 4n, 8 pools each
	regPFDTXGSWC = 0x08220
	regPSRTYPE   = 0x0EA00 // + 4p
	regGCREXT    = 0x11050
	regVMECM     = 0x08790 // + 4n
	regSSVPC     = 0x08780

	vtctlVTEna      = 1 << 0
	vtctlDefPLShift = 7
	vtctlDisDefPL   = 1 << 29
	vtctlRplEn      = 1 << 30

	vmolrAUPE = 1 << 24 // accept untagged frames
	vmolrBAM  = 1 << 27 // accept broadcast
	vmolrMPE  = 1 << 28 // accept every multicast

	psrtypeRQPLShift = 29 // log2 of the queues RSS uses in the pool

	mrqeVMDqRSS32 = 0xA // 32 pools, RSS over 4 queues each
	mrqeVMDqRSS64 = 0xB // 64 pools, RSS over 2 queues each

	mtqcVTEna = 1 << 1
	mtqc64VF  = 1 << 2 // 2 TX queues per pool
	mtqc32VF  = 2 << 2 // 4 TX queues per pool

	gcrExtVTMode32 = 2
	gcrExtVTMode64 = 3
	gpieVTModeMask = 3 << 14
	gpieVTMode32   = 2 << 14
	gpieVTMode64   = 3 << 14

	pfdtxgswcLBE = 1 << 0 // loopback between pools (the NIC's internal switch)

	maxPools = 64
)

// poolLayout is the hardware layout for pools of poolQueues queues: the
// queues each pool owns and whether it is the 32-pool mode.
func poolLayout(pools, poolQueues int) (qpp int, wide bool, err error) {
	switch {
	case pools < 1 || pools > maxPools:
		return 0, false, fmt.Errorf("ixgbe: %d pools: use 1 to %d", pools, maxPools)
	case poolQueues < 1 || poolQueues > 4 || poolQueues == 3:
		return 0, false, fmt.Errorf("ixgbe: %d queues per pool: use 1, 2 or 4", poolQueues)
	case poolQueues <= 2:
		return 2, false, nil
	case pools > 32:
		return 0, false, fmt.Errorf("ixgbe: %d pools of 4 queues: the 82599 has at most 32 pools of 4 queues", pools)
	}
	return 4, true, nil
}

// QueuesPerPool is how many queues each pool owns (0: the port has no
// pools).
func (p *Port) QueuesPerPool() int { return p.qpp }

// Pools is how many pools the port runs (0: none, pool switching off).
func (p *Port) Pools() int { return p.cfg.Pools }

// PoolQueuePair is queue pair i of pool.
func (p *Port) PoolQueuePair(pool, i int) QueuePair { return p.QueuePair(pool*p.qpp + i) }

// initPools turns virtualization on for the receive side: pool selection
// by MAC with replication, no default pool (a frame no pool claims is
// dropped: it is for no guest), RSS within each pool, and every pool
// accepting untagged frames, broadcast and multicast. Pools receive and
// transmit only once EnablePool turns them on.
func (p *Port) initPools() {
	c := &p.cfg
	p.write(regPFVTCTL, vtctlVTEna|vtctlRplEn|vtctlDisDefPL)
	mrqe, gcr, gpie := uint32(mrqeVMDqRSS64), uint32(gcrExtVTMode64), uint32(gpieVTMode64)
	if p.qpp == 4 {
		mrqe, gcr, gpie = mrqeVMDqRSS32, gcrExtVTMode32, gpieVTMode32
	}
	// GCR_EXT and GPIE must name the same pool layout as MRQC and MTQC.
	p.write(regGCREXT, gcr)
	p.write(regGPIE, p.read(regGPIE)&^gpieVTModeMask|gpie)
	rqpl := uint32(0)
	for 1<<rqpl < c.PoolQueues {
		rqpl++
	}
	for pool := range maxPools {
		off := 4 * uint32(pool)
		if pool < c.Pools {
			p.write(regPFVML2FLT+off, vmolrAUPE|vmolrBAM|vmolrMPE)
			p.write(regPSRTYPE+off, rqpl<<psrtypeRQPLShift)
		} else {
			p.write(regPFVML2FLT+off, 0)
			p.write(regPSRTYPE+off, 0)
		}
	}
	for n := range uint32(2) {
		p.write(regPFVFRE+4*n, 0)
		p.write(regPFVFTE+4*n, 0)
		p.write(regVMECM+4*n, ^uint32(0)) // spoofed frames of every pool count in SSVPC
	}
	for n := range uint32(8) {
		p.write(regPFVFSPOOF+4*n, 0)
	}
	p.pools.vfre, p.pools.spoof = 0, 0
	if c.PoolQueues > 1 {
		p.write(regRXCSUM, rxcsumPCSD)
	} else {
		p.write(regRXCSUM, 0)
	}
	key := defaultRSSKey
	if c.RSSKey != nil {
		key = *c.RSSKey
	}
	p.configureRSS(mrqe, key, roundRobinRETA(c.PoolQueues))
}

// mtqc is the transmit queue layout for the port's pools (0 without).
func (p *Port) mtqc() uint32 {
	switch p.qpp {
	case 2:
		return mtqcVTEna | mtqc64VF
	case 4:
		return mtqcVTEna | mtqc32VF
	}
	return 0
}

// poolState mirrors the per-pool enables.
type poolState struct {
	vfre  uint64 // pools receiving and transmitting
	spoof uint64 // pools with MAC anti-spoofing
}

func (p *Port) checkPool(pool int) error {
	if p.qpp == 0 {
		return fmt.Errorf("ixgbe: the port was opened without pools (Config.Pools)")
	}
	if pool < 0 || pool >= p.cfg.Pools {
		return fmt.Errorf("ixgbe: pool %d: the port has pools 0 to %d", pool, p.cfg.Pools-1)
	}
	return nil
}

// EnablePool lets pool receive and transmit (PFVFRE, PFVFTE) or stops
// both: a pool without an owner gets no copy of broadcast and multicast
// frames, which would otherwise only be dropped on its empty queues.
func (p *Port) EnablePool(pool int, on bool) error {
	return p.setPoolBit(&p.pools.vfre, pool, on, func(set uint64) {
		for n := range uint32(2) {
			p.write(regPFVFRE+4*n, uint32(set>>(32*n)))
			p.write(regPFVFTE+4*n, uint32(set>>(32*n)))
		}
	})
}

// SetPoolAntiSpoof makes the NIC drop a frame that pool transmits with a
// source address other than the pool's own (those added with AddPoolMAC),
// counting it in SSVPC (Stats.TxSpoofed). Turn it on only once the pool
// has its address. For a pool on a VLAN (SetPoolVLAN) it checks the VLAN
// too.
func (p *Port) SetPoolAntiSpoof(pool int, on bool) error {
	return p.setPoolBit(&p.pools.spoof, pool, on, p.writeSpoof)
}

// setPoolBit turns pool's bit in the mirrored set on or off and has write
// program the registers from the new set.
func (p *Port) setPoolBit(set *uint64, pool int, on bool, write func(uint64)) error {
	if err := p.checkPool(pool); err != nil {
		return err
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if on {
		*set |= 1 << uint(pool)
	} else {
		*set &^= 1 << uint(pool)
	}
	write(*set)
	return nil
}

// SetPoolSwitching turns the NIC's internal switch on or off: with it, a
// frame one pool sends to another pool's address is delivered inside the
// NIC and does not leave on the wire; broadcast and multicast go to the
// wire and to the other pools that accept them.
func (p *Port) SetPoolSwitching(on bool) {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if on {
		p.write(regPFDTXGSWC, pfdtxgswcLBE)
	} else {
		p.write(regPFDTXGSWC, 0)
	}
}

// AddPoolMAC steers unicast frames to mac into pool (and lets the pool
// send from it when anti-spoofing is on). An address may belong to
// several pools.
func (p *Port) AddPoolMAC(pool int, mac net.HardwareAddr) error {
	if err := p.checkPool(pool); err != nil {
		return err
	}
	return p.claimRAR(pool, mac)
}

// RemovePoolMAC stops steering frames to mac into pool.
func (p *Port) RemovePoolMAC(pool int, mac net.HardwareAddr) error {
	if err := p.checkPool(pool); err != nil {
		return err
	}
	return p.releaseRAR(pool, mac)
}
