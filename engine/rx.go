package engine

import (
	"encoding/binary"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vhost"
)

// rxState is the receive half of a Channel.
//
// Zero-copy: each guest RX chain is posted to the NIC as its data piece,
// the part after the virtio-net header; the NIC writes the frame there.
// Two layouts have one: the header and data in one writable piece (Linux
// with mergeable buffers or small buffers, DPDK), and the header alone in
// the first piece with the data in the second (Linux's big-packet layout,
// Windows). At completion the engine writes the header itself
// (num_buffers for a frame spanning several buffers, DATA_VALID from the
// NIC's checksum verdicts) and the chains go to the used ring, in the
// NIC's order.
//
// Copy: host buffers from the pool are posted instead, and a completed
// frame is copied into guest chains popped at that moment. A zero-copy channel
// also tops the NIC ring up with host buffers whenever the guest has none
// left to give and the NIC is about to run dry, so that a burst arriving
// while the guest is slow to return buffers waits in host memory (and is
// copied once the guest's buffers come back) instead of being dropped.
type rxState struct {
	zeroCopy   bool
	copyReason counter
	holds      uint64 // slot bits of the guest regions of buffers on the NIC
	need       int    // shortest data piece the NIC queue takes (min of its buffer size and RxMaxWrite)
	capacity   int
	posted     int
	// flowing: the last harvest took completions, i.e. frames are
	// arriving (see refill).
	flowing bool
	// hostOut counts host buffers taken from the pool for receiving and
	// not yet back: on the NIC or holding a frame in pending.
	hostOut int
	// hostFallback: host buffers fit the NIC's buffer size, so a
	// zero-copy channel can post them while the guest has none.
	hostFallback bool

	bufs    []ring.Buf
	idx     []uint32
	pending []ring.RxDone // harvested, not yet delivered, in ring order
	// frames counts the frames in pending (their EOP completions) not
	// yet delivered or dropped: Stats.RxPending.
	frames int
	// spill takes what the NIC completed beyond pending's capacity when
	// the channel stops (see quiesceRx).
	spill []ring.RxDone
	// delivered counts the completions at the start of pending whose
	// frames deliverPending has handed over (or dropped) in the current
	// pass and not yet removed: a quiesce in the middle of the pass (a
	// contained guest memory fault) must not give their buffers back twice.
	delivered int
	recycle   []uint16 // guest chains taken back from dropped frames, to post again
	// zc holds, per guest chain head, what the channel keeps of a chain it
	// posted zero-copy (see zcChain): one record per head, so that posting
	// and delivering a chain touch one or two cache lines, not one per
	// field.
	zc   []zcChain
	pops uint64

	chain  vhost.Chain
	chains []vhost.Chain
	// direct takes a burst of chains from vhost.PopDirect.
	direct []vhost.DirectBuf
	// held counts the chains at the start of chains that deliverCopy
	// took for the frame at the head of pending and keeps until the
	// guest has posted enough for the whole frame.
	held int
	hdr  [vhost.NetHeaderSize]byte
}

// zcChain is what the channel keeps of a guest RX chain posted zero-copy.
type zcChain struct {
	// hdr is the header piece (hdrLen bytes), data the piece the NIC
	// writes into, iova data's IOVA.
	hdr, data []byte
	iova      uint64
	// The guest physical addresses of those pieces, for the dirty log
	// (recorded whether or not logging is on: it can start while the
	// chain is on the NIC).
	hdrGPA, dataGPA uint64
	// popSeq is the pop count before the chain was popped, popPos the
	// ring position it was popped at, so that chains never written can be
	// given back by rewinding the ring (see giveBackRx).
	popSeq uint64
	popPos uint16
}

