package sim

import (
	"math/bits"
)

// Receive pools (VMDq): with PFVTCTL.VT_Ena set, the MAC's address stage
// also picks the pools a frame goes to, and the RX engine writes one copy
// into a queue of each of them. The rules follow the 82599 datasheet's
// receive pool selection (section 7.10.3); doc.go lists what is and is
// not modelled.

// PFVTCTL, PFVML2FLT (VMOLR), PFVLVF, PSRTYPE and MRQC fields.
const (
	vtctlVTEna      = 1 << 0
	vtctlDefPLShift = 7
	vtctlDefPLMask  = 0x3F
	vtctlDisDefPL   = 1 << 29
	vtctlRplEn      = 1 << 30

	vmolrAUPE  = 1 << 24 // accept untagged frames
	vmolrROMPE = 1 << 25 // accept multicast that hits the MTA
	vmolrROPE  = 1 << 26 // accept unicast that hits the UTA
	vmolrBAM   = 1 << 27 // accept broadcast
	vmolrMPE   = 1 << 28 // multicast promiscuous

	vlvfVIEN   = 1 << 31
	vlvfVIDMsk = 0xFFF

	psrtypeRQPLShift = 29

	mrqeVMDq     = 0x8 // 64 pools, no RSS
	mrqeVMDqRSS4 = 0xA // 32 pools, RSS over 4 queues each
	mrqeVMDqRSS2 = 0xB // 64 pools, RSS over 2 queues each
	mrqeVMDqTC8  = 0xC // 16 pools x 8 traffic classes
	mrqeVMDqTC4  = 0xD // 32 pools x 4 traffic classes

	numPools = 64
)

// rxPoolLayout is the receive queue layout MRQC.MRQE selects in
// virtualization mode: the number of pools, the queues each owns (pool p
// owns queues p*qpp .. p*qpp+qpp-1), and whether RSS spreads frames over
// them. With DCB the model does not pick a traffic class: frames land in
// the pool's first queue. A non-VMDq MRQE with VT_Ena set is a
// configuration the datasheet does not define; the model lays the queues
// out as 1000b (64 pools, first queue).
func rxPoolLayout(mrqe uint32) (pools, qpp int, rss bool) {
	switch mrqe {
	case mrqeVMDqRSS4:
		return 32, 4, true
	case mrqeVMDqRSS2:
		return 64, 2, true
	case mrqeVMDqTC8:
		return 16, 8, false
	case mrqeVMDqTC4:
		return 32, 4, false
	}
	return 64, 2, false
}

// poolMask is the set of the first n pools.
func poolMask(n int) uint64 {
	if n >= 64 {
		return ^uint64(0)
	}
	return 1<<uint(n) - 1
}

// reg64 reads a pair of registers holding a 64-pool bitmap (pools 0-31 in
// the first, 32-63 in the second).
func (p *PF) reg64(lo, hi uint32) uint64 {
	return uint64(p.reg(lo)) | uint64(p.reg(hi))<<32
}

// vmolrPools is the set of pools whose PFVML2FLT has any of bits set.
func (p *PF) vmolrPools(bit uint32) uint64 {
	var s uint64
	for i := uint32(0); i < numPools; i++ {
		if p.reg(regPFVML2FLT+4*i)&bit != 0 {
			s |= 1 << i
		}
	}
	return s
}

// hashHit looks the destination address up in a 4096-bit hash table (MTA
// or PFUTA), indexed as MCSTCTRL.MO selects; MCSTCTRL.MFE enables both.
func (p *PF) hashHit(table uint32, f []byte) bool {
	mc := p.reg(regMCSTCTRL)
	if mc&mcstctrlMFE == 0 {
		return false
	}
	h := mtaHash(f, mc&3)
	return p.reg(table+4*(h>>5))&(1<<(h&31)) != 0
}

// macPools is the first stage of pool selection, by destination address.
// With replication (PFVTCTL.Rpl_En) a frame may go to many pools: those
// of the exact-match entries (MPSAR), broadcast to pools with BAM,
// unicast without an exact pool to pools with ROPE if it hits the UTA,
// multicast without an exact pool to pools with ROMPE if it hits the MTA,
// and multicast to every pool with MPE. Without replication a frame goes
// to one pool: an exact match's lowest MPSAR pool; everything else is
// left to the default pool. exact reports an exact address match.
func (p *PF) macPools(f []byte, rpl bool) (pools uint64, exact bool) {
	da := macAt(f)
	c := p.rarList()
	for i, a := range c.addr {
		if a == da {
			exact = true
			n := uint32(c.idx[i])
			pools |= p.reg64(regMPSAR0+8*n, regMPSAR0+8*n+4)
		}
	}
	if !rpl {
		return pools & -pools, exact
	}
	switch {
	case isBroadcast(f):
		pools |= p.vmolrPools(vmolrBAM)
	case f[0]&1 == 0:
		if pools == 0 && p.hashHit(regPFUTA0, f) {
			pools = p.vmolrPools(vmolrROPE)
		}
	default:
		if pools == 0 && p.hashHit(regMTA0, f) {
			pools = p.vmolrPools(vmolrROMPE)
		}
		pools |= p.vmolrPools(vmolrMPE)
	}
	return pools, exact
}

