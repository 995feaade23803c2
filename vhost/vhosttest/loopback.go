package vhosttest

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/zcnet/zcnet/internal/checksum"
	"github.com/zcnet/zcnet/internal/memfault"
	"github.com/zcnet/zcnet/vhost"
)

// Loopback is a test device mode: every frame the guest transmits on TX
// queue n comes back on RX queue n with source and destination MAC
// swapped, copied through the memory table. It also serves the control
// queue. Poll is a pollmode.Task method: run it on an lcore or call it from
// a test.
type Loopback struct {
	d     *vhost.Device
	burst int

	tx      vhost.Chain
	rx      []vhost.Chain
	written []uint32
	// txd and rxd take the chains pollDirect pops a burst at a time.
	txd, rxd [loopbackBurst]vhost.DirectBuf

	// copies are the burst's frames whose copy copyContiguous left for
	// the end of the poll (writeCopies).
	copies  [loopbackBurst]pendingCopy
	ncopies int

	counts loopbackCounters

	// faulted: guest memory went away in session faultSession, which
	// must end before the loopback touches the rings again.
	faulted      bool
	faultSession uint64
}

type loopbackCounters struct {
	frames, dropped, noRxBuffer, faults atomic.Uint64
}

// LoopbackCounters are a loopback's totals.
type LoopbackCounters struct {
	Frames     uint64 // frames returned to the guest
	Dropped    uint64 // frames dropped (RX disabled, malformed, too big, GSO)
	NoRxBuffer uint64 // polls that stopped because the guest posted too few RX buffers
	// GuestMemoryFaults counts polls cut short by guest memory going
	// away (each dropped the session).
	GuestMemoryFaults uint64
}

const (
	loopbackBurst     = 32
	loopbackMaxSegs   = 64 // per chain
	loopbackMaxMerged = 64 // RX chains per packet with MRG_RXBUF
	minFrame          = 14 // Ethernet header
)

// NewLoopback returns the loopback poller of d.
func NewLoopback(d *vhost.Device) *Loopback {
	l := &Loopback{d: d, burst: loopbackBurst,
		tx:      vhost.Chain{Segs: make([]vhost.Segment, 0, loopbackMaxSegs)},
		rx:      make([]vhost.Chain, loopbackMaxMerged),
		written: make([]uint32, loopbackMaxMerged),
	}
	for i := range l.rx {
		l.rx[i].Segs = make([]vhost.Segment, 0, loopbackMaxSegs)
	}
	return l
}

// Name labels the task.
func (l *Loopback) Name() string { return "vhost-loopback:" + l.d.Name() }

// Counters returns the loopback's totals.
func (l *Loopback) Counters() LoopbackCounters {
	return LoopbackCounters{Frames: l.counts.frames.Load(), Dropped: l.counts.dropped.Load(), NoRxBuffer: l.counts.noRxBuffer.Load(),
		GuestMemoryFaults: l.counts.faults.Load()}
}

// Poll moves up to one burst of frames per queue pair and serves the
// control queue. It returns the number of frames and commands handled.
//
// A fault on guest memory the front end took away drops the session (see
// Channel.contain in package engine for the zero-copy engine's version); the
// loopback idles until the next session.
func (l *Loopback) Poll() (n int) {
	l.d.LockDataPath()
	defer l.d.UnlockDataPath()
	if l.faulted {
		if l.d.Session() == l.faultSession {
			return 0
		}
		l.faulted = false
	}
	prev := memfault.Enable()
	defer func() {
		memfault.Restore(prev)
		if v := recover(); v != nil {
			f, ok := memfault.FromPanic(v)
			if !ok || !l.d.InGuestMemory(f.Addr) {
				panic(v)
			}
			l.faulted, l.faultSession = true, l.d.Session()
			l.ncopies = 0
			l.counts.faults.Add(1)
			l.d.Drop(fmt.Errorf("%w (loopback: %w)", vhost.ErrGuestMemoryFault, f))
			n = 0
		}
	}()
	n = l.d.PollControl()
	for p := range l.d.QueuePairs() {
		n += l.pollPair(p)
	}
	return n
}

