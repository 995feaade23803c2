package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Split virtqueue layout (virtio 1.x, 2.7).
const (
	descSize = 16

	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	availFNoInterrupt = 1
	usedFNoNotify     = 1

	// MaxQueueSize is the largest split queue virtio allows.
	MaxQueueSize = 32768
)

// Errors a virtqueue reports. Everything except ErrTooManySegs marks the
// queue broken: the guest gave us something no correct driver gives.
var (
	ErrQueueBroken      = errors.New("vhost: virtqueue is broken and needs a device reset")
	errAvailIdx         = errors.New("avail index moved more than the queue size")
	errHeadRange        = errors.New("descriptor head index out of range")
	errNextRange        = errors.New("descriptor next index out of range")
	errDescLoop         = errors.New("descriptor chain longer than its table (loop)")
	errIndirectNested   = errors.New("indirect descriptor inside a chain or an indirect table")
	errIndirectNext     = errors.New("descriptor has both INDIRECT and NEXT")
	errIndirectLen      = errors.New("indirect table length is zero or not a multiple of 16")
	errIndirectAddr     = errors.New("indirect table outside guest memory or split across regions")
	errBufferAddr       = errors.New("buffer outside guest memory")
	errLenOverflow      = errors.New("chain length overflows 32 bits")
	errWriteBeforeRead  = errors.New("device-readable descriptor after a writable one")
	errRingMisaligned   = errors.New("ring address misaligned (desc 16, avail 2, used 4 bytes)")
	errRingOutsideGuest = errors.New("ring outside guest memory")
)

// Chain is one available descriptor chain, flattened: the caller provides
// Segs with enough capacity (Pop never grows it), Pop fills it.
type Chain struct {
	Head     uint16    // id to hand back with Push
	Segs     []Segment // readable segments first, then writable ones
	ReadLen  uint32    // total bytes the device may read
	WriteLen uint32    // total bytes the device may write
}

// QueueConfig describes a split virtqueue the front end set up.
type QueueConfig struct {
	Index int
	Size  uint16 // power of two, 1..32768
	// Desc, Avail and Used are front-end user addresses (SET_VRING_ADDR).
	Desc, Avail, Used uint64
	// LastAvail is the next available entry to consume (SET_VRING_BASE).
	LastAvail uint16
	// EventIdx is set when VIRTIO_F_RING_EVENT_IDX was negotiated.
	EventIdx bool
	// Packed selects the packed layout (VIRTIO_F_RING_PACKED): Desc is the
	// descriptor ring, Avail the driver event suppression area and Used
	// the device event suppression area. LastAvail and LastUsed then carry
	// the wrap counter in bit 15.
	Packed   bool
	LastUsed uint16
	// ReadAhead says the driver keeps chains available long before the
	// device uses them (a network device's receive queues: the driver
	// posts every buffer it has), so Pop warms the next burst each time
	// the last warmed one is used, not only when it reads the avail
	// index, which with such a backlog it rarely needs to.
	ReadAhead bool
}

// Virtqueue is the device side of a split virtqueue. It is used by one
// poller at a time and allocates nothing on Pop, Push and Flush.
type Virtqueue struct {
	index int
	size  uint16
	mask  uint16

	desc, avail, used []byte
	mem               *MemoryTable
	regionHint        int // memory region of the last buffer (MemoryTable.appendGPA)
	availAligned      bool
	eventIdx          bool

	lastAvail uint16 // next avail ring entry to consume
	// availSeen is the last avail->idx read. Entries up to it can be
	// popped without reading the index again: that cache line is the
	// driver's to write, and reading it once per burst rather than once
	// per chain spares a cache-line transfer per chain while the driver
	// is adding more.
	availSeen uint16
	warmed    uint64 // what warm read, kept so the loads are not dropped
	warmEnd   uint16 // avail index up to which warm has read ahead
	readAhead bool   // QueueConfig.ReadAhead
	usedIdx   uint16 // next used ring slot to fill (staged, unpublished)
	published uint16 // last value stored into used->idx
	usedFlags uint16

	call *notifier // nil: the front end polls
	errN *notifier

	broken   bool
	onBroken func(q *Virtqueue, err error)

	pk packedState // packed rings only

	// infl tracks the ring in its region of the front end's inflight
	// buffer (inflight.go, inflight_packed.go), nil when none is set: the
	// data path's only cost without one is a nil check in Pop, Push and
	// Flush (packed: two per Flush, around the publishing store).
	infl ringInflight

	// Dirty logging (see Device.applyLog): dirty is the log while the
	// front end has logging on, nil otherwise; logRing says the used ring
	// is logged too (VHOST_VRING_F_LOG), at usedGPA (split: the used ring;
	// packed: the device event area) and, packed, descGPA (the ring).
	dirty   *DirtyLog
	logRing bool
	usedGPA uint64
	descGPA uint64

	// Used entries pushed but not yet written to the ring (writeStaged),
	// laid out as the ring holds them: {le32 id; le32 len} each.
	staged  [stagedMax * usedElemSize]byte
	nstaged int

	fence  uint32
	counts QueueCounters
}

