package driver

import (
	"encoding/binary"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vhost"
)

// rxState is the receive half of a Port.
//
// Zero-copy: each guest RX chain whose first writable piece holds the
// virtio-net header plus one NIC buffer is posted to the NIC as that piece
// minus the header; the NIC writes the frame right after where the header
// goes. At completion the header is written in front (num_buffers for a
// frame spanning several buffers, DATA_VALID from the NIC's checksum
// verdicts) and the chains go to the used ring, in the NIC's order.
//
// Copy: host buffers from the pool are posted instead, and a completed
// frame is copied into guest chains popped at that moment. A zero-copy port
// also falls back to host buffers while the guest has posted none, so that
// frames arriving then are held instead of dropped by the NIC.
type rxState struct {
	zeroCopy   bool
	copyReason counter
	holds      uint64 // slot bits of the guest regions of buffers on the NIC
	bufLen     uint32 // length posted for each guest buffer (its piece minus the header)
	capacity   int
	posted     int
	// hostOut counts host buffers taken from the pool for receiving and
	// not yet back: on the NIC or holding a frame in pending.
	hostOut int
	// hostFallback: host buffers fit the NIC's buffer size, so a
	// zero-copy port can post them while the guest has none.
	hostFallback bool

	bufs    []ring.Buf
	idx     []uint32
	pending []ring.RxDone // harvested, not yet delivered, in ring order
	recycle []uint16      // guest chains taken back from dropped frames, to post again
	// Per guest chain head: its first writable piece and the IOVA of the
	// byte after the header.
	zcBuf  [][]byte
	zcIOVA []uint64

	chain  vhost.Chain
	chains []vhost.Chain
	hdr    [vhost.NetHeaderSize]byte
}

func (r *rxState) init(burst, capacity int) {
	r.capacity = capacity
	r.bufs = make([]ring.Buf, burst)
	r.idx = make([]uint32, burst)
	r.pending = make([]ring.RxDone, 0, burst+2*maxRxMerge)
	r.recycle = make([]uint16, 0, capacity+burst)
	r.chain.Segs = make([]vhost.Segment, 0, maxSegs)
	r.chains = make([]vhost.Chain, maxRxMerge)
	for i := range r.chains {
		r.chains[i].Segs = make([]vhost.Segment, 0, maxSegs)
	}
}

// startRx decides between zero-copy and copy from the guest's features and
// its first posted buffer, sizes the NIC's buffers (zeroCopyBufSize), and
// starts the NIC queue.
func (p *Port) startRx() {
	p.negotiated()
	r := &p.rx
	mrg := p.features&vhost.NetFMrgRxbuf != 0
	r.zeroCopy, r.copyReason = false, 0
	nicBuf := 0
	switch {
	case p.cfg.ForceCopy:
		r.copyReason = cCopyForced
	case p.features&vhost.FAccessPlatform != 0:
		// The guest gives IOVAs of its own IOMMU, not guest physical
		// addresses; translating them is not implemented.
		r.copyReason = cCopyFeatures
	default:
		ok, _ := p.rxv.Pop(&r.chain)
		if !ok {
			return
		}
		p.rxv.Unpop(1)
		c := &r.chain
		if c.ReadLen > 0 || len(c.Segs) == 0 || !c.Segs[0].Writable {
			r.copyReason = cCopyLayout
			break
		}
		nicBuf = min(16384, (len(c.Segs[0].Buf)-p.hdrLen)/1024*1024)
		switch {
		case nicBuf < 1024 && len(c.Segs) > 1 && int(c.WriteLen) >= p.hdrLen+1024:
			// Room enough, but in pieces the NIC cannot fill as one.
			r.copyReason = cCopyLayout
		case nicBuf < 1024:
			r.copyReason = cCopySmallBuffer
		case !mrg && nicBuf < p.cfg.MaxFrame:
			// Without MRG_RXBUF a frame must fit one guest buffer.
			r.copyReason = cCopyFeatures
		default:
			r.zeroCopy = true
		}
	}
	poolBuf := min(16384, p.pool.BufSize()/1024*1024)
	r.hostFallback = true
	if !r.zeroCopy {
		nicBuf = poolBuf
	} else {
		nicBuf, r.hostFallback = zeroCopyBufSize(nicBuf, p.cfg.MaxFrame, poolBuf, mrg)
		if n := p.rxv.Size(); len(r.zcBuf) < n {
			r.zcBuf = make([][]byte, n)
			r.zcIOVA = make([]uint64, n)
		}
	}
	r.bufLen = uint32(nicBuf)
	if err := p.nic.StartRx(nicBuf); err != nil {
		p.failed = err
		return
	}
	p.rxRunning = true
}

