package sim

import "sync"

// rxFIFO is the receive packet buffer: frames the MAC accepted, waiting for
// the RX DMA engine. Deliver appends (copying the frame); only the RX engine
// removes, from the head, after it is done with a frame. Slots keep their
// buffers, so a steady state allocates nothing.
type rxFIFO struct {
	mu    sync.Mutex
	slots []rxSlot
	head  int
	n     int
	bytes int
}

type rxSlot struct {
	buf []byte
	// inexact: the frame passed a hash or promiscuous filter rather than an
	// exact address match (the descriptor's PIF bit).
	inexact bool
	// noBuf: RNBC was already counted for this frame (for its current
	// pool copy) while it waited for descriptors.
	noBuf bool
	// pools: with virtualization on, the pools still owed a copy of the
	// frame, lowest first; a bit clears once that copy is written or
	// dropped. Zero for frames the pool logic did not switch.
	pools uint64
	// loop: the frame came from a local pool through the internal switch.
	loop bool
	// copies: the copies of this frame written so far.
	copies int
}

// rxMeta is what the MAC (or the internal switch) decided about a frame.
type rxMeta struct {
	inexact bool
	pools   uint64
	loop    bool
}

// slotBytes is the buffer each slot starts with: enough for a standard
// frame, so only jumbo frames ever grow a slot.
const slotBytes = 2048

func (f *rxFIFO) init(frames int) {
	f.slots = make([]rxSlot, frames)
	arena := make([]byte, frames*slotBytes)
	// Write every page now: fresh memory from the OS is zero but not yet
	// in the page tables, and the first frames of a run would otherwise
	// pay a page fault per slot on the wire's side of the model.
	for i := 0; i < len(arena); i += 4096 {
		arena[i] = 0
	}
	for i := range f.slots {
		f.slots[i].buf = arena[i*slotBytes : i*slotBytes : (i+1)*slotBytes]
	}
}

// push copies frame in; it reports false when the buffer is full, by frame
// count or by byteLimit.
func (f *rxFIFO) push(frame []byte, m rxMeta, byteLimit int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == len(f.slots) || f.bytes+len(frame) > byteLimit {
		return false
	}
	s := &f.slots[(f.head+f.n)%len(f.slots)]
	s.buf = append(s.buf[:0], frame...)
	s.inexact = m.inexact
	s.noBuf = false
	s.pools, s.loop, s.copies = m.pools, m.loop, 0
	f.n++
	f.bytes += len(frame)
	return true
}

// pending returns the head index and the number of frames waiting. The
// slots in that window stay put until pop, so the engine may read them
// without the lock.
func (f *rxFIFO) pending() (head, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.head, f.n
}

func (f *rxFIFO) at(i int) *rxSlot { return &f.slots[i%len(f.slots)] }

// pop releases the k frames at the head.
func (f *rxFIFO) pop(k int) {
	if k == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < k; i++ {
		f.bytes -= len(f.slots[f.head].buf)
		f.head = (f.head + 1) % len(f.slots)
	}
	f.n -= k
}

func (f *rxFIFO) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.head, f.n, f.bytes = 0, 0, 0
}