func (r *rxState) init(burst, capacity int) {
	r.capacity = capacity
	r.bufs = make([]ring.Buf, burst)
	r.idx = make([]uint32, burst)
	// Room for every buffer the NIC holds: harvesting all its completions
	// each poll, even while frames wait for guest buffers, keeps posted
	// equal to what the NIC can still fill, which refill tops up.
	r.pending = make([]ring.RxDone, 0, capacity+burst+2*maxRxMerge)
	r.spill = make([]ring.RxDone, burst)
	r.recycle = make([]uint16, 0, capacity+burst+maxRxMerge)
	r.chain.Segs = make([]vhost.Segment, 0, maxSegs)
	r.direct = make([]vhost.DirectBuf, burst)
	r.chains = make([]vhost.Chain, maxRxMerge)
	for i := range r.chains {
		r.chains[i].Segs = make([]vhost.Segment, 0, maxSegs)
	}
}

// startRx decides between zero-copy and copy from the guest's features and
// its first posted buffer, sizes the NIC's buffers (zeroCopyBufSize), and
// starts the NIC queue.
func (p *Channel) startRx() {
	p.negotiated()
	r := &p.rx
	mrg := p.features&vhost.NetFMrgRxbuf != 0
	maxWrite := p.nic.RxMaxWrite()
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
		ok, err := p.rxv.Pop(&r.chain)
		if !ok {
			if err != nil {
				p.st.add(cGuestErrors, 1) // the queue is broken now
			}
			return
		}
		p.rxv.Unpop(1)
		c := &r.chain
		_, data, ok := rxPieces(c, p.hdrLen, 1)
		room := len(data)
		switch {
		case !ok:
			r.copyReason = cCopyLayout
		case room >= maxWrite:
			// Any frame fits one buffer; the NIC is programmed for the
			// longest frame rounded up to its 1 KiB granularity and never
			// writes past the frame's end.
			nicBuf = min(16384, (maxWrite+1023)/1024*1024)
			r.zeroCopy = true
		case !mrg:
			// Without MRG_RXBUF a frame must fit one guest buffer.
			r.copyReason = cCopyFeatures
		case room < 1024 && int(c.WriteLen) >= p.hdrLen+1024:
			// Room enough, but in pieces the NIC cannot fill as one.
			r.copyReason = cCopyLayout
		case room < 1024:
			r.copyReason = cCopySmallBuffer
		default:
			nicBuf = min(16384, room/1024*1024)
			r.zeroCopy = true
		}
	}
	poolBuf := min(16384, p.pool.BufSize()/1024*1024)
	r.hostFallback = true
	if !r.zeroCopy {
		nicBuf = poolBuf
	} else {
		nicBuf, r.hostFallback = zeroCopyBufSize(nicBuf, maxWrite, poolBuf, mrg)
		if n := p.rxv.Size(); len(r.zc) < n {
			r.zc = make([]zcChain, n)
		}
	}
	r.need = min(nicBuf, maxWrite)
	if err := p.nic.StartRx(nicBuf); err != nil {
		p.failed = err
		return
	}
	p.rxRunning = true
}

// rxPieces finds where in guest RX chain c the virtio-net header (hl bytes)
// and the frame go for zero copy: header and data in the first piece, or
// the header alone in the first piece and the data in the second. The data
// piece must hold at least need bytes.
func rxPieces(c *vhost.Chain, hl, need int) (hdr, data []byte, ok bool) {
	if c.ReadLen > 0 || len(c.Segs) == 0 {
		return nil, nil, false
	}
	b := c.Segs[0].Buf
	switch {
	case len(b) >= hl+need:
		return b[:hl:hl], b[hl:], true
	case len(b) == hl && len(c.Segs) > 1 && len(c.Segs[1].Buf) >= need:
		return b, c.Segs[1].Buf, true
	}
	return nil, nil, false
}