// vlanPools is the second stage: an untagged frame may go only to pools
// with AUPE; a tagged one, when VLNCTRL.VFE is set, only to the pools
// PFVLVFB lists for the PFVLVF entry of its VLAN (none if no entry
// matches).
func (p *PF) vlanPools(f []byte, tagged bool) uint64 {
	if !tagged {
		return p.vmolrPools(vmolrAUPE)
	}
	if p.reg(regVLNCTRL)&vlnctrlVFE == 0 {
		return ^uint64(0)
	}
	vid := uint32(f[14]&0xF)<<8 | uint32(f[15])
	for i := uint32(0); i < 64; i++ {
		v := p.reg(regPFVLVF0 + 4*i)
		if v&vlvfVIEN != 0 && v&vlvfVIDMsk == vid {
			return p.reg64(regPFVLVFB0+8*i, regPFVLVFB0+8*i+4)
		}
	}
	return 0
}

// selectPools runs both stages for a frame. A frame from the wire whose
// list is empty goes to the default pool (PFVTCTL.DEF_PL) unless
// PFVTCTL.DIS_DEFPL is set; a frame from the internal switch
// (fromWire false) never does. mac is the first stage's result, before the
// VLAN filter, the pool count and the default pool.
func (p *PF) selectPools(f []byte, tagged, fromWire bool) (pools, mac uint64, exact bool) {
	vtctl := p.reg(regPFVTCTL)
	n, _, _ := rxPoolLayout(p.reg(regMRQC) & 0xF)
	mac, exact = p.macPools(f, vtctl&vtctlRplEn != 0)
	pools = mac & p.vlanPools(f, tagged) & poolMask(n)
	if pools == 0 && fromWire && vtctl&vtctlDisDefPL == 0 {
		pools = 1 << (vtctl >> vtctlDefPLShift & vtctlDefPLMask) & poolMask(n)
	}
	return pools, mac, exact
}

// vtFilter is the address stage with virtualization on. ok and inexact
// are the global filters' verdict (l2Filter); a frame they reject still
// passes if a pool's own rules (VMOLR BAM, MPE, ROMPE, ROPE) select it,
// which is what lets a pool's multicast promiscuous mode work without
// FCTRL.MPE. The VLAN filter table (VFTA) still applies first. pools is
// the frame's pool list before PFVFRE (see admitPools).
func (p *PF) vtFilter(f []byte, tagged, ok, inexact bool) (bool, bool, uint64) {
	if !p.vftaPass(f, tagged) {
		return false, false, 0
	}
	pools, mac, _ := p.selectPools(f, tagged, true)
	if !ok {
		if mac == 0 {
			return false, false, 0
		}
		inexact = true // an exact match would have passed the global filter
	}
	return true, inexact, pools
}

// admitPools applies what is left of pool selection once the MAC has
// counted the frame as received: a frame with no pool is dropped (no
// register counts it: Counters.RxNoPool), and the copy for each pool
// whose receive PFVFRE disables is dropped (Counters.RxPoolOff).
func (p *PF) admitPools(m *rxMeta) bool {
	if m.pools == 0 {
		p.mc.rxNoPool.Add(1)
		return false
	}
	en := p.reg64(regPFVFRE0, regPFVFRE0+4)
	if off := m.pools &^ en; off != 0 {
		p.mc.rxPoolOff.Add(uint64(bits.OnesCount64(off)))
		m.pools &= en
	}
	return m.pools != 0
}

// receivePools writes one copy of a frame into a queue of each pool it
// is owed to, lowest pool first. A copy that must wait for descriptors
// keeps the frame (and the copies after it) at the head of the packet
// buffer; copies already done are not repeated. Within a pool, RSS (in
// the VMDq+RSS modes) picks the queue from the redirection table entry,
// keeping as many low bits as the pool's PSRTYPE.RQPL asks (1, 2 or 4
// queues, at most the pool's queue count).
func (p *PF) receivePools(slot *rxSlot, causes *uint32) bool {
	f := slot.buf
	pi := parsePacket(f, uint16(p.reg(regVLNCTRL)))
	mrqc := p.reg(regMRQC)
	_, qpp, rss := rxPoolLayout(mrqc & 0xF)
	var hash, rssType uint32
	if rss {
		hash, rssType = p.rssHash(f, &pi, mrqc)
	}
	for slot.pools != 0 {
		pool := bits.TrailingZeros64(slot.pools)
		q := pool * qpp
		if rssType != 0 {
			rq := 1 << (p.reg(regPSRTYPE0+4*uint32(pool)) >> psrtypeRQPLShift & 3)
			q += p.retaQueue(hash) & (min(rq, qpp) - 1)
		}
		done, n := p.receiveQueue(slot, q, &pi, hash, rssType, causes)
		if !done {
			return false
		}
		slot.pools &^= 1 << uint(pool)
		slot.noBuf = false
		if n > 0 {
			p.countCopy(slot, uint64(n))
		}
	}
	return true
}

// countCopy counts a written copy in the receive DMA's replication and
// loopback counters: RXLPBKGPC/GBC count every copy that came through
// the internal switch; RXDDGPC/GBC (from the wire) and RXDLPBKGPC/GBC
// (from the switch) count the copies beyond a frame's first.
func (p *PF) countCopy(slot *rxSlot, n uint64) {
	st := &p.stats
	dup := slot.copies > 0
	slot.copies++
	switch {
	case slot.loop && dup:
		st.add(stRXLPBKGPC, 1)
		st.add(stRXLPBKGBC, n)
		st.add(stRXDLPBKGPC, 1)
		st.add(stRXDLPBKGBC, n)
	case slot.loop:
		st.add(stRXLPBKGPC, 1)
		st.add(stRXLPBKGBC, n)
	case dup:
		st.add(stRXDDGPC, 1)
		st.add(stRXDDGBC, n)
	}
}