func (l *Loopback) pollPair(p int) int {
	tx := l.d.TxQueue(p)
	if tx == nil {
		return 0
	}
	rx := l.d.RxQueue(p)
	feat := l.d.Features()
	hdrLen := vhost.NetHeaderLen(feat)
	mrg := feat&vhost.NetFMrgRxbuf != 0
	// While the front end migrates the guest, what is written must be
	// logged after it is written and before the used entries are
	// published: such a poll copies each frame at once.
	var log *vhost.DirtyLog
	if rx != nil {
		log = rx.DirtyLog()
	}
	// Counted locally and published once per call: an atomic add per
	// frame would cost a locked instruction each.
	n, frames, dropped, noRxBuffer := 0, uint64(0), uint64(0), uint64(0)
	if rx != nil && log == nil {
		n = l.pollDirect(tx, rx, hdrLen, feat)
		frames = uint64(n)
	}
	for n < l.burst {
		ok, err := tx.Pop(&l.tx)
		if !ok {
			break
		}
		n++
		if err != nil || rx == nil || l.tx.ReadLen < uint32(hdrLen+minFrame) {
			tx.Push(l.tx.Head, 0) // RX disabled or unusable frame: drain and drop
			dropped++
			continue
		}
		need := l.tx.ReadLen // header plus frame, as it will be on RX
		nrx, room, bad := 0, uint32(0), false
		for room < need && nrx < len(l.rx) {
			ok, err := rx.Pop(&l.rx[nrx])
			if !ok {
				break
			}
			nrx++
			if err != nil {
				bad = true // chain with too many segments: give it back empty
				break
			}
			room += l.rx[nrx-1].WriteLen
			if !mrg {
				break
			}
		}
		switch {
		case bad || (room < need && !mrg && nrx == 1) || (room < need && nrx == len(l.rx)):
			// Buffers too small for the frame: drop it, return the buffers
			// untouched (a zero-length buffer is a driver-visible error,
			// but so is a frame that cannot be delivered), in the order
			// they were popped, as IN_ORDER requires.
			for i := range nrx {
				rx.Push(l.rx[i].Head, 0)
			}
			tx.Push(l.tx.Head, 0)
			dropped++
			continue
		case room < need:
			// Not enough RX buffers posted yet: leave both for next time.
			rx.Unpop(nrx)
			tx.Unpop(1)
			n--
			noRxBuffer++
		default:
			if l.copyFrame(l.rx[:nrx], hdrLen, feat, log == nil) {
				for i := range nrx {
					if log != nil {
						log.MarkSegments(l.rx[i].Segs, int(l.rx[i].ReadLen), int(l.written[i]))
					}
					rx.Push(l.rx[i].Head, l.written[i])
				}
				frames++
			} else {
				rx.Unpop(nrx)
				dropped++
			}
			tx.Push(l.tx.Head, 0)
			continue
		}
		break
	}
	l.writeCopies(hdrLen)
	// RX first: the guest is polling for these frames, while the TX
	// completions only let it reuse buffers.
	if rx != nil {
		rx.Flush()
	}
	tx.Flush()
	if frames != 0 {
		l.counts.frames.Add(frames)
	}
	if dropped != 0 {
		l.counts.dropped.Add(dropped)
	}
	if noRxBuffer != 0 {
		l.counts.noRxBuffer.Add(noRxBuffer)
	}
	return n
}

// pollDirect moves the burst's common frames: each in one readable
// descriptor (header and frame) going to one writable descriptor that
// holds it, both popped a burst at a time (vhost.PopDirect), with a
// header copyContiguous passes on. It stops at the first frame that is
// anything else, gives back what it popped from there on, and returns the
// frames it moved; pollPair's loop takes the rest.
func (l *Loopback) pollDirect(tx, rx *vhost.Virtqueue, hdrLen int, feat uint64) int {
	nt := tx.PopDirect(l.txd[:l.burst], false)
	if nt == 0 {
		return 0
	}
	nr := rx.PopDirect(l.rxd[:nt], true)
	m := 0
	for ; m < min(nt, nr) && l.ncopies < len(l.copies); m++ {
		t, r := &l.txd[m], &l.rxd[m]
		need := len(t.Buf)
		if need < hdrLen+minFrame || len(r.Buf) < need || feat&hostOffloads != 0 && !headerPassesAsIs(t.Buf, feat) {
			break
		}
		c := &l.copies[l.ncopies]
		c.out, c.src, c.ownHeader = r.Buf[:need], t.Buf, feat&hostOffloads != 0
		l.ncopies++
		rx.Push(r.Head, uint32(need))
		tx.Push(t.Head, 0)
	}
	rx.Unpop(nr - m)
	tx.Unpop(nt - m)
	return m
}