// zeroCopyBufSize sizes the NIC's receive buffers for a zero-copy guest
// whose buffers take guestBuf bytes of frame (a multiple of 1024), and says
// whether the channel's host buffers (poolBuf bytes, a multiple of 1024) can
// stand in for guest buffers while the guest has none posted: the NIC
// takes buffers of its buffer size or of the longest frame, whichever is
// less.
//
// The size is capped at the longest frame rounded up to 1 KiB: the NIC
// never writes more into one buffer, so a larger size gains nothing (a
// 4 KiB guest buffer takes a 1518-byte frame whole either way) and only
// locks the host buffers out. A guest with MRG_RXBUF whose frames are
// larger than a host buffer (jumbo MTU) gets buffers of the host buffers'
// size: its frames span a few buffers, which costs a move of the later
// buffers' data per frame, but the fallback keeps frames that arrive while
// it is dry. Without MRG_RXBUF a frame must fit one guest buffer; then the
// guest's size stays and there is no fallback when host buffers are
// shorter than the longest frame (the NIC holds arriving frames in its
// FIFO, and drops them when that fills, while the guest has nothing
// posted).
func zeroCopyBufSize(guestBuf, maxFrame, poolBuf int, mrg bool) (nicBuf int, hostFallback bool) {
	nicBuf = min(guestBuf, (maxFrame+1023)/1024*1024)
	if nicBuf > poolBuf && mrg {
		nicBuf = poolBuf
	}
	return nicBuf, min(nicBuf, maxFrame) <= poolBuf
}

// pollRx harvests, delivers and refills; it returns frames delivered.
func (p *Channel) pollRx() int {
	p.harvestRx()
	delivered := p.deliverPending()
	for p.refill() {
	}
	p.rxv.Flush()
	return delivered
}

// harvestRx takes the NIC's completions, a burst at a time, until it has
// none left (or pending is full, which only a frame longer than everything
// the guest could take does; deliverPending drops it).
func (p *Channel) harvestRx() {
	r := &p.rx
	r.flowing = false
	for {
		room := min(cap(r.pending)-len(r.pending), len(r.bufs))
		if room <= 0 {
			return
		}
		got := r.pending[len(r.pending) : len(r.pending)+room]
		n := p.rxq.Harvest(got)
		eops := 0
		for i := range got[:n] {
			eops += int(got[i].Flags & ring.RxFlagEOP) // bit 0: 1 per frame
		}
		p.st.add(cRxHarvested, uint64(eops))
		r.frames += eops
		r.pending = r.pending[:len(r.pending)+n]
		r.posted -= n
		r.flowing = r.flowing || n > 0
		if n < room {
			return
		}
	}
}

// deliverPending hands complete frames to the guest in order, stopping at
// a frame in host buffers while the guest has no buffer for it.
func (p *Channel) deliverPending() int {
	r := &p.rx
	start, n := 0, 0
	waiting := false
	// The common frame, one guest buffer written zero-copy while no
	// migration is under way, is delivered by deliverPlain, a run at a
	// time, not through a call of deliver per frame.
	plain := p.dev.DirtyLog() == nil && p.hdrLen == vhost.NetHeaderSize
	for start < len(r.pending) {
		if plain {
			k := p.deliverPlain(r.pending[start:])
			r.frames -= k
			start += k
			r.delivered = start
			n += k
			if start == len(r.pending) {
				break
			}
		}
		end := start
		for end < len(r.pending) && !r.pending[end].EOP() {
			end++
		}
		if end == len(r.pending) {
			break // the rest of the frame is still on the NIC
		}
		if !p.deliver(r.pending[start : end+1]) {
			waiting = true
			break
		}
		r.frames--
		start = end + 1
		r.delivered = start
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
		p.st.add(cRxHarvested, 1) // a frame with no EOP harvested yet
		start = len(r.pending)
	}
	k := copy(r.pending, r.pending[start:])
	r.pending, r.delivered = r.pending[:k], 0
	return n
}

// deliverPlain delivers the frames at the start of f that are each one
// guest buffer written zero-copy without error, and returns how many:
// deliverZeroCopy's work for them, less its loops, with the 12-byte
// virtio-net header written by the inlined putRxHeader12. The caller has
// checked that the header is 12 bytes and that no dirty log
// is on.
func (p *Channel) deliverPlain(f []ring.RxDone) int {
	r := &p.rx
	var bytes uint64
	i := 0
	for ; i < len(f); i++ {
		d := &f[i]
		if d.Flags&(ring.RxFlagEOP|ring.RxFlagError) != ring.RxFlagEOP || d.Cookie&copyCookie != 0 {
			break
		}
		head := uint16(d.Cookie)
		putRxHeader12(r.zc[head].hdr, p.rxHeaderFlags(d.Flags), 1)
		p.rxv.Push(head, vhost.NetHeaderSize+d.Len)
		bytes += uint64(d.Len)
	}
	p.st.add(cRxZeroCopy, uint64(i))
	p.st.add(cRxPackets, uint64(i))
	p.st.add(cRxBytes, bytes)
	return i
}

