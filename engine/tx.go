package engine

import (
	"encoding/binary"

	"github.com/zcnet/zcnet/internal/checksum"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vhost"
)

// txState is the transmit half of a Channel.
//
// Zero-copy: each guest TX chain becomes one NIC packet whose segments are
// the chain's pieces past the virtio-net header, by IOVA; the chain goes
// back to the guest only when the NIC reports the packet sent (Reclaim),
// and the NIC is reclaimed on every poll so guest buffers are held no
// longer than needed. Copy: the frame is gathered into host buffers and the
// chain returned at once.
type txState struct {
	zeroCopy   bool
	copyReason counter
	holds      uint64 // slot bits of the guest regions of packets on the NIC

	chain vhost.Chain
	// direct takes a burst of chains from vhost.PopDirect.
	direct  []vhost.DirectBuf
	pkts    []ring.TxPkt
	segs    []ring.Segment // maxTxSegs per packet of pkts
	done    []ring.Cookie
	heads   []uint16 // the guest chains among done
	zcHeads int      // zero-copy packets on the NIC
	unflush int      // used entries pushed and not yet published

	rec     []txRecord
	recFree []uint32

	probe [frameProbe]byte
	hdr   [vhost.NetHeaderSize]byte
	patch [4]byte
}

// maxL3Len is the longest IP header (with IPv6 extension headers) the
// 82599's TX context descriptor can describe: IPLEN has 9 bits.
const maxL3Len = 511

func (t *txState) init(burst, records int) {
	t.chain.Segs = make([]vhost.Segment, 0, maxSegs)
	t.pkts = make([]ring.TxPkt, burst)
	t.direct = make([]vhost.DirectBuf, burst)
	t.segs = make([]ring.Segment, burst*maxCopyBufs)
	for i := range t.pkts {
		t.pkts[i].Segs = t.segs[i*maxCopyBufs : i*maxCopyBufs : (i+1)*maxCopyBufs]
	}
	t.done = make([]ring.Cookie, burst)
	t.heads = make([]uint16, 0, burst)
	t.rec = make([]txRecord, records)
	t.recFree = make([]uint32, records)
	for i := range t.recFree {
		t.recFree[i] = uint32(records - 1 - i)
	}
}

func (p *Channel) startTx() {
	p.negotiated()
	t := &p.tx
	t.zeroCopy, t.copyReason = false, 0
	switch {
	case p.cfg.ForceCopy:
		t.copyReason = cCopyForced
	case p.features&vhost.FAccessPlatform != 0:
		t.copyReason = cCopyFeatures
	default:
		t.zeroCopy = true
	}
	if err := p.nic.StartTx(); err != nil {
		p.failed = err
		return
	}
	p.txRunning = true
}

// pollTx reclaims what the NIC sent, then submits a burst of new packets.
func (p *Channel) pollTx() int {
	t := &p.tx
	p.reclaimTx()
	free := p.nic.TxFree()
	if p.cfg.Pair == 0 {
		free -= p.announce(free)
	}
	k := 0
	// t.direct[di:dn] are chains of one readable descriptor popped ahead
	// (vhost.PopDirect); a chain popped here is given back with them.
	di, dn := 0, 0
	// PopDirect serves no ring while the dirty log is on: no call per
	// chain then.
	direct := t.zeroCopy && p.txv.DirtyLog() == nil
	for k < len(t.pkts) {
		pk := &t.pkts[k]
		if di == dn && direct {
			// A frame in one piece takes two of the NIC's descriptors
			// (n+1 below, n = 1): pop no more than fit, so that none
			// popped here need go back.
			di, dn = 0, p.txv.PopDirect(t.direct[:min(len(t.pkts)-k, free/2)], false)
		}
		var c *vhost.Chain
		if di < dn {
			if sent := p.directTx(t.direct[di:min(dn, di+free/2)], t.pkts[k:]); sent > 0 {
				di += sent
				k += sent
				free -= 2 * sent
				continue
			}
			// Not a frame directTx sends: the Chain path decides.
			c = p.directChain(&t.direct[di])
			di++
		} else {
			ok, err := p.txv.Pop(&t.chain)
			if !ok {
				if err != nil {
					p.st.add(cGuestErrors, 1)
				}
				break
			}
			c = &t.chain
			if err != nil {
				p.dropTx(c.Head, cDropTxBadHeader)
				continue
			}
		}
		if drop := p.txOffload(c, pk); drop != 0 {
			p.dropTx(c.Head, drop)
			continue
		}
		p.learnMAC(c)
		segs := pk.Segs[:maxCopyBufs]
		n, reason := 0, t.copyReason
		if t.zeroCopy {
			n = p.guestSegs(c, segs[:maxTxSegs])
			reason = cCopyLayout
		}
		if n == 0 {
			// Copy: needs the descriptors of its host buffers.
			nb := (int(c.ReadLen) - p.hdrLen + p.pool.BufSize() - 1) / p.pool.BufSize()
			if nb+1 > free {
				p.txv.Unpop(1 + dn - di)
				break
			}
			if n = p.copyTx(c, pk, segs); n == 0 {
				p.dropTx(c.Head, cDropTxNoCopyBuffer)
				continue
			}
			p.txv.Push(c.Head, 0)
			t.unflush++
			p.st.add(reason, 1)
			p.st.add(cTxCopied, 1)
		} else {
			if n+1 > free {
				p.txv.Unpop(1 + dn - di)
				break
			}
			pk.Cookie = ring.Cookie(c.Head)
			p.st.add(cTxZeroCopy, 1)
		}
		pk.Segs = segs[:n]
		free -= n + 1
		p.st.add(cTxBytes, uint64(c.ReadLen)-uint64(p.hdrLen))
		k++
	}
	if k == 0 {
		p.flushTx()
		return 0
	}
	m := p.txq.Submit(t.pkts[:k])
	for i := range t.pkts[:k] {
		pk := &t.pkts[i]
		if i >= m {
			// Refused by the NIC (free was computed first, so only an
			// offload it rejects gets here).
			p.giveBackTx(pk.Cookie, nil)
			p.st.add(cDropTxOffload, 1)
		} else if pk.Cookie&copyCookie == 0 {
			t.zcHeads++
		}
	}
	p.st.add(cTxPackets, uint64(m))
	p.flushTx()
	return k
}

