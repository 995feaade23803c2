// Package fwd is zcnet's NIC-to-NIC forwarder (zcnet fwd): frames received
// on one NIC queue are transmitted on another NIC's queue in the receive
// buffer they arrived in, as ixy-fwd and testpmd's io mode do. It needs no
// guest and no copy, and measures the NIC drivers and the poll-mode runtime
// alone.
package fwd

import (
	"fmt"
	"sync/atomic"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
)

// Forwarder moves frames from one NIC receive queue to another NIC's transmit
// queue, the way ixy-fwd and testpmd's io mode do: the receive buffer itself
// is transmitted, so nothing is copied. Buffers come from a host pool that
// must be DMA-mapped, at the pool's IOVAs, into both NICs' IOMMU domains.
//
// Forwarder is a Task (pollmode.Task); a bidirectional forwarder is two of them, each with its
// own pool. A Forwarder is single-owner: one lcore polls it.
type Forwarder struct {
	name  string
	rx    ring.RxQueue
	tx    ring.TxQueue
	pool  *hugepage.Pool
	burst int

	// next links the buffers of a frame that spanned several receive
	// descriptors: next[i] is the buffer after i, or noBuf. A transmitted
	// packet's cookie is its first buffer, so Reclaim can free them all.
	next []uint32

	// Scratch space for one burst, allocated once.
	done    []ring.RxDone
	pkts    []ring.TxPkt
	segs    []ring.Segment
	cookies []ring.Cookie
	idx     []uint32
	bufs    []ring.Buf

	// A frame whose first buffers arrived in one burst and whose EOP has
	// not yet: its buffers, in order.
	partial     []uint32
	partialSegs []ring.Segment

	stats counters
}

const noBuf = ^uint32(0)

// Stats counts what a Forwarder did.
type Stats struct {
	RxFrames, RxBytes uint64
	TxFrames          uint64
	// TxFull counts polls that found the TX ring still full with frames
	// waiting: the forwarder then harvests nothing, pushing back on the
	// receive ring instead of dropping.
	TxFull uint64
	// DroppedRxError counts frames the NIC flagged as damaged.
	DroppedRxError uint64
	// NoBuffers counts polls that could not refill the RX ring because
	// the pool was empty (buffers all in flight).
	NoBuffers uint64
}

type counters struct {
	rxFrames, rxBytes, txFrames, txFull, dropRxErr, noBufs atomic.Uint64
}

// New builds a forwarder from rx to tx with buffers from pool, moving
// at most burst frames per poll. It posts the pool's buffers (up to the
// receive ring's capacity) on the first poll.
func New(name string, rx ring.RxQueue, tx ring.TxQueue, pool *hugepage.Pool, burst int) (*Forwarder, error) {
	if rx == nil || tx == nil || pool == nil {
		return nil, fmt.Errorf("forward %s: receive queue, transmit queue and pool are all required", name)
	}
	if burst < 1 || burst > 1024 {
		return nil, fmt.Errorf("forward %s: burst %d out of range 1-1024", name, burst)
	}
	f := &Forwarder{
		name: name, rx: rx, tx: tx, pool: pool, burst: burst,
		next: make([]uint32, pool.Cap()),
		done: make([]ring.RxDone, burst),
		pkts: make([]ring.TxPkt, 0, burst),
		// Room for a whole burst plus the head of a frame carried over
		// from the previous one, so appends never reallocate.
		segs:        make([]ring.Segment, 0, burst+64),
		cookies:     make([]ring.Cookie, burst),
		idx:         make([]uint32, burst),
		bufs:        make([]ring.Buf, burst),
		partial:     make([]uint32, 0, 64),
		partialSegs: make([]ring.Segment, 0, 64),
	}
	for i := range f.next {
		f.next[i] = noBuf
	}
	return f, nil
}

// Name implements Task.
func (f *Forwarder) Name() string { return f.name }

// Poll implements Task: reclaim what the transmit side finished, harvest
// received frames and submit them, then refill the receive ring. It returns
// the number of frames forwarded.
func (f *Forwarder) Poll() int {
	f.reclaim()
	n := f.forward()
	f.refill()
	return n
}

func (f *Forwarder) reclaim() {
	n := f.tx.Reclaim(f.cookies)
	for _, c := range f.cookies[:n] {
		f.freeChain(uint32(c))
	}
}