// deliver passes one frame (its completions, EOP last) to the guest. It
// reports false when the frame must wait for guest buffers.
func (p *Channel) deliver(f []ring.RxDone) bool {
	eop := &f[len(f)-1]
	if eop.RxError() {
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
// bytes), as two words built in registers (building a vhost.NetHeader and
// encoding it cost a stack copy of the header per frame). A header b
// already holds is not stored again, as DPDK's vhost does not store
// unchanged fields (ASSIGN_UNLESS_EQUAL): the guest's driver reads every
// header it receives, and a buffer's header is usually what it was the
// last time the buffer was used, so the line need not move to the poll
// core and back. In make bench-vhost's rxonly mode, where the back end
// alone writes the buffers, that took testpmd's time per packet from 39
// to 27 ns. Here the NIC writes the frame's first bytes into the same
// line, so what it saves with a card is not measured; the engine
// benchmark shows no cost.
func (p *Channel) putRxHeader(b []byte, eop *ring.RxDone, buffers int) {
	// flags (byte 0), gso_type NONE (byte 1), and hdr_len, gso_size,
	// csum_start, csum_offset all zero (bytes 2-9).
	lo := p.rxHeaderFlags(eop.Flags)
	if p.hdrLen >= vhost.NetHeaderSize {
		putRxHeader12(b, lo, buffers)
		return
	}
	b = b[:vhost.LegacyNetHeaderSize]
	if binary.LittleEndian.Uint64(b) != lo || binary.LittleEndian.Uint16(b[8:]) != 0 {
		binary.LittleEndian.PutUint64(b, lo)
		binary.LittleEndian.PutUint16(b[8:], 0)
	}
}

// putRxHeader12 is putRxHeader for the 12-byte header: flags word lo,
// num_buffers buffers. Small enough to be inlined into deliverPlain.
func putRxHeader12(b []byte, lo uint64, buffers int) {
	b = b[:vhost.NetHeaderSize]
	hi := uint32(buffers) << 16 // num_buffers (bytes 10-11)
	if binary.LittleEndian.Uint64(b) != lo || binary.LittleEndian.Uint32(b[8:]) != hi {
		binary.LittleEndian.PutUint64(b, lo)
		binary.LittleEndian.PutUint32(b[8:], hi)
	}
}

func (p *Channel) deliverZeroCopy(f []ring.RxDone) bool {
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
			// the others must hold data from their first byte, which is
			// where the header piece begins: move the data down over it.
			// (The pieces are adjacent in the one-piece layout, so the
			// same two copies serve both layouts.)
			z := &r.zc[uint16(f[i].Cookie)]
			hdr, data := z.hdr, z.data
			n := int(f[i].Len)
			k := copy(hdr[:min(hl, n)], data[:n])
			copy(data[:n-k], data[k:n])
		}
	}
	head := uint16(f[0].Cookie)
	p.putRxHeader(r.zc[head].hdr, &f[len(f)-1], len(f))
	if log := p.dev.DirtyLog(); log != nil {
		// The guest is being migrated: every page the NIC wrote (each
		// buffer's data piece up to its length, moved data included) and
		// the headers written here are marked before Flush publishes the
		// used entries.
		for i := range f {
			z := &r.zc[uint16(f[i].Cookie)]
			log.Mark(z.hdrGPA, uint64(len(z.hdr)))
			log.Mark(z.dataGPA, uint64(f[i].Len))
		}
	}
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
func (p *Channel) release(f []ring.RxDone) {
	for i := range f {
		p.markDropped(&f[i])
		p.releaseCookie(f[i].Cookie)
	}
}

// markDropped marks, while the guest is being migrated, what the NIC
// wrote into a guest buffer whose frame is dropped: the guest gets the
// buffer back unread, but its page changed all the same.
func (p *Channel) markDropped(d *ring.RxDone) {
	if log := p.dev.DirtyLog(); log != nil && d.Cookie&copyCookie == 0 && d.Len > 0 {
		log.Mark(p.rx.zc[uint16(d.Cookie)].dataGPA, uint64(d.Len))
	}
}

func (p *Channel) releaseCookie(c ring.Cookie) {
	if c&copyCookie != 0 {
		p.putHostBuf(uint32(c))
		return
	}
	p.rx.recycle = append(p.rx.recycle, uint16(c))
}

// putHostBuf returns receive host buffer i to the pool.
func (p *Channel) putHostBuf(i uint32) {
	p.rx.idx[0] = i
	p.pool.Put(p.rx.idx[:1])
	p.rx.hostOut--
}

// rxLowWater is how few empty buffers the NIC may hold, while frames are
// arriving, before a zero-copy channel whose guest has none to give tops the
// ring up with host buffers. Host buffers posted ahead of the guest's later
// buffers take frames that could have gone zero-copy, so the channel adds
// them only as the NIC nears running dry under traffic (or has nothing at
// all), a burst at a time: not while a guest is still filling its ring and
// nothing arrives. Harvesting every completion each poll keeps posted
// exact, so the NIC never waits on a full pending queue.
const rxLowWater = 32

// hostTopUp is how many host buffers a zero-copy channel adds to the NIC,
// which holds posted empty buffers, by rxLowWater's rule.
func (r *rxState) hostTopUp(posted int) int {
	low := min(rxLowWater, r.capacity)
	if !r.hostFallback || posted >= low || (posted > 0 && !r.flowing) {
		return 0
	}
	return low - posted
}

// refill posts one burst of guest chains (zero-copy) or host buffers
// (copy) towards the NIC ring's capacity. It reports whether it posted a
// full burst with room left, i.e. whether calling again may post more.
func (p *Channel) refill() bool {
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
		if n := r.hostTopUp(r.posted + k); k < room && n > 0 {
			// The guest has no more buffers posted: keep the NIC from
			// running dry with host buffers, where arriving frames wait.
			k = p.collectHostBufs(k, min(room-k, n))
		}
	default:
		// Host buffers are out (on the NIC, or holding frames that wait
		// for a guest buffer). Frames in guest chains posted behind them
		// are delivered only after the frames in host buffers, which
		// wait for guest chains: if every guest chain went to the NIC,
		// nothing would move again and the NIC would drop everything from
		// then on. So as many chains as host buffers are out stay with
		// the channel, in the avail ring or among those taken back from
		// dropped frames, where deliverCopy takes them (one chain holds
		// what one host buffer does: chains posted for zero-copy take a
		// whole NIC buffer), and only the chains beyond that go to the
		// NIC. Frames stay in order, none is dropped, and the NIC keeps
		// the guest's other buffers, so a burst arriving while the host
		// buffers are used up is not lost; while the guest has no chain
		// beyond those, the NIC gets more host buffers. A packed ring
		// only says whether a chain is available, not how many: it gets
		// none on the NIC until the host buffers are back, host buffers
		// meanwhile.
		have := r.held + len(r.recycle) + p.rxv.Avail()
		if have > r.hostOut {
			k = p.collectGuestBufs(min(room, have-r.hostOut))
		} else if n := r.hostTopUp(r.posted); n > 0 {
			k = p.collectHostBufs(0, min(room, n))
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

// popRx pops the next guest RX chain into c, noting where it was popped
// (see giveBackRx).
func (p *Channel) popRx(c *vhost.Chain) (bool, error) {
	r := &p.rx
	pos := p.rxv.AvailPos()
	ok, err := p.rxv.Pop(c)
	if ok && r.zeroCopy {
		z := &r.zc[c.Head]
		z.popPos, z.popSeq = pos, r.pops
		r.pops++
	}
	return ok, err
}

// collectGuestBufs fills r.bufs with up to room guest chains: first those
// taken back from dropped frames, then newly popped ones (those of one
// writable descriptor a burst at a time, see collectWritable).
func (p *Channel) collectGuestBufs(room int) int {
	r := &p.rx
	k := 0
	for k < room && len(r.recycle) > 0 {
		head := r.recycle[len(r.recycle)-1]
		r.recycle = r.recycle[:len(r.recycle)-1]
		z := &r.zc[head]
		r.bufs[k] = ring.Buf{IOVA: z.iova, Len: uint32(len(z.data)), Cookie: ring.Cookie(head)}
		k++
	}
	// PopDirect serves no ring while the dirty log is on (Pop records
	// what the device may write): no call per chain then.
	direct := p.rxv.DirtyLog() == nil
	for k < room {
		if direct {
			if k = p.collectWritable(k, room); k == room {
				break
			}
		}
		// The next chain is not a lone writable descriptor (or none is
		// available, or the ring is not one PopDirect serves).
		ok, err := p.popRx(&r.chain)
		if !ok {
			if err != nil {
				p.st.add(cGuestErrors, 1)
			}
			break
		}
		c := &r.chain
		hdr, data, usable := rxPieces(c, p.hdrLen, r.need)
		var iova uint64
		if usable && err == nil {
			iova, usable = p.iova(data, &r.holds)
		}
		if !usable || err != nil {
			// Not a layout zero copy can post (a piece too short, the
			// header split over pieces, memory not mapped): it has to go
			// back used, with length 0, as the chains popped after it may
			// be written before it could be rewound. Counted.
			p.rxv.Push(c.Head, 0)
			p.st.add(cDropRxChainUnusable, 1)
			continue
		}
		z := &r.zc[c.Head]
		z.hdr, z.data, z.iova = hdr, data, iova
		// rxPieces' layouts: the data right after the header in the first
		// piece, or the second piece.
		z.hdrGPA = c.Segs[0].GPA
		if len(c.Segs[0].Buf) >= p.hdrLen+r.need {
			z.dataGPA = c.Segs[0].GPA + uint64(p.hdrLen)
		} else {
			z.dataGPA = c.Segs[1].GPA
		}
		r.bufs[k] = ring.Buf{IOVA: iova, Len: uint32(len(data)), Cookie: ring.Cookie(c.Head)}
		k++
	}
	return k
}

// collectWritable is collectGuestBufs for chains of one writable
// descriptor, popped a burst at a time (vhost.PopDirect): header and
// data in the one piece, as rxPieces' first layout. It fills r.bufs from
// k up to room and returns the new k.
func (p *Channel) collectWritable(k, room int) int {
	r := &p.rx
	pos := p.rxv.AvailPos()
	n := p.rxv.PopDirect(r.direct[:room-k], true)
	hl := p.hdrLen
	for i := range r.direct[:n] {
		w := &r.direct[i]
		z := &r.zc[w.Head]
		z.popPos, z.popSeq = pos+uint16(i), r.pops
		r.pops++
		var iova, slot uint64
		usable := len(w.Buf) >= hl+r.need
		if usable {
			if iova, slot, usable = p.view.hinted(w.Buf[hl:]); !usable {
				iova, slot, usable = p.view.iovaOf(w.Buf[hl:])
			}
			r.holds |= slot
		}
		if !usable {
			// As in collectGuestBufs: back used, with length 0.
			p.rxv.Push(w.Head, 0)
			p.st.add(cDropRxChainUnusable, 1)
			continue
		}
		z.hdr, z.data, z.iova = w.Buf[:hl:hl], w.Buf[hl:], iova
		z.hdrGPA, z.dataGPA = w.GPA, w.GPA+uint64(hl)
		r.bufs[k] = ring.Buf{IOVA: iova, Len: uint32(len(w.Buf) - hl), Cookie: ring.Cookie(w.Head)}
		k++
	}
	return k
}

// recycledChain makes c describe guest chain head, taken back from a
// dropped frame, for deliverCopy: its header piece, then its data piece.
func (p *Channel) recycledChain(c *vhost.Chain, head uint16) {
	r := &p.rx
	c.Head = head
	z := &r.zc[head]
	c.Segs = append(c.Segs[:0],
		vhost.Segment{GPA: z.hdrGPA, Buf: z.hdr, Writable: true},
		vhost.Segment{GPA: z.dataGPA, Buf: z.data, Writable: true})
	c.ReadLen, c.WriteLen = 0, uint32(len(z.hdr)+len(z.data))
}

// quiesceRx stops the NIC RX queue and takes every buffer back: host
// buffers to the pool, guest chains to v (see giveBackRx; if v is nil the
// front end dropped the ring and resumes from its own index).
func (p *Channel) quiesceRx(v *vhost.Virtqueue) error {
	r := &p.rx
	p.st.add(cRestarts, 1)
	if err := p.nic.StopRx(); err != nil {
		return err
	}
	// What the NIC wrote before it stopped is a frame lost; the rest of
	// its buffers are empty. Tell them apart before draining.
	p.harvestRx()
	// Every guest chain the channel holds joins recycle: empty ones from the
	// NIC, and those of frames harvested but never delivered.
	take := func(c ring.Cookie) {
		if c&copyCookie != 0 {
			p.putHostBuf(uint32(c))
			return
		}
		r.recycle = append(r.recycle, uint16(c))
	}
	pending := r.pending[r.delivered:]
	lost, cut := r.frames, len(pending) > 0 && !pending[len(pending)-1].EOP()
	for i := range pending {
		p.markDropped(&pending[i])
		take(pending[i].Cookie)
	}
	// pending may be full of frames waiting for the guest: the NIC's
	// completions beyond it were never harvested, and draining them as
	// empty buffers would lose their frames without a count.
	for {
		n := p.rxq.Harvest(r.spill)
		for i := range r.spill[:n] {
			if r.spill[i].EOP() {
				lost++
				p.st.add(cRxHarvested, 1)
			}
			cut = !r.spill[i].EOP()
			p.markDropped(&r.spill[i])
			take(r.spill[i].Cookie)
		}
		if n < len(r.spill) {
			break
		}
	}
	if cut {
		// The start of a frame the stop cut short: a frame too.
		lost++
		p.st.add(cRxHarvested, 1)
	}
	p.st.add(cDropRxQuiesce, uint64(lost))
	r.frames = 0
	cookies, err := p.nic.DrainRx(p.drain[:0])
	if err != nil {
		return err
	}
	for _, c := range cookies {
		take(c)
	}
	// The chains kept for a pending frame were never written either.
	for i := range r.held {
		r.recycle = append(r.recycle, r.chains[i].Head)
	}
	r.held = 0
	if v != nil {
		p.giveBackRx(v)
		v.Flush()
	}
	r.pending, r.delivered, r.recycle, r.posted, r.holds = r.pending[:0], 0, r.recycle[:0], 0, 0
	p.rxRunning = false
	return nil
}

// giveBackRx returns the guest chains in recycle, none of them written, to
// v. When they are exactly the chains popped last, v is rewound to where
// the first of them was popped: the guest gets them back as still
// available, with no used entry (a driver takes a used entry of length 0
// for a received packet; Linux counts a length error for each). Otherwise
// (a chain popped after them was used: deliverCopy pops chains later than
// those on the NIC) the ring cannot be rewound past that chain, and they go
// back as used entries of length 0.
func (p *Channel) giveBackRx(v *vhost.Virtqueue) {
	r := &p.rx
	if len(r.recycle) == 0 {
		return
	}
	if r.zeroCopy {
		first := r.recycle[0]
		for _, h := range r.recycle {
			if r.zc[h].popSeq < r.zc[first].popSeq {
				first = h
			}
		}
		if f := &r.zc[first]; r.pops-f.popSeq == uint64(len(r.recycle)) {
			v.RewindTo(f.popPos)
			r.pops = f.popSeq
			p.st.add(cRxRewound, uint64(len(r.recycle)))
			return
		}
	}
	for _, h := range r.recycle {
		v.Push(h, 0)
	}
}