// copyFrame copies l.tx's frame into chains with MACs swapped and the
// header adapted to what the guest accepts; with later it may leave the
// copy of a contiguous frame to writeCopies. It reports false for a frame
// the loopback cannot deliver (GSO to a guest without GUEST_TSO).
func (l *Loopback) copyFrame(chains []vhost.Chain, hdrLen int, feat uint64, later bool) bool {
	if len(chains) == 1 {
		// A driver without host offloads cannot ask for anything in its
		// header (virtio 1.2, 5.1.6.2: flags 0 without VIRTIO_NET_F_CSUM,
		// gso_type NONE without a HOST_ GSO feature), so it is not read,
		// as DPDK's vhost does not read it: the driver's core has just
		// written that cache line, and reading it costs a transfer.
		if feat&hostOffloads == 0 {
			if l.copyContiguous(chains, hdrLen, nil, later) {
				return true
			}
		} else if b := l.tx.Segs[0].Buf; headerPassesAsIs(b, feat) && l.copyContiguous(chains, hdrLen, b, later) {
			return true
		}
	}
	var hb [vhost.NetHeaderSize]byte
	r := segReader{segs: l.tx.Segs}
	r.read(hb[:hdrLen])
	h, _ := vhost.DecodeNetHeader(hb[:], hdrLen)
	frameLen := int(l.tx.ReadLen) - hdrLen

	patchAt := -1 // frame offset of a checksum the device must finish
	var csum [2]byte
	if h.GSOType != vhost.NetHdrGSONone {
		var want uint64 = vhost.NetFGuestTSO4
		if h.GSOType&^vhost.NetHdrGSOECN == vhost.NetHdrGSOTCPv6 {
			want = vhost.NetFGuestTSO6
		}
		if feat&want == 0 || feat&vhost.NetFGuestCsum == 0 {
			return false // software segmentation is not implemented
		}
	} else if h.Flags&vhost.NetHdrFNeedsCsum != 0 && feat&vhost.NetFGuestCsum == 0 {
		start, at := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)
		if start >= frameLen || at+2 > frameLen {
			return false
		}
		binary.BigEndian.PutUint16(csum[:], ^sumSegments(l.tx.Segs, hdrLen+start, frameLen-start))
		patchAt = at
		h.Flags &^= vhost.NetHdrFNeedsCsum
		h.CsumStart, h.CsumOffset = 0, 0
	}
	if feat&vhost.NetFGuestCsum == 0 {
		h.Flags &^= vhost.NetHdrFNeedsCsum | vhost.NetHdrFDataValid
	}
	h.NumBuffers = uint16(len(chains))

	if patchAt < 0 {
		_, _ = h.Encode(hb[:], hdrLen)
		if l.copyContiguous(chains, hdrLen, hb[:hdrLen], later) {
			return true
		}
	}
	w := chainWriter{chains: chains, written: l.written[:len(chains)]}
	clear(w.written)
	_, _ = h.Encode(hb[:], hdrLen)
	w.write(hb[:hdrLen])

	var mac [12]byte
	r.read(mac[:])
	var swapped [12]byte
	copy(swapped[:6], mac[6:])
	copy(swapped[6:], mac[:6])
	w.write(swapped[:])
	pos := 12
	if patchAt >= pos {
		r.copyTo(&w, patchAt-pos)
		w.write(csum[:])
		r.skip(2)
		pos = patchAt + 2
	}
	r.copyTo(&w, frameLen-pos)
	return true
}

