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
	// Counted locally and published once per call: an atomic add per
	// frame would cost a locked instruction each.
	n, frames, dropped, noRxBuffer := 0, uint64(0), uint64(0), uint64(0)
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
			if l.copyFrame(l.rx[:nrx], hdrLen, feat) {
				// While the front end migrates the guest, what was
				// written is logged before the used entries are published.
				log := rx.DirtyLog()
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

// copyFrame copies l.tx's frame into chains with MACs swapped and the
// header adapted to what the guest accepts. It reports false for a frame
// the loopback cannot deliver (GSO to a guest without GUEST_TSO).
func (l *Loopback) copyFrame(chains []vhost.Chain, hdrLen int, feat uint64) bool {
	if len(chains) == 1 && headerPassesAsIs(l.tx.Segs[0].Buf, feat) && l.copyContiguous(chains, hdrLen, nil) {
		return true
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

	if patchAt < 0 && l.copyContiguous(chains, hdrLen, &h) {
		return true
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

// headerPassesAsIs reports whether the virtio-net header at the start of
// b (the first TX segment) reaches the guest unchanged but for
// num_buffers: no GSO, and either no flags or a guest that accepts
// NEEDS_CSUM and DATA_VALID (GUEST_CSUM). That is what copyFrame's decode,
// adapt and encode would produce, without the per-frame decode and encode.
func headerPassesAsIs(b []byte, feat uint64) bool {
	return len(b) >= 2 && b[1] == vhost.NetHdrGSONone && (b[0] == 0 || feat&vhost.NetFGuestCsum != 0)
}

// copyContiguous is copyFrame's fast path for the common case, a frame in
// one TX buffer going to one RX buffer: one copy, then the header and the
// MAC addresses rewritten in place. A nil h keeps the guest's header bytes
// and only sets num_buffers (see headerPassesAsIs). It reports false,
// having written nothing, when the frame or the RX space is split.
func (l *Loopback) copyContiguous(chains []vhost.Chain, hdrLen int, h *vhost.NetHeader) bool {
	if len(chains) != 1 || len(l.tx.Segs) == 0 || len(chains[0].Segs) == 0 {
		return false
	}
	// Pointers, not Segment copies: see setSegment.
	src, dst := &l.tx.Segs[0], &chains[0].Segs[0]
	need := int(l.tx.ReadLen)
	if src.Writable || len(src.Buf) != need || !dst.Writable || len(dst.Buf) < need {
		return false
	}
	out := dst.Buf[:need]
	copy(out, src.Buf)
	if h != nil {
		_, _ = h.Encode(out, hdrLen)
	} else if hdrLen >= vhost.NetHeaderSize {
		binary.LittleEndian.PutUint16(out[10:], 1) // num_buffers: one chain
	}
	in := src.Buf[hdrLen : hdrLen+12]
	mac := out[hdrLen : hdrLen+12]
	copy(mac[:6], in[6:])
	copy(mac[6:], in[:6])
	l.written[0] = uint32(need)
	return true
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