// announce puts on the wire the RARP the front end asked for (vhost
// SEND_RARP: QEMU on the destination of a live migration, for a guest
// without GUEST_ANNOUNCE), from a host buffer, so that the switches learn
// the guest's new port. It returns the descriptors used. Pair 0's channel
// alone sends it.
func (p *Channel) announce(free int) int {
	t := &p.tx
	if free < 2 || len(t.recFree) == 0 {
		return 0 // next poll
	}
	mac, ok := p.dev.TakeRARP()
	if !ok {
		return 0
	}
	ri := t.recFree[len(t.recFree)-1]
	rec := &t.rec[ri]
	if p.pool.Get(rec.bufs[:1]) != 1 {
		p.st.add(cDropTxNoCopyBuffer, 1)
		return 0
	}
	t.recFree = t.recFree[:len(t.recFree)-1]
	rec.n = 1
	vhost.AppendRARP(p.pool.Bytes(rec.bufs[0])[:0], mac)
	pk := &t.pkts[0]
	segs := pk.Segs[:1]
	segs[0] = ring.Segment{IOVA: p.pool.IOVA(rec.bufs[0]), Len: vhost.RARPFrameLen}
	*pk = ring.TxPkt{Segs: segs, Cookie: copyCookie | ring.Cookie(ri)}
	m := p.txq.Submit(t.pkts[:1])
	pk.Segs = segs[:0]
	if m != 1 {
		p.freeTxRecord(copyCookie | ring.Cookie(ri))
		p.st.add(cDropTxOffload, 1)
		return 0
	}
	p.st.add(cTxRARP, 1)
	return 2
}

// reclaimTx returns sent packets' buffers: guest chains to the used ring,
// host buffers to the pool.
func (p *Channel) reclaimTx() {
	t := &p.tx
	for {
		n := p.txq.Reclaim(t.done)
		heads := t.heads[:0]
		for _, c := range t.done[:n] {
			if c&copyCookie != 0 {
				p.freeTxRecord(c)
				continue
			}
			heads = append(heads, uint16(c))
		}
		p.txv.PushRead(heads)
		t.unflush += len(heads)
		t.zcHeads -= len(heads)
		if n < len(t.done) {
			return
		}
	}
}

// flushTx publishes TX completions every TxCompleteBatch, or as soon as no
// zero-copy packet is left on the NIC (the guest may be waiting for its
// last buffers).
func (p *Channel) flushTx() {
	t := &p.tx
	if t.unflush == 0 || (t.unflush < p.cfg.TxCompleteBatch && t.zcHeads > 0) {
		return
	}
	p.txv.Flush()
	t.unflush = 0
	p.st.add(cTxSignals, 1)
}

func (p *Channel) dropTx(head uint16, why counter) {
	p.txv.Push(head, 0)
	p.tx.unflush++
	p.st.add(why, 1)
}

// giveBackTx returns a packet's buffers without sending it: guest chains
// to v (if the queue still runs), host buffers to the pool.
func (p *Channel) giveBackTx(c ring.Cookie, v *vhost.Virtqueue) {
	if c&copyCookie != 0 {
		p.freeTxRecord(c)
		return
	}
	if v == nil {
		v = p.txv
	}
	v.Push(uint16(c), 0)
	p.tx.unflush++
}

