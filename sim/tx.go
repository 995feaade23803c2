package sim

import (
	"encoding/binary"
	"hash/crc32"
	"math/bits"

	"github.com/zcnet/zcnet/internal/checksum"
	"github.com/zcnet/zcnet/sim/wire"
)

// Transmit path: the TX DMA engine walks each enabled ring from TDH to TDT,
// keeps context descriptors, gathers the buffers of each packet's data
// descriptors through the IOMMU, applies the offloads the descriptors ask
// for, hands the frame(s) to the wire and reports completion (DD or head
// write-back).

const (
	txCmdEOP  = 1 << 24
	txCmdIFCS = 1 << 25
	txCmdIC   = 1 << 26 // legacy: insert checksum
	txCmdRS   = 1 << 27
	txCmdDEXT = 1 << 29
	txCmdVLE  = 1 << 30
	txCmdTSE  = 1 << 31

	txDTypContext = 0x2
	txDTypData    = 0x3

	txStaDD = 1 << 0

	txPoptsIXSM = 1 << 8
	txPoptsTXSM = 1 << 9

	tucmdIPv4 = 1 << 10
	tucmdL4T  = 3 << 11
	l4tUDP    = 0 << 11
	l4tTCP    = 1 << 11
	l4tSCTP   = 2 << 11

	tdwbalEnable = 1 << 0

	// maxTxPacket bounds a gathered packet: TSO's PAYLEN is 18 bits (256 KB)
	// plus headers.
	maxTxPacket = 256<<10 + 512
	// maxTxDescs bounds the data descriptors of one packet; the 82599
	// accepts at most 40 per TSO packet, the model a little more.
	maxTxDescs = 64
	// txBudget bounds the descriptors one queue may use per engine pass,
	// so one busy queue does not starve the others.
	txBudget = 512
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// txContext is a context descriptor as the queue keeps it (two slots per
// queue, selected by IDX).
type txContext struct {
	maclen, iplen, l4len int
	vlan                 uint16
	tucmd                uint32
	mss                  int
}

type txQueueState struct{ ctx [2]txContext }

type txDesc struct {
	d      []byte // the descriptor in ring memory
	iova   uint64 // where d is
	addr   uint64
	cmd    uint32 // dword 2
	olinfo uint32 // dword 3
}

type txEngine struct {
	queues [NumQueues]txQueueState
	pkt    []byte // gathered packet
	hdr    []byte // per-segment header copy for TSO
	out    []byte // the frame handed to the wire
	descs  [maxTxDescs]txDesc
	wb     writeBacks
}

func (e *txEngine) init() {
	e.pkt = make([]byte, maxTxPacket)
	e.hdr = make([]byte, 0, 512)
	e.out = make([]byte, 0, maxRxFrame+64)
}

func (e *txEngine) reset() {
	for i := range e.queues {
		e.queues[i] = txQueueState{}
	}
	e.wb.drop()
}

// stepTX runs one pass over the enabled TX queues.
func (p *PF) stepTX() int {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	wb := &p.tx.wb
	wb.begin(p.wbDelay.Load())
	if p.reg(regDMATXCTL)&dmatxctlTE == 0 {
		return 0
	}
	now := p.clock.Load()
	var causes uint32
	frames := 0
	locked := false
	if len(wb.held) != 0 && p.cfg.busMaster() {
		p.iommu.mu.RLock()
		locked = true
		causes = wb.flush(&p.iommu, false)
	}
	qpp := p.txPoolQueues()
	for w := range p.txActive {
		for active := p.txActive[w].Load(); active != 0; active &= active - 1 {
			q := w*64 + bits.TrailingZeros64(active)
			tb := txQueueBase(q)
			if p.reg(tb+tqTDH) == p.reg(tb+tqTDT) || !p.txQueueEnabled(q, now) {
				continue
			}
			if qpp != 0 && !p.txPoolEnabled(q/qpp) {
				continue
			}
			if !p.cfg.busMaster() {
				p.mc.dmaNoBusMaster.Add(1)
				continue
			}
			if _, ok := p.dmaDomain(q); !ok { // a VF with bus mastering off
				p.mc.dmaNoBusMaster.Add(1)
				continue
			}
			if !locked {
				p.iommu.mu.RLock()
				locked = true
			}
			frames += p.txQueue(q, &causes)
		}
	}
	if locked {
		p.iommu.mu.RUnlock()
	}
	if causes != 0 {
		p.raise(causes)
	}
	p.deliverVFCauses()
	return frames
}

// txQueue processes queue q's descriptors and returns the frames sent.
func (p *PF) txQueue(q int, causes *uint32) int {
	le := binary.LittleEndian
	tb := txQueueBase(q)
	count := p.reg(tb+tqTDLEN) / 16
	head := p.reg(tb+tqTDH) % count
	tail := p.reg(tb+tqTDT) % count
	base := (uint64(p.reg(tb+tqTDBAH))<<32 | uint64(p.reg(tb+tqTDBAL))) &^ 0x7F
	wthresh := p.reg(tb+tqTXDCTL) >> 16 & 0x7F
	wbal := p.reg(tb + tqTDWBAL)
	headWB := wbal&tdwbalEnable != 0
	st := &p.tx.queues[q]
	u, _ := p.dmaDomain(q)
	frames, used := 0, 0
	report := false
	wb := &p.tx.wb
	hold := wb.holding()

	for head != tail && used < txBudget {
		d, ok := u.slice(base+16*uint64(head), 16)
		if !ok {
			break // the ring itself is unreachable: no progress, no packet lost
		}
		cmd := le.Uint32(d[8:])
		if cmd&txCmdDEXT != 0 && cmd>>20&0xF == txDTypContext {
			w3 := le.Uint32(d[12:])
			w0 := le.Uint32(d[0:])
			st.ctx[w3>>4&1] = txContext{
				iplen:  int(w0 & 0x1FF),
				maclen: int(w0 >> 9 & 0x7F),
				vlan:   uint16(w0 >> 16),
				tucmd:  cmd & 0xFFE00, // TUCMD, bits 19:9
				l4len:  int(w3 >> 8 & 0xFF),
				mss:    int(w3 >> 16),
			}
			head = (head + 1) % count
			used++
			continue
		}
		// A data packet: its descriptors up to EOP must all be posted.
		n, i, eop := 0, head, false
		for i != tail && n < maxTxDescs {
			iova := base + 16*uint64(i)
			dd, ok := u.slice(iova, 16)
			if !ok {
				break
			}
			c := le.Uint32(dd[8:])
			p.tx.descs[n] = txDesc{d: dd, iova: iova, addr: le.Uint64(dd), cmd: c, olinfo: le.Uint32(dd[12:])}
			n++
			i = (i + 1) % count
			if c&txCmdEOP != 0 {
				eop = true
				break
			}
		}
		if !eop && n < maxTxDescs {
			break // the rest of the packet is not posted yet (or unreachable)
		}
		descs := p.tx.descs[:n]
		if eop {
			frames += p.transmitPacket(q, descs)
		} else {
			p.mc.txMalformed.Add(1) // no EOP within the descriptor limit
		}
		for _, x := range descs {
			if x.cmd&txCmdRS == 0 && wthresh == 0 {
				continue
			}
			report = true
			if headWB {
				continue // head write-back replaces descriptor write-back
			}
			// DD in dword 3: over the whole dword in the advanced format,
			// beside CSS and VLAN in the legacy one.
			w := writeBack{iova: x.iova, size: 16, set: 1 << 3, pub: 3, or: x.cmd&txCmdDEXT == 0, dom: u}
			w.words[3] = txStaDD
			if hold {
				wb.hold(&w)
				continue
			}
			w.apply(x.d)
		}
		head = i
		used += n
	}
	p.setReg(tb+tqTDH, head)
	if !report {
		return frames
	}
	cause := p.queueCause(q, true)
	if headWB {
		w := writeBack{iova: uint64(p.reg(tb+tqTDWBAH))<<32 | uint64(wbal&^3), size: 4, set: 1, words: [4]uint32{head}, dom: u}
		if hold {
			w.cause = cause
			wb.hold(&w)
			return frames
		}
		if b, ok := u.slice(w.iova, 4); ok {
			w.apply(b)
		}
	} else if hold {
		wb.held[len(wb.held)-1].cause = cause
		return frames
	}
	*causes |= cause
	return frames
}

// transmitPacket gathers one packet and sends it (or its TSO segments).
func (p *PF) transmitPacket(q int, descs []txDesc) int {
	pkt := p.tx.pkt
	total := 0
	u, _ := p.dmaDomain(q)
	for _, x := range descs {
		n := int(x.cmd & 0xFFFF)
		if total+n > len(pkt) {
			p.mc.txMalformed.Add(1)
			return 0
		}
		if !u.dmaRead(x.addr, pkt[total:total+n]) {
			p.mc.txDMAFault.Add(1)
			return 0
		}
		total += n
	}
	pkt = pkt[:total]
	first := descs[0]
	if first.cmd&txCmdDEXT == 0 {
		return p.transmitLegacy(q, first, pkt)
	}
	ctx := p.tx.queues[q].ctx[first.olinfo>>4&1]
	var tag uint16
	vle := first.cmd&txCmdVLE != 0
	if vle {
		tag = ctx.vlan
	}
	ixsm := first.olinfo&txPoptsIXSM != 0
	txsm := first.olinfo&txPoptsTXSM != 0
	// An IPv4 header checksum for a packet the context calls IPv6 has no
	// field to go to. The reference does not say what silicon makes of
	// it; the model refuses the packet rather than guess.
	if ixsm && ctx.tucmd&tucmdIPv4 == 0 {
		p.mc.txMalformed.Add(1)
		return 0
	}
	// PAYLEN (first descriptor) is the whole packet fetched, or with TSO
	// the L4 payload alone; the device segments by it. What silicon does
	// when it disagrees with the buffers is not documented: the model
	// refuses the packet.
	paylen := int(first.olinfo >> 14)
	if first.cmd&txCmdTSE != 0 {
		return p.transmitTSO(q, &ctx, pkt, paylen, ixsm, vle, tag)
	}
	if paylen != len(pkt) {
		p.mc.txMalformed.Add(1)
		return 0
	}
	if ixsm || txsm {
		if ctx.maclen+ctx.iplen > len(pkt) || ctx.maclen < 14 {
			p.mc.txMalformed.Add(1)
			return 0
		}
	}
	if ixsm {
		insertIPv4Checksum(pkt[ctx.maclen : ctx.maclen+ctx.iplen])
	}
	if txsm && !insertL4Checksum(pkt[ctx.maclen+ctx.iplen:], ctx.tucmd&tucmdL4T) {
		p.mc.txMalformed.Add(1)
		return 0
	}
	p.sendFrame(q, pkt, nil, vle, tag)
	return 1
}

// transmitLegacy handles a legacy data descriptor: optional checksum from
// CSS to the end inserted at CSO, optional VLAN tag from the descriptor.
func (p *PF) transmitLegacy(q int, first txDesc, pkt []byte) int {
	if first.cmd&txCmdIC != 0 {
		css := int(first.olinfo >> 8 & 0xFF)
		cso := int(first.cmd >> 16 & 0xFF)
		if css >= len(pkt) || cso+2 > len(pkt) {
			p.mc.txMalformed.Add(1)
			return 0
		}
		binary.BigEndian.PutUint16(pkt[cso:], checksum.Finish(checksum.Add(0, pkt[css:])))
	}
	p.sendFrame(q, pkt, nil, first.cmd&txCmdVLE != 0, uint16(first.olinfo>>16))
	return 1
}

func insertIPv4Checksum(ip []byte) {
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], checksum.Finish(checksum.Add(0, ip)))
}

