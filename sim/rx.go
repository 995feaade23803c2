package sim

import (
	"encoding/binary"
	"hash/crc32"
	"sync"
	"sync/atomic"
)

// Receive path: the MAC (Deliver) checks length and the L2/VLAN filters and
// queues accepted frames in the packet buffer; the RX DMA engine (stepRX)
// picks a queue, writes the frame into the buffers the driver posted and
// overwrites their descriptors with the write-back format.

// maxRxFrame bounds what the MAC accepts with jumbo frames on (MAXFRS.MFS
// is 16 bits; the 82599 supports 15.5 KB frames).
const maxRxFrame = 16 << 10

const (
	srrctlDropEn    = 1 << 28
	srrctlDescShift = 25

	descTypeLegacy = 0

	rdStatDD    = 1 << 0
	rdStatEOP   = 1 << 1
	rdStatVP    = 1 << 3
	rdStatUDPCS = 1 << 4
	rdStatL4CS  = 1 << 5
	rdStatIPCS  = 1 << 6
	rdStatPIF   = 1 << 7
	rdErrL4E    = 1 << 30
	rdErrIPE    = 1 << 31

	// Legacy descriptor: errors byte in dword 3 bits 15:8.
	rdLegacyErrTCPE = 1 << 5
	rdLegacyErrIPE  = 1 << 6

	ptIPv4    = 1 << 4
	ptIPv4Ext = 1 << 5
	ptIPv6    = 1 << 6
	ptIPv6Ext = 1 << 7
	ptTCP     = 1 << 8
	ptUDP     = 1 << 9
	ptSCTP    = 1 << 10
)

type rxEngine struct {
	scratch []byte     // the frame as DMA'd: tag stripped, CRC appended
	descs   [64][]byte // descriptors of the frame being written
	wb      writeBacks
	rss     toeplitz
	rssIn   [maxRSSInput]byte
	rar     atomic.Pointer[rarCache]
	rarMu   sync.Mutex
}

func (e *rxEngine) init() { e.scratch = make([]byte, 0, maxRxFrame+8) }

// Deliver implements wire.Endpoint: a frame (without FCS) arrives at the
// port. It runs the MAC's checks and filters and queues the frame in the
// packet buffer for the RX engine; it keeps no reference to frame.
func (p *PF) Deliver(frame []byte) {
	if p.closed.Load() {
		return
	}
	if !p.linkUp() || p.reg(regRXCTRL)&rxctrlRXEN == 0 || p.reg(regSECRXCTRL)&(1<<1) != 0 {
		p.mc.rxNotReady.Add(1)
		return
	}
	st := &p.stats
	wireLen := uint64(len(frame)) + 4 // statistics count the CRC the wire carried
	// The address filters run on every frame with a whole destination
	// address: the datasheet counts runts (RUC) and oversize frames (ROC),
	// and both again as length errors (RLEC), only when they pass address
	// filtering, and TPR/TOR count rejected
	// frames only if they are broadcasts. The model's own counters
	// (rxRunt, rxOversize, rxFiltered) see every frame, so each dropped
	// frame is in exactly one of them.
	vet := uint16(p.reg(regVLNCTRL))
	tagged := len(frame) >= 18 && binary.BigEndian.Uint16(frame[12:]) == vet
	var ok bool
	var m rxMeta
	vt := p.reg(regPFVTCTL)&vtctlVTEna != 0
	if len(frame) >= 6 {
		ok, m.inexact = p.l2Filter(frame, tagged)
		if vt {
			ok, m.inexact, m.pools = p.vtFilter(frame, tagged, ok, m.inexact)
		}
	}
	if ok || len(frame) >= 6 && isBroadcast(frame) {
		st.add(stTPR, 1)
		st.add(stTOR, wireLen)
	}
	if len(frame) < 60 {
		if ok {
			st.add(stRUC, 1)
			st.add(stRLEC, 1)
		}
		p.mc.rxRunt.Add(1)
		return
	}
	limit := 1518
	if p.reg(regHLREG0)&hlreg0JUMBOEN != 0 {
		limit = int(p.reg(regMAXFRS) >> 16)
	}
	if tagged {
		limit += 4
	}
	if int(wireLen) > limit || len(frame) > maxRxFrame {
		if ok {
			st.add(stROC, 1)
			st.add(stRLEC, 1)
		}
		p.mc.rxOversize.Add(1)
		return
	}
	if !ok {
		p.mc.rxFiltered.Add(1)
		return
	}
	st.add(stGPRC, 1)
	st.add(stGORC, wireLen)
	st.add(stPRC64+sizeBucket(int(wireLen)), 1)
	if frame[0]&1 != 0 {
		if isBroadcast(frame) {
			st.add(stBPRC, 1)
		} else {
			st.add(stMPRC, 1)
		}
	}
	if vt && !p.admitPools(&m) {
		return
	}
	p.toFIFO(frame, m)
}