// directTx fills pkts[i] to send chain d[i], one readable descriptor
// holding the virtio-net header and the frame, zero-copy, for the chains
// at the start of d whose frames ask for no offload and lie in
// DMA-mapped memory: pollTx's work for the common frame, without a Chain
// and without a call per frame. It returns how many it filled; the chain
// after them (if any) is for the Chain path (directChain) to decide.
func (p *Channel) directTx(d []vhost.DirectBuf, pkts []ring.TxPkt) int {
	hl := p.hdrLen
	d = d[:min(len(d), len(pkts))]
	pkts = pkts[:len(d)]
	var bytes uint64
	i := 0
	for ; i < len(d); i++ {
		b := d[i].Buf
		if len(b) < hl+14 || b[0]&vhost.NetHdrFNeedsCsum != 0 || b[1] != vhost.NetHdrGSONone {
			break
		}
		iova, slot, ok := p.view.hinted(b[hl:])
		if !ok {
			if iova, slot, ok = p.view.iovaOf(b[hl:]); !ok {
				break
			}
		}
		p.tx.holds |= slot
		if !p.mac.static {
			p.learnSource(macBits(b[hl+6 : hl+12]))
		}
		// Field by field: Submit reads no other field of a packet of one
		// segment without offload, and a literal would zero the whole
		// packet.
		pk := &pkts[i]
		pk.Segs = pk.Segs[:1]
		seg := &pk.Segs[0]
		seg.IOVA, seg.Len = iova, uint32(len(b)-hl)
		pk.Cookie, pk.Offload = ring.Cookie(d[i].Head), 0
		bytes += uint64(len(b) - hl)
	}
	p.st.add(cTxZeroCopy, uint64(i))
	p.st.add(cTxBytes, bytes)
	return i
}

// directChain makes the channel's chain describe d, for the Chain path.
func (p *Channel) directChain(d *vhost.DirectBuf) *vhost.Chain {
	c := &p.tx.chain
	c.Head = d.Head
	c.Segs = c.Segs[:1]
	s := &c.Segs[0] // field by field: see vhost's setSegment
	s.GPA = d.GPA
	s.Buf = d.Buf
	s.Writable = false
	c.ReadLen, c.WriteLen = uint32(len(d.Buf)), 0
	return c
}

// guestSegs describes chain c's frame (past the header) as NIC segments by
// IOVA. It returns 0 if the frame needs more than len(segs) pieces or a
// piece is not DMA-mapped.
func (p *Channel) guestSegs(c *vhost.Chain, segs []ring.Segment) int {
	skip := p.hdrLen
	n := 0
	for i := range c.Segs {
		b := c.Segs[i].Buf
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b = b[skip:]
		skip = 0
		if n == len(segs) {
			return 0
		}
		iova, ok := p.iova(b, &p.tx.holds)
		if !ok {
			return 0
		}
		segs[n] = ring.Segment{IOVA: iova, Len: uint32(len(b))}
		n++
	}
	return n
}