// insertL4Checksum completes the L4 checksum of seg. As on silicon, the
// driver has stored the pseudo-header sum in the checksum field; the device
// sums the segment including that field and stores the complement. SCTP
// gets its CRC32c instead.
func insertL4Checksum(seg []byte, l4t uint32) bool {
	switch l4t {
	case l4tUDP:
		if len(seg) < 8 {
			return false
		}
		c := checksum.Finish(checksum.Add(0, seg))
		if c == 0 {
			c = 0xFFFF
		}
		binary.BigEndian.PutUint16(seg[6:], c)
	case l4tTCP:
		if len(seg) < 20 {
			return false
		}
		binary.BigEndian.PutUint16(seg[16:], checksum.Finish(checksum.Add(0, seg)))
	case l4tSCTP:
		if len(seg) < 12 {
			return false
		}
		binary.LittleEndian.PutUint32(seg[8:], 0)
		binary.LittleEndian.PutUint32(seg[8:], crc32.Checksum(seg, castagnoli))
	default:
		return false
	}
	return true
}

// transmitTSO cuts a TCP packet into MSS-sized segments. Every segment
// carries a copy of the headers with the IP length, IPv4 ID (+1 per
// segment) and checksum, TCP sequence number and checksum updated; TCP
// flags are masked with DTXTCPFLGL (first, middle) and DTXTCPFLGH (last),
// which by default keep FIN and PSH for the last segment only. The driver
// has put the pseudo-header sum without the length in the TCP checksum
// field; the device adds each segment's TCP length.
func (p *PF) transmitTSO(q int, ctx *txContext, pkt []byte, paylen int, ixsm, vle bool, tag uint16) int {
	hlen := ctx.maclen + ctx.iplen + ctx.l4len
	if ctx.tucmd&tucmdL4T != l4tTCP || ctx.mss == 0 || ctx.l4len < 20 || ctx.maclen < 14 ||
		hlen > len(pkt) || hlen > cap(p.tx.hdr) {
		p.mc.txMalformed.Add(1)
		return 0
	}
	payload := pkt[hlen:]
	if paylen != len(payload) {
		p.mc.txMalformed.Add(1) // PAYLEN must count the payload only
		return 0
	}
	ipv4 := ctx.tucmd&tucmdIPv4 != 0
	ipOff, l4Off := ctx.maclen, ctx.maclen+ctx.iplen
	be := binary.BigEndian
	id := be.Uint16(pkt[ipOff+4:])
	seq := be.Uint32(pkt[l4Off+4:])
	flgL, flgH := p.reg(regDTXTCPFLL), p.reg(regDTXTCPFLH)
	frames := 0
	for off, k := 0, 0; off < len(payload) || k == 0; k++ {
		seg := payload[off:min(off+ctx.mss, len(payload))]
		last := off+len(seg) >= len(payload)
		h := append(p.tx.hdr[:0], pkt[:hlen]...)
		ip, tcp := h[ipOff:], h[l4Off:hlen]
		if ipv4 {
			be.PutUint16(ip[2:], uint16(ctx.iplen+ctx.l4len+len(seg)))
			be.PutUint16(ip[4:], id+uint16(k))
			if ixsm {
				insertIPv4Checksum(ip[:ctx.iplen])
			}
		} else {
			be.PutUint16(ip[4:], uint16(ctx.iplen-40+ctx.l4len+len(seg)))
		}
		be.PutUint32(tcp[4:], seq+uint32(off))
		mask := flgL & 0xFFF // first segment
		switch {
		case last:
			mask = flgH & 0xFFF
		case k > 0:
			mask = flgL >> 16 & 0xFFF
		}
		fl := be.Uint16(tcp[12:])
		be.PutUint16(tcp[12:], fl&0xF000|fl&uint16(mask))
		sum := checksum.Add(checksum.Add(0, tcp), seg) + uint64(ctx.l4len+len(seg))
		be.PutUint16(tcp[16:], checksum.Finish(sum))
		p.sendFrame(q, h, seg, vle, tag)
		frames++
		off += len(seg)
		if last {
			break
		}
	}
	return frames
}