// zeroCopyBufSize sizes the NIC's receive buffers for a zero-copy guest
// whose buffers take guestBuf bytes of frame (a multiple of 1024), and says
// whether the port's host buffers (poolBuf bytes, a multiple of 1024) can
// stand in for guest buffers while the guest has none posted: the NIC
// writes up to its buffer size into every buffer, so it refuses shorter
// ones.
//
// The size is capped at the longest frame rounded up to 1 KiB: the NIC
// never writes more into one buffer, so a larger size gains nothing (a
// 4 KiB guest buffer takes a 1518-byte frame whole either way) and only
// locks the host buffers out. A guest with MRG_RXBUF whose frames are
// larger than a host buffer (jumbo MTU) gets buffers of the host buffers'
// size: its frames span a few buffers, which costs a move of the later
// buffers' data per frame, but the fallback keeps frames that arrive while
// it is dry. Without MRG_RXBUF a frame must fit one guest buffer; then the
// guest's size stays and there is no fallback (the NIC holds arriving
// frames in its FIFO, and drops them when that fills, while the guest has
// nothing posted).
func zeroCopyBufSize(guestBuf, maxFrame, poolBuf int, mrg bool) (nicBuf int, hostFallback bool) {
	nicBuf = min(guestBuf, (maxFrame+1023)/1024*1024)
	if nicBuf > poolBuf && mrg {
		nicBuf = poolBuf
	}
	return nicBuf, nicBuf <= poolBuf
}

// pollRx harvests, delivers and refills; it returns frames delivered.
func (p *Port) pollRx() int {
	p.harvestRx()
	delivered := p.deliverPending()
	for p.refill() {
	}
	p.rxv.Flush()
	return delivered
}

// harvestRx takes one burst of completions from the NIC.
func (p *Port) harvestRx() {
	r := &p.rx
	room := cap(r.pending) - len(r.pending)
	if room > 0 {
		n := p.rxq.Harvest(r.pending[len(r.pending) : len(r.pending)+min(room, len(r.bufs))])
		r.pending = r.pending[:len(r.pending)+n]
		r.posted -= n
	}
}

// deliverPending hands complete frames to the guest in order, stopping at
// a frame in host buffers while the guest has no buffer for it.
func (p *Port) deliverPending() int {
	r := &p.rx
	start, n := 0, 0
	waiting := false
	for i := range r.pending {
		if !r.pending[i].EOP {
			continue
		}
		if !p.deliver(r.pending[start : i+1]) {
			waiting = true
			break
		}
		start = i + 1
		n++
	}
	if start == 0 && !waiting && len(r.pending) == cap(r.pending) {
		// A full queue without an end of frame: longer than anything
		// the guest could take. Drop what is there. (Not when every
		// frame was just delivered, which also leaves start at the end
		// of a full queue: deliver already gave those buffers back, and
		// releasing them again put host buffers into the pool twice and
		// guest chains onto the NIC while the guest owned them.)
		p.release(r.pending)
		p.st.add(cDropRxTooBig, 1)
		start = len(r.pending)
	}
	k := copy(r.pending, r.pending[start:])
	r.pending = r.pending[:k]
	return n
}

// deliver passes one frame (its completions, EOP last) to the guest. It
// reports false when the frame must wait for guest buffers.
func (p *Port) deliver(f []ring.RxDone) bool {
	eop := &f[len(f)-1]
	if eop.RxError {
		p.release(f)
		p.st.add(cDropRxError, 1)
		return true
	}
	host := 0
	for i := range f {
		if f[i].Cookie&copyCookie != 0 {
			host++
		}
	}
	switch host {
	case 0:
		return p.deliverZeroCopy(f)
	case len(f):
		return p.deliverCopy(f)
	}
	// Part in guest buffers, part in host buffers: the guest ran dry in
	// the middle of a frame. Rare enough to drop.
	p.release(f)
	p.st.add(cDropRxNoGuestBuffer, 1)
	return true
}