// freeChain returns the buffers of one frame to the pool.
func (f *Forwarder) freeChain(i uint32) {
	for i != noBuf {
		nx := f.next[i]
		f.next[i] = noBuf
		f.idx[0] = i
		f.pool.Put(f.idx[:1])
		i = nx
	}
}

func (f *Forwarder) forward() int {
	// Packets the transmit ring had no room for last time go first; while
	// any remain, nothing more is harvested, so a slow transmit side backs
	// up into the receive ring and the NIC (which counts its drops) rather
	// than being dropped here.
	if len(f.pkts) > 0 && !f.submit() {
		f.stats.txFull.Add(1)
		return 0
	}
	n := f.rx.Harvest(f.done)
	if n == 0 {
		return 0
	}
	// Counters are summed here and published once per burst: an atomic
	// add per frame would cost more than the rest of the frame's work.
	var frames, bytes, rxErrs uint64
	for _, d := range f.done[:n] {
		i := uint32(d.Cookie)
		seg := ring.Segment{IOVA: f.pool.IOVA(i), Len: d.Len}
		if len(f.partial) > 0 {
			f.next[f.partial[len(f.partial)-1]] = i
		}
		f.partial = append(f.partial, i)
		f.partialSegs = append(f.partialSegs, seg)
		if !d.EOP() {
			continue
		}
		first := f.partial[0]
		if d.RxError() {
			rxErrs++
			f.freeChain(first)
		} else {
			start := len(f.segs)
			f.segs = append(f.segs, f.partialSegs...)
			for i := range f.partialSegs { // by index: no Segment copies on the hot path
				bytes += uint64(f.partialSegs[i].Len)
			}
			f.pkts = append(f.pkts, ring.TxPkt{Segs: f.segs[start:len(f.segs):len(f.segs)], Cookie: ring.Cookie(first)})
		}
		frames++
		f.partial = f.partial[:0]
		f.partialSegs = f.partialSegs[:0]
	}
	f.stats.rxFrames.Add(frames)
	f.stats.rxBytes.Add(bytes)
	if rxErrs > 0 {
		f.stats.dropRxErr.Add(rxErrs)
	}
	if len(f.pkts) > 0 {
		f.submit()
	}
	return int(frames)
}

// submit hands f.pkts to the transmit ring and reports whether it took them
// all. The ones it did not take are moved, with their segments, to the front
// of f.pkts and f.segs for the next poll.
func (f *Forwarder) submit() bool {
	sent := f.tx.Submit(f.pkts)
	f.stats.txFrames.Add(uint64(sent))
	if sent == len(f.pkts) {
		f.pkts = f.pkts[:0]
		f.segs = f.segs[:0]
		return true
	}
	off := 0
	for _, p := range f.pkts[:sent] {
		off += len(p.Segs)
	}
	f.segs = f.segs[:copy(f.segs, f.segs[off:])]
	pos := 0
	for i, p := range f.pkts[sent:] {
		m := len(p.Segs)
		p.Segs = f.segs[pos : pos+m : pos+m]
		f.pkts[i] = p
		pos += m
	}
	f.pkts = f.pkts[:len(f.pkts)-sent]
	return false
}

// refill posts free buffers to the receive ring until it is full or the
// pool is empty; what the ring does not take goes back to the pool. A
// burst of jumbo frames consumes several descriptors per frame, so one
// burst's worth of buffers per poll would not keep up.
func (f *Forwarder) refill() {
	for range maxRefillRounds {
		got := f.pool.Get(f.idx)
		if got == 0 {
			f.stats.noBufs.Add(1)
			return
		}
		size := uint32(f.pool.BufSize())
		for k, i := range f.idx[:got] {
			f.bufs[k] = ring.Buf{IOVA: f.pool.IOVA(i), Len: size, Cookie: ring.Cookie(i)}
		}
		posted := f.rx.Post(f.bufs[:got])
		if posted < got {
			f.pool.Put(f.idx[posted:got])
			return
		}
	}
}

// maxRefillRounds bounds the work one poll spends refilling, so a large
// ring is filled over a few polls rather than in one long one.
const maxRefillRounds = 8

// Stats returns the forwarder's counters; safe from any goroutine.
func (f *Forwarder) Stats() Stats {
	return Stats{
		RxFrames:       f.stats.rxFrames.Load(),
		RxBytes:        f.stats.rxBytes.Load(),
		TxFrames:       f.stats.txFrames.Load(),
		TxFull:         f.stats.txFull.Load(),
		DroppedRxError: f.stats.dropRxErr.Load(),
		NoBuffers:      f.stats.noBufs.Load(),
	}
}