// QueueCounters are a queue's running totals.
type QueueCounters struct {
	Popped, Pushed, Signals, Flushes uint64
}

// NewSplitQueue maps a virtqueue described by cfg through mem: a split
// ring, or a packed ring if cfg.Packed (same API).
func NewSplitQueue(mem *MemoryTable, cfg QueueConfig) (*Virtqueue, error) {
	if cfg.Size == 0 || cfg.Size > MaxQueueSize || cfg.Size&(cfg.Size-1) != 0 {
		return nil, fmt.Errorf("vhost: queue %d size %d is not a power of two up to %d", cfg.Index, cfg.Size, MaxQueueSize)
	}
	if cfg.Desc%16 != 0 || cfg.Avail%2 != 0 || cfg.Used%4 != 0 {
		return nil, fmt.Errorf("vhost: queue %d: %w", cfg.Index, errRingMisaligned)
	}
	q := &Virtqueue{index: cfg.Index, size: cfg.Size, mask: cfg.Size - 1, mem: mem,
		eventIdx: cfg.EventIdx, lastAvail: cfg.LastAvail, availSeen: cfg.LastAvail, readAhead: cfg.ReadAhead}
	if cfg.Packed {
		return q, q.initPacked(cfg)
	}
	if err := q.translate(cfg); err != nil {
		return nil, err
	}
	q.usedIdx = load16(q.used, 2)
	q.published = q.usedIdx
	q.setPolling()
	return q, nil
}

func (q *Virtqueue) translate(cfg QueueConfig) error {
	if q.pk.on {
		return q.translatePacked(cfg)
	}
	n := uint64(cfg.Size)
	var err error
	if q.desc, err = q.mem.TranslateUVA(cfg.Desc, descSize*n); err != nil {
		return fmt.Errorf("vhost: queue %d descriptor table at %#x: %w: %w", cfg.Index, cfg.Desc, errRingOutsideGuest, err)
	}
	if q.avail, err = q.mem.TranslateUVA(cfg.Avail, 6+2*n); err != nil {
		return fmt.Errorf("vhost: queue %d avail ring at %#x: %w: %w", cfg.Index, cfg.Avail, errRingOutsideGuest, err)
	}
	if q.used, err = q.mem.TranslateUVA(cfg.Used, 6+8*n); err != nil {
		return fmt.Errorf("vhost: queue %d used ring at %#x: %w: %w", cfg.Index, cfg.Used, errRingOutsideGuest, err)
	}
	if !aligned4(q.used, 0) {
		return fmt.Errorf("vhost: queue %d used ring: %w", cfg.Index, errRingMisaligned)
	}
	q.availAligned = aligned4(q.avail, 0)
	return nil
}

// setPolling asks the driver not to kick: this back end polls. Without
// EVENT_IDX that is VRING_USED_F_NO_NOTIFY; with it the flag is ignored and
// the avail_event index is parked half a ring-space (32768 entries) ahead,
// so the driver's "did I pass avail_event" test fails until then.
func (q *Virtqueue) setPolling() {
	if q.pk.on {
		store16(q.used, 2, packedEventDisable)
		q.logUsedArea(0, 4)
		return
	}
	if q.eventIdx {
		q.usedFlags = 0
		store16(q.used, 4+8*int(q.size), q.lastAvail+0x8000)
	} else {
		q.usedFlags = usedFNoNotify
	}
	store32(q.used, 0, uint32(q.usedFlags)|uint32(q.published)<<16)
	q.logUsedArea(0, 4)
	if q.eventIdx {
		q.logUsedArea(4+8*uint64(q.size), 2)
	}
}