// putRxHeader writes the virtio-net header for a received frame of
// buffers buffers, whose last completion is eop, into b (at least hdrLen
// bytes). It stores the fields one by one into b: building a
// vhost.NetHeader and encoding it cost a stack copy of the header per frame
// on the hot path.
func (p *Port) putRxHeader(b []byte, eop *ring.RxDone, buffers int) {
	b = b[:p.hdrLen]
	flags := uint8(0)
	if p.features&vhost.NetFGuestCsum != 0 && eop.L4Csum == ring.CsumGood && eop.IPCsum != ring.CsumBad {
		flags = vhost.NetHdrFDataValid
	}
	b[0] = flags
	b[1] = vhost.NetHdrGSONone
	// hdr_len, gso_size, csum_start and csum_offset: all zero.
	binary.LittleEndian.PutUint64(b[2:10], 0)
	if len(b) >= vhost.NetHeaderSize {
		binary.LittleEndian.PutUint16(b[10:12], uint16(buffers))
	}
}

func (p *Port) deliverZeroCopy(f []ring.RxDone) bool {
	r := &p.rx
	if len(f) > 1 && p.features&vhost.NetFMrgRxbuf == 0 {
		p.release(f)
		p.st.add(cDropRxTooBig, 1)
		return true
	}
	total := uint64(0)
	hl := p.hdrLen
	for i := range f {
		total += uint64(f[i].Len)
		if i > 0 {
			// Only the first buffer of a merged frame carries a header;
			// the others must hold data from their first byte.
			b := r.zcBuf[uint16(f[i].Cookie)]
			copy(b[:f[i].Len], b[hl:hl+int(f[i].Len)])
		}
	}
	head := uint16(f[0].Cookie)
	p.putRxHeader(r.zcBuf[head], &f[len(f)-1], len(f))
	p.rxv.Push(head, uint32(hl)+f[0].Len)
	for i := 1; i < len(f); i++ {
		p.rxv.Push(uint16(f[i].Cookie), f[i].Len)
	}
	p.st.add(cRxSpanMoves, uint64(len(f)-1))
	p.st.add(cRxZeroCopy, 1)
	p.st.add(cRxPackets, 1)
	p.st.add(cRxBytes, total)
	return true
}

// release takes the buffers of a dropped frame back: host buffers to the
// pool, guest chains to be posted again.
func (p *Port) release(f []ring.RxDone) {
	for i := range f {
		p.releaseCookie(f[i].Cookie)
	}
}

func (p *Port) releaseCookie(c ring.Cookie) {
	if c&copyCookie != 0 {
		p.putHostBuf(uint32(c))
		return
	}
	p.rx.recycle = append(p.rx.recycle, uint16(c))
}

// putHostBuf returns receive host buffer i to the pool.
func (p *Port) putHostBuf(i uint32) {
	p.rx.idx[0] = i
	p.pool.Put(p.rx.idx[:1])
	p.rx.hostOut--
}

// returnRecycled hands the guest chains taken back from dropped frames to
// the guest empty (see refill).
func (p *Port) returnRecycled() {
	r := &p.rx
	for _, h := range r.recycle {
		p.rxv.Push(h, 0)
	}
	r.recycle = r.recycle[:0]
}