// toFIFO queues an accepted frame in the receive packet buffer, or counts
// it missed when the buffer is full.
func (p *PF) toFIFO(frame []byte, m rxMeta) {
	pbBytes := int(p.reg(0x03C00)>>10&0x3FF) << 10
	if !p.fifo.push(frame, m, pbBytes) {
		p.stats.add(stMPC0, 1)
		p.mc.rxFIFOFull.Add(1)
		p.raise(eicrRxMiss)
	}
}

func isBroadcast(f []byte) bool {
	return f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xFF
}

// l2Filter applies the destination address and VLAN filters. inexact is
// true when the frame passed through a hash or promiscuous filter.
func (p *PF) l2Filter(f []byte, tagged bool) (ok, inexact bool) {
	fctrl := p.reg(regFCTRL)
	if !p.vftaPass(f, tagged) {
		return false, false
	}
	switch {
	case isBroadcast(f):
		// Broadcast is a multicast address: BAM or MPE accept it.
		return fctrl&(fctrlBAM|fctrlMPE) != 0, fctrl&fctrlBAM == 0
	case f[0]&1 == 0:
		if p.exactMatch(f) {
			return true, false
		}
		return fctrl&fctrlUPE != 0, true
	default:
		if p.exactMatch(f) {
			return true, false
		}
		if fctrl&fctrlMPE != 0 {
			return true, true
		}
		if p.reg(regMCSTCTRL)&mcstctrlMFE != 0 {
			h := mtaHash(f, p.reg(regMCSTCTRL)&3)
			if p.reg(regMTA0+4*(h>>5))&(1<<(h&31)) != 0 {
				return true, true
			}
		}
		return false, false
	}
}

// vftaPass applies the VLAN filter table to a tagged frame when
// VLNCTRL.VFE is set.
func (p *PF) vftaPass(f []byte, tagged bool) bool {
	if !tagged || p.reg(regVLNCTRL)&vlnctrlVFE == 0 {
		return true
	}
	vid := uint32(binary.BigEndian.Uint16(f[14:]) & 0xFFF)
	return p.reg(regVFTA0+4*(vid>>5))&(1<<(vid&31)) != 0
}

// mtaHash picks the 12 destination-address bits MCSTCTRL.MO selects:
// 0 → [47:36], 1 → [46:35], 2 → [45:34], 3 → [43:32].
func mtaHash(da []byte, mo uint32) uint32 {
	v := uint32(da[4]) | uint32(da[5])<<8
	shift := [4]uint32{4, 3, 2, 0}[mo]
	return v >> shift & 0xFFF
}

// exactMatch compares the destination address with the valid receive
// address registers. The valid entries are cached and rebuilt when any
// RAL/RAH word changes, so the common case costs a few compares, not 256
// register reads.
func (p *PF) exactMatch(f []byte) bool {
	da := macAt(f)
	for _, a := range p.rarList().addr {
		if a == da {
			return true
		}
	}
	return false
}

// macAt reads the 48-bit address at the start of b the way RAL/RAH hold
// it: byte 0 in bits 7:0.
func macAt(b []byte) uint64 {
	return uint64(binary.LittleEndian.Uint32(b)) | uint64(binary.LittleEndian.Uint16(b[4:]))<<32
}

// rarCache is the list of valid receive address entries: addr[i] is the
// address of entry idx[i].
type rarCache struct {
	addr []uint64
	idx  []uint8
}

func (p *PF) rarList() *rarCache {
	e := &p.rx
	if !p.rarStale.Load() {
		if cur := e.rar.Load(); cur != nil {
			return cur
		}
	}
	e.rarMu.Lock()
	defer e.rarMu.Unlock()
	// Clear the flag before reading: a write racing with the rebuild marks
	// the list stale again.
	p.rarStale.Store(false)
	c := &rarCache{addr: make([]uint64, 0, 4), idx: make([]uint8, 0, 4)}
	for i := uint32(0); i < 128; i++ {
		rah := p.reg(regRAL0 + 8*i + 4)
		if rah&rahAV != 0 {
			c.addr = append(c.addr, uint64(p.reg(regRAL0+8*i))|uint64(rah&0xFFFF)<<32)
			c.idx = append(c.idx, uint8(i))
		}
	}
	e.rar.Store(c)
	return c
}