// setLog sets the queue's logging state (data-path lock held).
func (q *Virtqueue) setLog(l *DirtyLog, ring bool, usedGPA, descGPA uint64) {
	if l != nil && l != q.dirty {
		q.touchPosted(l)
	}
	q.dirty, q.logRing, q.usedGPA, q.descGPA = l, ring, usedGPA, descGPA
}

// touchPosted records in l (see DirtyLog.touched) the buffers of every
// descriptor in the ring as logging starts: chains popped before it and
// still held (a NIC's receive buffers) are written while it is on. An
// in-flight chain's descriptors stay in the split ring's table until it is
// used; a packed ring keeps a buffer's address in its slot until the
// driver reuses the slot. Indirect tables are not followed (receive
// buffers are direct); each buffer counts up to maxTouch bytes.
func (q *Virtqueue) touchPosted(l *DirtyLog) {
	n := len(q.desc) / descSize
	for i := range n {
		d := q.desc[descSize*i : descSize*i+descSize]
		l.touch(binary.LittleEndian.Uint64(d), min(uint64(binary.LittleEndian.Uint32(d[8:])), maxTouch))
	}
}

// DirtyLog is the device's dirty log while the front end has logging on,
// nil otherwise (see Device.DirtyLog).
func (q *Virtqueue) DirtyLog() *DirtyLog { return q.dirty }

// logUsedArea marks n bytes at offset off of the used ring (split) or the
// device event area (packed) when the ring is logged. Call it after the
// write.
func (q *Virtqueue) logUsedArea(off, n uint64) {
	if q.dirty != nil && q.logRing {
		q.dirty.Mark(q.usedGPA+off, n)
	}
}

// logUsedElems marks the used ring elements of slots [from, to) (ring
// indexes, wrapping), written since the last Flush.
func (q *Virtqueue) logUsedElems(from, to uint16) {
	n := uint64(to - from)
	if n >= uint64(q.size) {
		q.dirty.Mark(q.usedGPA+4, 8*uint64(q.size))
		return
	}
	start := uint64(from & q.mask)
	if start+n <= uint64(q.size) {
		q.dirty.Mark(q.usedGPA+4+8*start, 8*n)
		return
	}
	first := uint64(q.size) - start
	q.dirty.Mark(q.usedGPA+4+8*start, 8*first)
	q.dirty.Mark(q.usedGPA+4, 8*(n-first))
}

// EnableNotify asks the driver to kick on the next available buffer: for a
// poller that is about to sleep on the kick eventfd. It must re-check Avail
// afterwards, since a buffer may have arrived before the driver saw this.
func (q *Virtqueue) EnableNotify() {
	if q.pk.on {
		store16(q.used, 2, packedEventEnable)
		q.logUsedArea(0, 4)
	} else if q.eventIdx {
		store16(q.used, 4+8*int(q.size), q.lastAvail)
		q.logUsedArea(4+8*uint64(q.size), 2)
	} else {
		q.usedFlags = 0
		store32(q.used, 0, uint32(q.published)<<16)
		q.logUsedArea(0, 4)
	}
	fullFence(&q.fence)
}

// DisableNotify returns to polling after EnableNotify.
func (q *Virtqueue) DisableNotify() { q.setPolling() }

// Index is the queue's index in its device.
func (q *Virtqueue) Index() int { return q.index }

// Size is the number of descriptors in the queue.
func (q *Virtqueue) Size() int { return int(q.size) }

// Broken reports whether the queue was stopped by a guest error.
func (q *Virtqueue) Broken() bool { return q.broken }

// Counters returns the queue's totals.
func (q *Virtqueue) Counters() QueueCounters { return q.counts }