// hostOffloads are the features that let a driver ask for something in a
// transmitted frame's virtio-net header.
const hostOffloads = vhost.NetFCsum | vhost.NetFHostTSO4 | vhost.NetFHostTSO6 | vhost.NetFHostECN | vhost.NetFHostUFO

// headerPassesAsIs reports whether the virtio-net header at the start of
// b (the first TX segment) reaches the guest unchanged but for
// num_buffers: no GSO, and either no flags or a guest that accepts
// NEEDS_CSUM and DATA_VALID (GUEST_CSUM). That is what copyFrame's decode,
// adapt and encode would produce, without the per-frame decode and encode.
func headerPassesAsIs(b []byte, feat uint64) bool {
	return len(b) >= 2 && b[1] == vhost.NetHdrGSONone && (b[0] == 0 || feat&vhost.NetFGuestCsum != 0)
}

// copyContiguous is copyFrame's fast path for the common case, a frame in
// one TX buffer going to one RX buffer. The header delivered is hdr but
// for num_buffers (nil: all zero). With later, and hdr nil or the guest's
// own header, the copy is left to writeCopies at the end of the poll while
// the burst has room. It reports false, having written nothing, when the
// frame or the RX space is split.
func (l *Loopback) copyContiguous(chains []vhost.Chain, hdrLen int, hdr []byte, later bool) bool {
	if len(chains) != 1 || len(l.tx.Segs) == 0 || len(chains[0].Segs) == 0 {
		return false
	}
	// Pointers, not Segment copies: see setSegment.
	src, dst := &l.tx.Segs[0], &chains[0].Segs[0]
	need := int(l.tx.ReadLen)
	if src.Writable || len(src.Buf) != need || !dst.Writable || len(dst.Buf) < need {
		return false
	}
	l.written[0] = uint32(need)
	own := hdr != nil && &hdr[0] == &src.Buf[0]
	if later && (hdr == nil || own) && l.ncopies < len(l.copies) {
		c := &l.copies[l.ncopies]
		c.out, c.src, c.ownHeader = dst.Buf[:need], src.Buf, own
		l.ncopies++
		return true
	}
	out := dst.Buf[:need]
	copySwapped(out[hdrLen:], src.Buf[hdrLen:])
	lo, hi := headerWords(hdr)
	setHeader(out[:hdrLen], lo, hi)
	return true
}

// pendingCopy is a frame copyContiguous checked and left to writeCopies:
// out and src include the header; ownHeader delivers the guest's header
// (see headerPassesAsIs), else an all-zero one.
type pendingCopy struct {
	out, src  []byte
	ownHeader bool
}

// writeCopies writes the frames copyContiguous left for later. One tight
// loop of copies lets the CPU fetch the guest's cache lines for several
// frames at once; interleaved with popping and pushing, each frame's
// stores waited for its lines alone (DPDK's vhost batches small copies
// for the same reason).
func (l *Loopback) writeCopies(hdrLen int) {
	for i := range l.copies[:l.ncopies] {
		c := &l.copies[i]
		copySwapped(c.out[hdrLen:], c.src[hdrLen:])
		var lo uint64
		var hi uint32
		if c.ownHeader {
			lo, hi = headerWords(c.src)
		}
		setHeader(c.out[:hdrLen], lo, hi)
	}
	l.ncopies = 0
}

// copySwapped copies frame in (at least 12 bytes) into out with its MAC
// addresses swapped: the addresses as two words, the rest with one copy
// (copy calls for the 6-byte pieces cost more than the frame's copy).
func copySwapped(out, in []byte) {
	x := binary.LittleEndian.Uint64(in)     // destination, 2 bytes of source
	y := binary.LittleEndian.Uint32(in[8:]) // the other 4 bytes of source
	copy(out[12:], in[12:])
	binary.LittleEndian.PutUint64(out, x>>48|uint64(y)<<16|x<<48)
	binary.LittleEndian.PutUint32(out[8:], uint32(x>>16))
}