// sendFrame assembles hdr+payload with an optional VLAN tag after the MAC
// addresses (the descriptor's, or with virtualization as the pool's
// PFVMVIR decides, see poolVLAN), pads it to the minimum size (HLREG0.TXPADEN), counts it and
// hands it to the wire (or back to the receive side in MAC loopback).
func (p *PF) sendFrame(q int, hdr, payload []byte, vle bool, tag uint16) {
	if len(hdr) < 14 {
		p.mc.txMalformed.Add(1)
		return
	}
	qpp := p.txPoolQueues()
	if qpp != 0 {
		vle, tag = p.poolVLAN(q/qpp, vle, tag)
	}
	out := append(p.tx.out[:0], hdr[:12]...)
	if vle {
		out = binary.BigEndian.AppendUint16(out, uint16(p.reg(regDMATXCTL)>>16))
		out = binary.BigEndian.AppendUint16(out, tag)
	}
	out = append(append(out, hdr[12:]...), payload...)
	if p.reg(regHLREG0)&hlreg0TXPADEN != 0 {
		for len(out) < 60 {
			out = append(out, 0)
		}
	}
	p.tx.out = out[:0]

	if qpp != 0 {
		toWire, ok := p.txSwitch(q/qpp, out)
		if !ok {
			return
		}
		if !toWire {
			p.countTxDMA(q, out) // switched inside: the MAC never sees it
			return
		}
	}
	loop := p.reg(regHLREG0)&hlreg0LPBK != 0
	var peer *wire.Endpoint
	if !loop {
		peer = p.peer.Load()
		if peer == nil || !p.linkUp() {
			p.mc.txNoLink.Add(1)
			return
		}
	}
	st := &p.stats
	wireLen := uint64(len(out)) + 4
	st.add(stGPTC, 1)
	st.add(stTPT, 1)
	st.add(stGOTC, wireLen)
	st.add(stPTC64+sizeBucket(int(wireLen)), 1)
	if out[0]&1 != 0 {
		if isBroadcast(out) {
			st.add(stBPTC, 1)
		} else {
			st.add(stMPTC, 1)
		}
	}
	p.countTxDMA(q, out)
	if loop {
		p.Deliver(out)
		return
	}
	(*peer).Deliver(out)
}

// countTxDMA counts a frame the TX DMA sent from queue q, in the queue's
// statistics set (TQSM) and the DMA's own counters.
func (p *PF) countTxDMA(q int, out []byte) {
	st := &p.stats
	set := p.statSet(regTQSM0, q)
	st.add(stQPTC0+set, 1)
	st.add(stQBTC0+set, uint64(len(out)))
	st.add(stTXDGPC, 1)
	st.add(stTXDGBC, uint64(len(out)))
	p.countVFTX(q, out)
}