// LastAvail is the next available entry the device will consume.
func (q *Virtqueue) LastAvail() uint16 { return q.lastAvail }

// availIdx reads avail->idx with acquire semantics: ring entries read
// after it are at least as new as the index.
func (q *Virtqueue) availIdx() uint16 {
	if q.availAligned {
		return uint16(load32(q.avail, 0) >> 16)
	}
	v := load16(q.avail, 2)
	fullFence(&q.fence)
	return v
}

// Avail reports how many chains the driver has made available and the
// device has not popped yet.
func (q *Virtqueue) Avail() int {
	if q.broken {
		return 0
	}
	if q.pk.on {
		return q.availPacked()
	}
	return int(q.availIdx() - q.lastAvail)
}

// Pop takes the next available chain into c. It reports false with a nil
// error when nothing is available. A guest error marks the queue broken
// and returns an error wrapping ErrQueueBroken; from then on Pop returns
// ErrQueueBroken. ErrTooManySegs means the chain needed more segments
// than cap(c.Segs): the chain is consumed (c.Head is valid) and the caller
// must Push it back with length 0.
func (q *Virtqueue) Pop(c *Chain) (bool, error) {
	if q.broken {
		return false, ErrQueueBroken
	}
	if q.infl != nil || q.pk.on {
		var ok bool
		var err error
		if q.infl != nil {
			ok, err = q.infl.pop(q, c)
		} else {
			ok, err = q.popPacked(c)
		}
		if ok && q.dirty != nil {
			q.dirty.touchSegments(c.Segs)
		}
		return ok, err
	}
	if q.availSeen == q.lastAvail {
		q.availSeen = q.availIdx()
		if pending := q.availSeen - q.lastAvail; pending == 0 {
			return false, nil
		} else if pending > q.size {
			return false, q.fail(errAvailIdx)
		} else {
			q.warm(pending)
		}
	} else if q.lastAvail == q.warmEnd && q.readAhead {
		q.warm(q.availSeen - q.lastAvail)
	}
	head := load16(q.avail, 4+2*int(q.lastAvail&q.mask))
	if head >= q.size {
		return false, q.fail(errHeadRange)
	}
	c.Head = head
	// The common chain, one direct descriptor whose buffer lies in the
	// memory region of the previous one (what a poll-mode driver posts for
	// every frame up to its buffer size), is filled in here, without
	// walk's loop and calls (written out rather than in a function: the
	// call cost a few ns per chain). Everything walk would check for such
	// a chain is checked: no NEXT or INDIRECT, a non-empty buffer wholly
	// inside one region, room for one segment (a 32-bit length cannot
	// overflow the total on its own). Anything else goes to walk, which
	// checks it in full; only Segs' contents may have changed.
	d := q.desc[descSize*int(head) : descSize*int(head)+descSize]
	if flags := binary.LittleEndian.Uint16(d[12:]); flags&(descFNext|descFIndirect) == 0 && cap(c.Segs) != 0 && q.mem != nil {
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		if buf, ok := q.mem.hinted(addr, uint64(length), q.regionHint); ok {
			writable := flags&descFWrite != 0
			c.Segs = c.Segs[:1]
			setSegment(&c.Segs[0], addr, buf, writable)
			if writable {
				c.ReadLen, c.WriteLen = 0, length
			} else {
				c.ReadLen, c.WriteLen = length, 0
			}
			q.lastAvail++
			q.counts.Popped++
			if q.dirty != nil {
				q.dirty.touchSegments(c.Segs)
			}
			return true, nil
		}
	}
	c.Segs = c.Segs[:0]
	c.ReadLen, c.WriteLen = 0, 0
	err := q.walk(c, head)
	if err != nil && err != ErrTooManySegs {
		return false, q.fail(err)
	}
	q.lastAvail++
	q.counts.Popped++
	if q.dirty != nil {
		q.dirty.touchSegments(c.Segs)
	}
	return true, err
}

// DirectBuf is a chain of one direct descriptor, as PopDirect returns
// it: what a receive driver posts for every buffer (Linux with mergeable
// buffers, DPDK's virtio PMD), and what a transmit driver posts for a
// frame whose header it put in front of the data.
type DirectBuf struct {
	Head uint16 // id to hand back with Push
	GPA  uint64 // the guest physical address of Buf
	Buf  []byte
}