// statSet maps a queue to its statistics counter set through RQSMR/TQSM:
// one byte per queue, four queues per register, counter index in bits 3:0.
func (p *PF) statSet(base uint32, q int) statID {
	return statID(p.reg(base+4*uint32(q/4)) >> (8 * uint(q%4)) & 0xF)
}

// stepRX moves the frames waiting in the packet buffer into the RX rings.
// A frame whose queue has no free descriptor blocks the buffer behind it
// (head-of-line, as the single packet buffer does) unless the queue has
// SRRCTL.DROP_EN, which drops it instead.
func (p *PF) stepRX() int {
	p.rxMu.Lock()
	defer p.rxMu.Unlock()
	wb := &p.rx.wb
	wb.begin(p.wbDelay.Load())
	head, n := p.fifo.pending()
	if n == 0 && len(wb.held) == 0 {
		return 0
	}
	if !p.cfg.busMaster() {
		p.mc.dmaNoBusMaster.Add(1)
		return 0
	}
	done := 0
	p.iommu.mu.RLock()
	causes := wb.flush(&p.iommu, false)
	for done < n && p.receive(p.fifo.at(head+done), &causes) {
		done++
	}
	p.iommu.mu.RUnlock()
	p.fifo.pop(done)
	if causes != 0 {
		p.raise(causes)
	}
	p.deliverVFCauses()
	return done
}

// receive DMAs one frame. It returns false when the frame must wait for
// descriptors; true when the frame is done with (written or dropped).
func (p *PF) receive(slot *rxSlot, causes *uint32) bool {
	if slot.pools != 0 {
		return p.receivePools(slot, causes)
	}
	f := slot.buf
	pi := parsePacket(f, uint16(p.reg(regVLNCTRL)))

	q := 0
	var hash, rssType uint32
	if mrqc := p.reg(regMRQC); rssMode(mrqc & 0xF) {
		hash, rssType = p.rssHash(f, &pi, mrqc)
		if rssType != 0 && mrqc&0xF == 1 {
			q = p.retaQueue(hash)
		}
	}
	done, _ := p.receiveQueue(slot, q, &pi, hash, rssType, causes)
	return done
}

