package engine

import (
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vhost"
)

// The copy path: frames move through host buffers from the channel's pool,
// which is DMA-mapped for the NIC, and are copied to or from guest memory
// by the CPU. It serves guests zero-copy cannot (see CopyReasons), the
// moments a zero-copy guest has no receive buffer posted, and benchmarks
// (ChannelConfig.ForceCopy).

// collectHostBufs puts up to n host buffers into r.bufs from index k on
// and returns the new count.
func (p *Channel) collectHostBufs(k, n int) int {
	r := &p.rx
	got := p.pool.Get(r.idx[:n])
	r.hostOut += got
	size := uint32(p.pool.BufSize())
	for _, i := range r.idx[:got] {
		r.bufs[k] = ring.Buf{IOVA: p.pool.IOVA(i), Len: size, Cookie: copyCookie | ring.Cookie(i)}
		k++
	}
	return k
}

// deliverCopy copies a frame held in host buffers into guest chains: those
// kept from an earlier attempt first, then those the channel took back from
// dropped frames (they are the guest's buffers in hand, and the refill
// leaves them for this), then chains popped now. It reports false (leaving
// the frame pending) when the guest has not posted enough buffers yet; the
// chains taken so far are kept for the next attempt (rx.held) rather than
// given back to the ring: a chain popped in between may already have gone
// back used (one the copy cannot write into), and a ring is never rewound
// past a used chain.
func (p *Channel) deliverCopy(f []ring.RxDone) bool {
	r := &p.rx
	hl := p.hdrLen
	mrg := p.features&vhost.NetFMrgRxbuf != 0
	total := 0
	for i := range f {
		total += int(f[i].Len)
	}
	need := uint32(hl + total)
	n, room := r.held, uint32(0)
	for i := range n {
		room += r.chains[i].WriteLen
	}
	for room < need && n < len(r.chains) && (mrg || n == 0) && len(r.recycle) > 0 {
		p.recycledChain(&r.chains[n], r.recycle[len(r.recycle)-1])
		r.recycle = r.recycle[:len(r.recycle)-1]
		room += r.chains[n].WriteLen
		n++
	}
	for room < need && n < len(r.chains) && (mrg || n == 0) {
		ok, err := p.popRx(&r.chains[n])
		if !ok {
			if err != nil {
				p.st.add(cGuestErrors, 1)
			}
			break
		}
		if err != nil || r.chains[n].WriteLen == 0 {
			p.rxv.Push(r.chains[n].Head, 0)
			p.st.add(cDropRxChainUnusable, 1)
			continue
		}
		room += r.chains[n].WriteLen
		n++
	}
	if room < need {
		if n == len(r.chains) || (!mrg && n == 1) {
			// The guest's buffers cannot take the frame at all.
			for i := range n {
				p.rxv.Push(r.chains[i].Head, 0)
			}
			r.held = 0
			p.release(f)
			p.st.add(cDropRxTooBig, 1)
			return true
		}
		r.held = n
		return false
	}
	r.held = 0
	w := chainWriter{chains: r.chains[:n]}
	p.putRxHeader(r.hdr[:], &f[len(f)-1], n)
	w.write(r.hdr[:hl])
	for i := range f {
		w.write(p.pool.Bytes(uint32(f[i].Cookie))[:f[i].Len])
	}
	log := p.dev.DirtyLog()
	for i := range n {
		if log != nil {
			c := &r.chains[i]
			log.MarkSegments(c.Segs, int(c.ReadLen), int(w.written[i]))
		}
		p.rxv.Push(r.chains[i].Head, w.written[i])
	}
	// The host buffers go back only now, after the last access to guest
	// memory: if one faults (see Channel.contain), the frame is still pending
	// and its buffers are returned once, by the quiesce.
	for i := range f {
		p.putHostBuf(uint32(f[i].Cookie))
	}
	reason := r.copyReason
	if r.zeroCopy {
		reason = cCopyNoGuestBuffer
	}
	p.st.add(reason, 1)
	p.st.add(cRxCopied, 1)
	p.st.add(cRxPackets, 1)
	p.st.add(cRxBytes, uint64(total))
	return true
}

// chainWriter fills the writable bytes of several chains in order,
// counting what went into each.
type chainWriter struct {
	chains  []vhost.Chain
	written [maxRxMerge]uint32
	ci      int
}

func (w *chainWriter) write(b []byte) {
	for len(b) > 0 && w.ci < len(w.chains) {
		c := &w.chains[w.ci]
		off := w.written[w.ci]
		if off == c.WriteLen {
			w.ci++
			continue
		}
		k := min(int(c.WriteLen-off), len(b))
		// Readable segments come first; skipping ReadLen bytes lands on
		// the writable ones.
		vhost.Scatter(c.Segs, int(c.ReadLen+off), b[:k])
		w.written[w.ci] += uint32(k)
		b = b[k:]
	}
}

// txRecord remembers the host buffers of a copied packet in flight.
type txRecord struct {
	bufs [maxCopyBufs]uint32
	n    int
}

// maxCopyBufs bounds a copied TX packet: a 64 KiB GSO frame in 2 KiB
// buffers.
const maxCopyBufs = 33

// copyTx gathers the frame of chain c (after its header) into host buffers
// and fills pk's segments with them. It returns the number of segments, or
// 0 if the pool ran dry.
func (p *Channel) copyTx(c *vhost.Chain, pk *ring.TxPkt, segs []ring.Segment) int {
	t := &p.tx
	size := p.pool.BufSize()
	frameLen := int(c.ReadLen) - p.hdrLen
	nb := (frameLen + size - 1) / size
	if nb > maxCopyBufs || len(t.recFree) == 0 {
		return 0
	}
	ri := t.recFree[len(t.recFree)-1]
	rec := &t.rec[ri]
	if got := p.pool.Get(rec.bufs[:nb]); got != nb {
		p.pool.Put(rec.bufs[:got])
		return 0
	}
	t.recFree = t.recFree[:len(t.recFree)-1]
	rec.n = nb
	off := p.hdrLen
	for i := range nb {
		k := min(size, frameLen-(off-p.hdrLen))
		vhost.Gather(p.pool.Bytes(rec.bufs[i])[:k], c.Segs, off)
		segs[i] = ring.Segment{IOVA: p.pool.IOVA(rec.bufs[i]), Len: uint32(k)}
		off += k
	}
	pk.Cookie = copyCookie | ring.Cookie(ri)
	return nb
}

// resetTxRecords returns the host buffers of every copy record still
// taken once the NIC TX queue is stopped and drained: records of packets
// prepared but never submitted because an access to guest memory faulted
// in between (see Channel.contain).
func (p *Channel) resetTxRecords() {
	t := &p.tx
	t.recFree = t.recFree[:0]
	for i := len(t.rec) - 1; i >= 0; i-- {
		rec := &t.rec[i]
		if rec.n > 0 {
			p.pool.Put(rec.bufs[:rec.n])
			rec.n = 0
		}
		t.recFree = append(t.recFree, uint32(i))
	}
}

// freeTxRecord returns a copied packet's host buffers.
func (p *Channel) freeTxRecord(c ring.Cookie) {
	t := &p.tx
	ri := uint32(c)
	rec := &t.rec[ri]
	p.pool.Put(rec.bufs[:rec.n])
	rec.n = 0
	t.recFree = append(t.recFree, ri)
}