// PopDirect pops, in ring order, up to len(out) chains of one direct
// descriptor each, writable by the device if writable is set and readable
// otherwise, whose buffer lies in the memory region of the previous chain,
// and returns how many it popped. It is Pop's common case for a burst,
// without the Chain: the avail index is read once, nothing is written but
// out. It stops at the first chain that is anything else (or is
// malformed), leaving it to Pop, which checks it in full; it pops nothing
// on a packed ring, with inflight tracking or while the dirty log is on
// (Pop serves those).
func (q *Virtqueue) PopDirect(out []DirectBuf, writable bool) int {
	if q.broken || q.infl != nil || q.pk.on || q.dirty != nil || q.mem == nil {
		return 0
	}
	if q.availSeen == q.lastAvail {
		// A bad index is Pop's to report: the next Pop reads it again.
		seen := q.availIdx()
		pending := seen - q.lastAvail
		if pending == 0 || pending > q.size {
			return 0
		}
		q.availSeen = seen
		q.warm(pending)
	}
	var want uint16
	if writable {
		want = descFWrite
	}
	n := 0
	for n < len(out) && q.lastAvail != q.availSeen {
		if q.lastAvail == q.warmEnd && q.readAhead {
			q.warm(q.availSeen - q.lastAvail)
		}
		head := load16(q.avail, 4+2*int(q.lastAvail&q.mask))
		if head >= q.size {
			break
		}
		// Pop's checks for its one-descriptor chain, written out again
		// for the same reason (as a function they cost a call per chain:
		// 1-2 ns in BenchmarkSplitPopPush and the engine's benchmarks).
		d := q.desc[descSize*int(head) : descSize*int(head)+descSize]
		if binary.LittleEndian.Uint16(d[12:])&(descFNext|descFIndirect|descFWrite) != want {
			break
		}
		addr := binary.LittleEndian.Uint64(d)
		buf, ok := q.mem.hinted(addr, uint64(binary.LittleEndian.Uint32(d[8:])), q.regionHint)
		if !ok {
			break
		}
		o := &out[n] // field by field: see setSegment
		o.Head = head
		o.GPA = addr
		o.Buf = buf
		q.lastAvail++
		n++
	}
	q.counts.Popped += uint64(n)
	return n
}

// warmDepth is how many newly available chains warm touches: a burst.
const warmDepth = 32

// warm reads the avail entries and first descriptors of the next n chains
// (at most warmDepth) before they are popped. The driver has just written
// those cache lines on its own core, so each is a cache miss here; read
// one by one, as Pop walks each chain, the misses stall one after another,
// while these loads are independent and the CPU overlaps them. (Go has no
// prefetch instruction; a load whose result is kept is the portable way.)
// Indexes are checked as in Pop; the values are only summed.
func (q *Virtqueue) warm(n uint16) {
	var sum uint64
	n = min(n, warmDepth)
	q.warmEnd = q.lastAvail + n
	for i := range n {
		head := load16(q.avail, 4+2*int((q.lastAvail+i)&q.mask))
		if head < q.size {
			sum += binary.LittleEndian.Uint64(q.desc[descSize*int(head):])
		}
	}
	q.warmed = sum
}

// Unpop gives back the last n popped chains that were not pushed, so the
// next Pop returns them again (for a device that popped a buffer it turned
// out not to need). On a packed ring n is at most 64.
func (q *Virtqueue) Unpop(n int) {
	if q.pk.on {
		q.unpopPacked(n)
		return
	}
	if q.infl != nil {
		q.infl.rewound(q, q.lastAvail-uint16(n))
	}
	q.lastAvail -= uint16(n)
}

// AvailPos is the ring position of the chain the next Pop returns: the
// avail index on a split ring; on a packed ring the descriptor index with
// the avail wrap counter in bit 15 (as GET_VRING_BASE reports it).
func (q *Virtqueue) AvailPos() uint16 {
	if q.pk.on {
		p := q.lastAvail
		if q.pk.availWrap {
			p |= wrapBit
		}
		return p
	}
	return q.lastAvail
}