// receiveQueue DMAs the frame in slot into queue q. done is false when the
// frame must wait for descriptors; written is the number of bytes written
// to the queue (0 when the frame was dropped).
func (p *PF) receiveQueue(slot *rxSlot, q int, pi *pktInfo, hash, rssType uint32, causes *uint32) (done bool, written int) {
	f := slot.buf
	now := p.clock.Load()
	set := p.statSet(regRQSMR0, q)
	if !p.rxQueueEnabled(q, now) {
		p.mc.rxQueueOff.Add(1)
		p.stats.add(stQPRDC0+set, 1)
		return true, 0
	}
	u, ok := p.dmaDomain(q) // a VF's queue DMAs through the VF's domain
	if !ok {
		p.mc.dmaNoBusMaster.Add(1)
		return true, 0
	}
	qb := rxQueueBase(q)
	srrctl := p.reg(qb + rqSRRCTL)
	bufSize := int(srrctl&0x1F) << 10
	if bufSize == 0 {
		bufSize = 2 << 10
	}
	legacy := srrctl>>srrctlDescShift&7 == descTypeLegacy

	// The frame as it lands in memory.
	out := f
	strip := pi.vlan && p.reg(qb+rqRXDCTL)&rxdctlVME != 0
	crc := p.reg(regHLREG0)&hlreg0RXCRCSTRP == 0
	if strip || crc {
		out = p.rx.scratch[:0]
		if strip {
			out = append(append(out, f[:12]...), f[16:]...)
		} else {
			out = append(out, f...)
		}
		if crc {
			out = binary.LittleEndian.AppendUint32(out, crc32.ChecksumIEEE(f))
		}
	}

	count := p.reg(qb+rqRDLEN) / 16
	rdh := p.reg(qb+rqRDH) % count
	rdt := p.reg(qb+rqRDT) % count
	need := (len(out) + bufSize - 1) / bufSize
	free := int((rdt + count - rdh) % count)
	if free < need {
		if !slot.noBuf {
			slot.noBuf = true
			p.stats.add(stRNBC0, 1)
		}
		if srrctl&srrctlDropEn != 0 {
			p.stats.add(stQPRDC0+set, 1)
			return true, 0
		}
		return false, 0
	}

	// Fetch the descriptors and write the data; nothing is written back
	// unless every access got through the IOMMU.
	base := (uint64(p.reg(qb+rqRDBAH))<<32 | uint64(p.reg(qb+rqRDBAL))) &^ 0x7F
	descs := p.rx.descs[:need]
	for i := range descs {
		d, ok := u.slice(base+16*uint64((rdh+uint32(i))%count), 16)
		if !ok {
			p.mc.rxDMAFault.Add(1)
			return true, 0
		}
		descs[i] = d
		chunk := out[i*bufSize : min((i+1)*bufSize, len(out))]
		if !u.dmaWrite(binary.LittleEndian.Uint64(d), chunk) {
			p.mc.rxDMAFault.Add(1)
			return true, 0
		}
	}

	// Status of the last descriptor.
	status := uint32(rdStatDD | rdStatEOP)
	var errs uint32
	if strip {
		status |= rdStatVP
	}
	if slot.inexact {
		status |= rdStatPIF
	}
	ipcs, ipe, l4cs, udpcs, l4e := rxChecksums(f, pi)
	if ipcs {
		status |= rdStatIPCS
	}
	if l4cs {
		status |= rdStatL4CS
	}
	if udpcs {
		status |= rdStatUDPCS
	}
	var tci uint32
	if strip {
		tci = uint32(pi.tci)
	}
	// The write-backs: the whole descriptor in the advanced format (the
	// status dword last), dwords 2-3 in the legacy one, whose buffer
	// address stays.
	cause := p.queueCause(q, false)
	wb := &p.rx.wb
	hold := wb.holding()
	for i, d := range descs {
		n := uint32(min(bufSize, len(out)-i*bufSize))
		last := i == need-1
		w := writeBack{iova: base + 16*uint64((rdh+uint32(i))%count), size: 16, set: 0xF, pub: 2, dom: u}
		switch {
		case legacy:
			st := uint32(rdStatDD)
			if last {
				st = status & 0xFF
				if ipe {
					st |= rdLegacyErrIPE << 8
				}
				if l4e {
					st |= rdLegacyErrTCPE << 8
				}
			}
			w.set, w.pub = 0xC, 3
			w.words[2], w.words[3] = n, st|tci<<16
		case !last:
			w.words[2], w.words[3] = rdStatDD, n
		default:
			errs = 0
			if ipe {
				errs |= rdErrIPE
			}
			if l4e {
				errs |= rdErrL4E
			}
			w.words[0] = rssType | packetType(pi)<<4
			if p.reg(regRXCSUM)&rxcsumPCSD != 0 {
				w.words[1] = hash
			} else if pi.ipv4 {
				// IP identification; fragment checksum not modelled.
				w.words[1] = uint32(binary.BigEndian.Uint16(f[pi.l3+4:]))
			}
			w.words[2], w.words[3] = status|errs, n|tci<<16
		}
		if hold {
			if last {
				w.cause = cause
			}
			wb.hold(&w)
			continue
		}
		w.apply(d)
	}
	p.setReg(qb+rqRDH, (rdh+uint32(need))%count)

	p.stats.add(stQPRC0+set, 1)
	p.stats.add(stQBRC0+set, uint64(len(out)))
	p.stats.add(stRXDGPC, 1)
	p.stats.add(stRXDGBC, uint64(len(out)))
	p.countVFRX(q, out)
	if !hold {
		*causes |= cause
	}
	return true, len(out)
}

// packetType is the descriptor's packet type field (bits 15:4 of dword 0,
// here shifted down by 4).
func packetType(pi *pktInfo) uint32 {
	var t uint32
	switch {
	case pi.ipv4 && pi.ipv4Opt:
		t = ptIPv4Ext >> 4
	case pi.ipv4:
		t = ptIPv4 >> 4
	case pi.ipv6Ext:
		t = ptIPv6Ext >> 4
	case pi.ipv6:
		t = ptIPv6 >> 4
	}
	if pi.l4 != 0 {
		switch pi.proto {
		case protoTCP:
			t |= ptTCP >> 4
		case protoUDP:
			t |= ptUDP >> 4
		case protoSCTP:
			t |= ptSCTP >> 4
		}
	}
	return t
}