// refill posts one burst of guest chains (zero-copy) or host buffers
// (copy) towards the NIC ring's capacity. It reports whether it posted a
// full burst with room left, i.e. whether calling again may post more.
func (p *Port) refill() bool {
	r := &p.rx
	room := min(r.capacity-r.posted, len(r.bufs))
	if room <= 0 {
		return false
	}
	k := 0
	switch {
	case !r.zeroCopy:
		k = p.collectHostBufs(0, room)
	case r.hostOut == 0:
		k = p.collectGuestBufs(room)
		if k == 0 && r.posted < len(r.bufs) && r.hostFallback {
			// The guest has nothing posted: keep a burst of host buffers
			// on the NIC so arriving frames wait in them.
			k = p.collectHostBufs(0, min(room, len(r.bufs)-r.posted))
		}
	default:
		// Host buffers are out (on the NIC, or holding frames that wait
		// for a guest buffer). Frames in guest chains posted behind them
		// are delivered only after the frames in host buffers, which
		// wait for guest chains from the avail ring: if every guest chain
		// went to the NIC, nothing would move again and the NIC would
		// drop everything from then on. So as many chains as host buffers
		// are out stay in the avail ring, where deliverCopy takes them
		// (one chain holds what one host buffer does: chains posted for
		// zero-copy take a whole NIC buffer), and only the chains beyond
		// that go to the NIC. Frames stay in order, none is dropped, and
		// the NIC keeps the guest's other buffers, so a burst arriving
		// while the host buffers are used up is not lost. A packed ring
		// only says whether a chain is available, not how many: it gets
		// none on the NIC until the host buffers are back, at worst the
		// fallback's burst of buffers for a moment. Chains taken back
		// from dropped frames may not be needed by the NIC then; they go
		// back to the guest empty, as they could be the very buffers a
		// frame in host buffers waits for.
		avail := p.rxv.Avail()
		switch {
		case avail > r.hostOut:
			k = p.collectGuestBufs(min(room, avail-r.hostOut))
		case avail == 0 && r.posted < len(r.bufs):
			p.returnRecycled()
			k = p.collectHostBufs(0, min(room, len(r.bufs)-r.posted))
		default:
			p.returnRecycled()
		}
	}
	if k == 0 {
		return false
	}
	m := p.rxq.Post(r.bufs[:k])
	r.posted += m
	for i := m; i < k; i++ {
		p.releaseCookie(r.bufs[i].Cookie)
	}
	return m == len(r.bufs) && r.posted < r.capacity
}

// collectGuestBufs fills r.bufs with up to room guest chains: first those
// taken back from dropped frames, then newly popped ones.
func (p *Port) collectGuestBufs(room int) int {
	r := &p.rx
	hl := p.hdrLen
	k := 0
	for k < room && len(r.recycle) > 0 {
		head := r.recycle[len(r.recycle)-1]
		r.recycle = r.recycle[:len(r.recycle)-1]
		r.bufs[k] = ring.Buf{IOVA: r.zcIOVA[head], Len: uint32(len(r.zcBuf[head]) - hl), Cookie: ring.Cookie(head)}
		k++
	}
	for k < room {
		ok, err := p.rxv.Pop(&r.chain)
		if !ok {
			if err != nil {
				p.st.add(cGuestErrors, 1)
			}
			break
		}
		c := &r.chain
		if err != nil || c.ReadLen > 0 || len(c.Segs) == 0 || len(c.Segs[0].Buf) < hl+int(r.bufLen) {
			// Not the layout zero-copy needs (too many pieces, or a first
			// piece too short): hand it back empty, counted.
			p.rxv.Push(c.Head, 0)
			p.st.add(cDropRxChainUnusable, 1)
			continue
		}
		b := c.Segs[0].Buf
		iova, ok := p.iova(b, &r.holds)
		if !ok {
			p.rxv.Push(c.Head, 0)
			p.st.add(cDropRxChainUnusable, 1)
			continue
		}
		r.zcBuf[c.Head] = b
		r.zcIOVA[c.Head] = iova + uint64(hl)
		r.bufs[k] = ring.Buf{IOVA: iova + uint64(hl), Len: uint32(len(b) - hl), Cookie: ring.Cookie(c.Head)}
		k++
	}
	return k
}

// quiesceRx stops the NIC RX queue and takes every buffer back: guest
// chains go to v's used ring with length 0 (if v is nil the front end
// dropped the ring and resumes from its used index), host buffers to the
// pool.
func (p *Port) quiesceRx(v *vhost.Virtqueue) error {
	r := &p.rx
	p.st.add(cRestarts, 1)
	if err := p.nic.StopRx(); err != nil {
		return err
	}
	cookies, err := p.nic.DrainRx(p.drain[:0])
	if err != nil {
		return err
	}
	give := func(c ring.Cookie) {
		if c&copyCookie != 0 {
			p.putHostBuf(uint32(c))
			return
		}
		if v != nil {
			v.Push(uint16(c), 0)
		}
		p.st.add(cDropRxQuiesce, 1)
	}
	for _, c := range cookies {
		give(c)
	}
	for i := range r.pending {
		give(r.pending[i].Cookie)
	}
	for _, h := range r.recycle {
		give(ring.Cookie(h))
	}
	if v != nil {
		v.Flush()
	}
	r.pending, r.recycle, r.posted, r.holds = r.pending[:0], r.recycle[:0], 0, 0
	p.rxRunning = false
	return nil
}