// RewindTo moves the ring back to pos, a position AvailPos returned, so
// that every chain popped since is offered again: by the next Pop, or, once
// the ring is stopped, by the front end, since GET_VRING_BASE reports the
// position. It is how a device gives back buffers it popped and never
// wrote without a used entry, which a driver would take as a received
// packet of length 0 (Linux counts each as a length error). The caller
// must not have pushed any chain popped since pos.
func (q *Virtqueue) RewindTo(pos uint16) {
	if q.pk.on {
		q.inflightRewound(pos)
		q.lastAvail, q.pk.availWrap = pos&^wrapBit, pos&wrapBit != 0
		q.pk.nhist = 0 // the Unpop history no longer describes the ring
		return
	}
	if q.infl != nil {
		q.infl.rewound(q, pos)
	}
	q.lastAvail = pos
}

// walk follows the chain starting at head, direct or through one indirect
// table, checking every index, flag combination, length and address.
func (q *Virtqueue) walk(c *Chain, head uint16) error {
	table := q.desc
	limit := uint32(q.size)
	idx := uint32(head)
	indirect, truncated := false, false
	var total uint64
	for count := uint32(0); ; count++ {
		if count >= limit {
			return errDescLoop
		}
		d := table[descSize*idx : descSize*idx+descSize]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := uint32(binary.LittleEndian.Uint16(d[14:]))
		if flags&descFIndirect != 0 {
			if indirect || count != 0 {
				return errIndirectNested
			}
			if flags&descFNext != 0 {
				return errIndirectNext
			}
			if length == 0 || length%descSize != 0 {
				return errIndirectLen
			}
			t, err := q.mem.TranslateGPA(addr, uint64(length))
			if err != nil {
				return errIndirectAddr
			}
			table, limit, idx, indirect = t, length/descSize, 0, true
			count = math.MaxUint32 // becomes 0 at the loop increment
			continue
		}
		if err := q.addBuffer(c, addr, length, flags, &total, &truncated); err != nil {
			return err
		}
		if flags&descFNext == 0 {
			if truncated {
				return ErrTooManySegs
			}
			return nil
		}
		if next >= limit {
			return errNextRange
		}
		idx = next
	}
}

// addBuffer appends one descriptor's buffer to c after checking the
// descriptor order, the running length and the address. A full segment
// slice only sets *truncated, so the rest of the chain is still checked.
func (q *Virtqueue) addBuffer(c *Chain, addr uint64, length uint32, flags uint16, total *uint64, truncated *bool) error {
	writable := flags&descFWrite != 0
	if !writable && c.WriteLen > 0 {
		return errWriteBeforeRead
	}
	*total += uint64(length)
	if *total > math.MaxUint32 {
		return errLenOverflow
	}
	if length > 0 {
		var err error
		c.Segs, err = q.mem.appendGPA(c.Segs, addr, uint64(length), writable, &q.regionHint)
		if err == ErrTooManySegs {
			*truncated = true
		} else if err != nil {
			return errBufferAddr
		}
	}
	if writable {
		c.WriteLen += length
	} else {
		c.ReadLen += length
	}
	return nil
}

// fail marks the queue broken, once, and tells the device. The error
// wraps ErrQueueBroken and the reason.
func (q *Virtqueue) fail(reason error) error {
	if !q.broken {
		q.broken = true
		if q.errN != nil {
			q.errN.signal()
		}
		if q.onBroken != nil {
			q.onBroken(q, reason)
		}
	}
	return fmt.Errorf("%w: %w", ErrQueueBroken, reason)
}

// Push stages a used entry: chain head id and the number of bytes the
// device wrote into it. Nothing is visible to the driver until Flush.
func (q *Virtqueue) Push(head uint16, written uint32) {
	if q.infl != nil {
		q.infl.pushed(head)
	}
	if q.pk.on {
		q.pushPacked(head, written)
		return
	}
	if q.nstaged == stagedMax {
		q.writeStaged()
	}
	binary.LittleEndian.PutUint64(q.staged[usedElemSize*q.nstaged:], uint64(head)|uint64(written)<<32)
	q.nstaged++
	q.usedIdx++
	q.counts.Pushed++
}