// headerWords reads the first 10 bytes of a virtio-net header (all but
// num_buffers) from h, nil or at least that long, as two words.
func headerWords(h []byte) (lo uint64, hi uint32) {
	if h == nil {
		return 0, 0
	}
	return binary.LittleEndian.Uint64(h), uint32(binary.LittleEndian.Uint16(h[8:]))
}

// setHeader stores the header of words lo and hi (headerWords), with
// num_buffers 1, in b (10 or 12 bytes) unless b already holds it. The
// guest's driver reads the header of every frame it receives, so its core
// shares that cache line; storing the same bytes again would take the line
// away from it, and it would have to fetch it back. DPDK's vhost and
// virtio drivers leave unchanged header fields unwritten for the same
// reason (ASSIGN_UNLESS_EQUAL), so when both ends do, a buffer's header
// line stays shared and never moves. Words, not arrays: stores to the
// stack here would queue behind the stores into guest buffers.
func setHeader(b []byte, lo uint64, hi uint32) {
	if len(b) >= vhost.NetHeaderSize {
		hi |= 1 << 16 // num_buffers: one chain
		if binary.LittleEndian.Uint64(b) != lo || binary.LittleEndian.Uint32(b[8:]) != hi {
			binary.LittleEndian.PutUint64(b, lo)
			binary.LittleEndian.PutUint32(b[8:], hi)
		}
		return
	}
	if binary.LittleEndian.Uint64(b) != lo || binary.LittleEndian.Uint16(b[8:]) != uint16(hi) {
		binary.LittleEndian.PutUint64(b, lo)
		binary.LittleEndian.PutUint16(b[8:], uint16(hi))
	}
}

// segReader reads a chain's readable bytes in order.
type segReader struct {
	segs []vhost.Segment
	si   int
	off  int
}

// next returns the next contiguous piece of at most max bytes.
func (r *segReader) next(max int) []byte {
	for r.si < len(r.segs) {
		b := r.segs[r.si].Buf[r.off:]
		if len(b) == 0 {
			r.si++
			r.off = 0
			continue
		}
		if len(b) > max {
			b = b[:max]
		}
		r.off += len(b)
		return b
	}
	return nil
}

func (r *segReader) read(dst []byte) {
	for n := 0; n < len(dst); {
		b := r.next(len(dst) - n)
		if b == nil {
			return
		}
		n += copy(dst[n:], b)
	}
}

func (r *segReader) skip(n int) {
	for n > 0 {
		b := r.next(n)
		if b == nil {
			return
		}
		n -= len(b)
	}
}

func (r *segReader) copyTo(w *chainWriter, n int) {
	for n > 0 {
		b := r.next(n)
		if b == nil {
			return
		}
		w.write(b)
		n -= len(b)
	}
}

// chainWriter fills the writable space of several chains in order (a
// mergeable RX packet), counting the bytes written into each.
type chainWriter struct {
	chains  []vhost.Chain
	written []uint32
	ci      int
}

func (w *chainWriter) write(p []byte) {
	for len(p) > 0 && w.ci < len(w.chains) {
		c := &w.chains[w.ci]
		off := w.written[w.ci]
		if off == c.WriteLen {
			w.ci++
			continue
		}
		k := min(int(c.WriteLen-off), len(p))
		// Readable segments come first; skipping ReadLen bytes lands on
		// the writable ones.
		vhost.Scatter(c.Segs, int(c.ReadLen+off), p[:k])
		w.written[w.ci] += uint32(k)
		p = p[k:]
	}
}

// sumSegments is the Internet checksum (RFC 1071) of n bytes of segs
// starting skip bytes in, folded but not complemented. A segment may end
// at an odd offset of the region; the next one's first byte is then the
// low half of a 16-bit word and is added on its own, so checksum.Add
// always starts at an even offset.
func sumSegments(segs []vhost.Segment, skip, n int) uint16 {
	r := segReader{segs: segs}
	r.skip(skip)
	var sum uint64
	odd := false
	for n > 0 {
		b := r.next(n)
		if b == nil {
			break
		}
		n -= len(b)
		if odd {
			sum += uint64(b[0])
			b = b[1:]
		}
		sum = checksum.Add(sum, b)
		odd = len(b)%2 == 1
	}
	return checksum.Fold(sum)
}