// txOffload reads the virtio-net header of chain c and fills pk's offload
// request. For TSO it prepares the frame's headers in guest memory the way
// the 82599 wants them (IP length and checksum zero, TCP checksum seeded
// with the pseudo-header sum without length). It returns a drop reason, or
// 0.
func (p *Channel) txOffload(c *vhost.Chain, pk *ring.TxPkt) counter {
	t := &p.tx
	hl := p.hdrLen
	*pk = ring.TxPkt{Segs: pk.Segs}
	if c.WriteLen > 0 || int(c.ReadLen) < hl+14 {
		return cDropTxBadHeader
	}
	// Most frames ask for no offload: flags and gso_type, the header's
	// first two bytes, say so without gathering and decoding it all.
	if b := c.Segs[0].Buf; len(b) >= 2 && b[0]&vhost.NetHdrFNeedsCsum == 0 && b[1] == vhost.NetHdrGSONone {
		return 0
	}
	vhost.Gather(t.hdr[:hl], c.Segs, 0)
	h, _ := vhost.DecodeNetHeader(t.hdr[:], hl)
	if h.Flags&vhost.NetHdrFNeedsCsum == 0 && h.GSOType == vhost.NetHdrGSONone {
		return 0
	}
	probe := t.probe[:min(len(t.probe), int(c.ReadLen)-hl)]
	vhost.Gather(probe, c.Segs, hl)
	l2, etype := 14, binary.BigEndian.Uint16(probe[12:])
	if etype == 0x8100 && len(probe) >= 18 {
		l2, etype = 18, binary.BigEndian.Uint16(probe[16:])
	}
	pk.L2Len = uint8(l2)
	pk.IPv6 = etype == 0x86dd
	if etype != 0x0800 && etype != 0x86dd {
		return cDropTxOffload
	}
	if h.Flags&vhost.NetHdrFNeedsCsum == 0 || int(h.CsumStart) <= l2 {
		return cDropTxOffload
	}
	// The checksum field must lie in the frame (virtio 1.2, 5.1.6.2:
	// csum_start + csum_offset + 2 <= the packet's length), and the NIC
	// needs the whole L4 header: it computes from csum_start to the end
	// and finds the field by protocol. A NIC handed less drops the packet
	// as malformed, which no counter of the 82599 shows.
	frameLen := int(c.ReadLen) - hl
	if int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
		return cDropTxBadHeader
	}
	l3 := int(h.CsumStart) - l2
	pk.L3Len = uint16(l3)
	l4Hdr := 0
	switch h.CsumOffset {
	case 16:
		pk.L4Proto, l4Hdr = ring.L4TCP, 20
	case 6:
		pk.L4Proto, l4Hdr = ring.L4UDP, 8
	default:
		return cDropTxOffload
	}
	if int(h.CsumStart)+l4Hdr > frameLen {
		return cDropTxBadHeader
	}
	if l3 > maxL3Len {
		// More than the NIC's context descriptor can say (IPLEN).
		return cDropTxOffload
	}
	pk.Offload = ring.OffloadL4Csum
	if h.GSOType == vhost.NetHdrGSONone {
		// The guest seeded the checksum field with the pseudo-header sum,
		// which is what the NIC wants for a single frame.
		return 0
	}
	gso := h.GSOType &^ vhost.NetHdrGSOECN
	if pk.L4Proto != ring.L4TCP || (gso != vhost.NetHdrGSOTCPv4 && gso != vhost.NetHdrGSOTCPv6) || h.GSOSize == 0 {
		return cDropTxOffload
	}
	l4 := l2 + l3
	if len(probe) < l4+20 {
		return cDropTxBadHeader
	}
	pk.L4Len = (probe[l4+12] >> 4) * 4
	pk.MSS = h.GSOSize
	pk.Offload |= ring.OffloadTSO
	var sum uint64
	if pk.IPv6 {
		if len(probe) < l2+40 {
			return cDropTxBadHeader
		}
		sum = checksum.Add(0, probe[l2+8:l2+40])
		p.patchFrame(c, l2+4, 0) // payload length
	} else {
		pk.Offload |= ring.OffloadIPv4Csum
		sum = checksum.Add(0, probe[l2+12:l2+20])
		p.patchFrame(c, l2+2, 0)  // total length
		p.patchFrame(c, l2+10, 0) // header checksum
	}
	sum += uint64(ring.L4TCP)
	p.patchFrame(c, l4+16, checksum.Fold(sum))
	return 0
}

// patchFrame stores a big-endian 16-bit value at frame offset off of
// chain c's (guest) memory.
func (p *Channel) patchFrame(c *vhost.Chain, off int, v uint16) {
	binary.BigEndian.PutUint16(p.tx.patch[:2], v)
	vhost.Scatter(c.Segs, p.hdrLen+off, p.tx.patch[:2])
	if log := p.dev.DirtyLog(); log != nil {
		log.MarkSegments(c.Segs, p.hdrLen+off, 2)
	}
}

// quiesceTx stops the NIC TX queue and takes every packet back. Those the
// NIC sent before it stopped complete as on any poll; those it never sent
// are dropped and counted (tx_quiesce). Guest chains of both go to v's
// used ring (unless v is nil: the guest's memory is gone), host buffers to
// the pool, and every completion pushed to v, earlier ones included, is
// published.
func (p *Channel) quiesceTx(v *vhost.Virtqueue) error {
	t := &p.tx
	p.st.add(cRestarts, 1)
	if err := p.nic.StopTx(); err != nil {
		return err
	}
	giveBack := func(c ring.Cookie) {
		if c&copyCookie != 0 {
			p.freeTxRecord(c)
		} else if v != nil {
			v.Push(uint16(c), 0)
		}
	}
	for {
		n := p.txq.Reclaim(t.done)
		for _, c := range t.done[:n] {
			giveBack(c)
		}
		if n < len(t.done) {
			break
		}
	}
	cookies, err := p.nic.DrainTx(p.drain[:0])
	if err != nil {
		return err
	}
	for _, c := range cookies {
		giveBack(c)
		p.st.add(cDropTxQuiesce, 1)
	}
	if v != nil {
		v.Flush()
	}
	t.zcHeads, t.unflush, t.holds = 0, 0, 0
	p.txRunning = false
	return nil
}