// PushRead returns chains the device only read (a network device's
// transmit completions), in order: Push(head, 0) for each head, in one
// call for a burst.
func (q *Virtqueue) PushRead(heads []uint16) {
	if q.infl != nil || q.pk.on {
		for _, h := range heads {
			q.Push(h, 0)
		}
		return
	}
	for _, h := range heads {
		// Push's staging, written out: a helper shared with Push is not
		// inlined, and its call cost more than PushRead saves.
		if q.nstaged == stagedMax {
			q.writeStaged()
		}
		binary.LittleEndian.PutUint64(q.staged[usedElemSize*q.nstaged:], uint64(h))
		q.nstaged++
		q.usedIdx++ // writeStaged places entries by it
	}
	q.counts.Pushed += uint64(len(heads))
}

// stagedMax is how many used entries Push keeps before writing them out.
const stagedMax = 64

// usedElemSize is the size of a split ring's used element.
const usedElemSize = 8

// writeStaged writes the staged used entries into the used ring, which
// is the driver's to read: it polls used->idx, on the same cache line as
// the first entries, so writing the entries one by one as chains complete
// would take that line away from it again and again during a burst.
// Writing them together, just before Flush publishes the index, moves
// each line once. The entries stay invisible to the driver until Flush.
//
// They are copied as one block (two where the ring wraps), not stored one
// by one: a copy moves them with a few wide stores, while two 4-byte
// stores per entry (an 8-byte one at 4 mod 8 would straddle a cache line
// every eighth entry) filled the store buffer behind a burst's frame
// writes, which wait for lines the driver's core holds.
func (q *Virtqueue) writeStaged() {
	src := q.staged[:usedElemSize*q.nstaged]
	slot := int((q.usedIdx - uint16(q.nstaged)) & q.mask)
	// More entries than the ring has slots wrap more than once (a driver
	// that posts the same chains again without waiting for them to be
	// used); the later ones overwrite the earlier, as they would one by
	// one.
	for len(src) > 0 {
		k := copy(q.used[4+usedElemSize*slot:4+usedElemSize*int(q.size)], src)
		src, slot = src[k:], 0
	}
	q.nstaged = 0
}

// Flush publishes every staged used entry with one release store of
// used->idx, then signals the call eventfd if the driver asked for it
// (EVENT_IDX: the new entries passed used_event; otherwise: the driver did
// not set VRING_AVAIL_F_NO_INTERRUPT). At most one signal per Flush.
func (q *Virtqueue) Flush() {
	if q.pk.on {
		q.flushPacked()
		return
	}
	if q.usedIdx == q.published {
		return
	}
	q.writeStaged()
	old := q.published
	q.published = q.usedIdx
	logged := q.dirty != nil && q.logRing
	if logged {
		// The entries are logged after they are written and before the
		// driver can see them, used->idx after it is written: QEMU
		// clears a page's bit before it copies the page, so a mark
		// must follow the write it covers.
		q.logUsedElems(old, q.usedIdx)
	}
	store32(q.used, 0, uint32(q.usedFlags)|uint32(q.usedIdx)<<16)
	if logged {
		q.dirty.Mark(q.usedGPA, 4)
	}
	if q.infl != nil {
		q.infl.published(q)
	}
	q.counts.Flushes++
	if q.call == nil {
		return
	}
	// Make the used->idx store visible before reading the driver's
	// suppression fields, or we could miss its request for a signal.
	fullFence(&q.fence)
	if q.eventIdx {
		if !NeedEvent(load16(q.avail, 4+2*int(q.size)), q.usedIdx, old) {
			return
		}
	} else if load16(q.avail, 0)&availFNoInterrupt != 0 {
		return
	}
	q.signal()
}

// signal notifies the front end through its call eventfd, from the
// notifier's goroutine (see notify.go): never a write on the poll core.
func (q *Virtqueue) signal() {
	q.counts.Signals++
	q.call.signal()
}

// NeedEvent is the virtio event-index test (vring_need_event): should the
// other side be notified now that its index moved from old to new, given it
// asked to be told when it passes event?
func NeedEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}
