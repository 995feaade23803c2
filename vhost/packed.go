package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Packed virtqueue layout (virtio 1.1+, 2.8). One ring of 16-byte
// descriptors {le64 addr; le32 len; le16 id; le16 flags} that driver and
// device both write; ownership of a slot is in its AVAIL/USED flag bits
// relative to a wrap counter each side keeps.
const (
	packedFAvail = 1 << 7
	packedFUsed  = 1 << 15

	// Event suppression flags (driver and device areas: {le16 off_wrap;
	// le16 flags}).
	packedEventEnable  = 0
	packedEventDisable = 1
	packedEventDesc    = 2

	wrapBit = 1 << 15

	unpopDepth = 64
)

var errBufferID = errors.New("packed buffer id out of range")

// packedState is the device's side of a packed ring.
type packedState struct {
	on        bool
	availWrap bool // wrap counter expected on the next available slot
	usedIdx   uint16
	usedWrap  bool
	ndesc     []uint16 // per buffer id: ring slots its chain took

	// The first used descriptor of a burst gets its flags at Flush, so the
	// driver sees the whole burst at once (as split rings publish used->idx
	// once).
	firstSlot  int // -1: none pending
	firstWord  uint32
	published  uint16 // usedIdx at the last Flush (ring index)
	publishedW bool   // usedWrap at the last Flush

	hist  [unpopDepth]uint16 // lastAvail|wrap before each recent pop
	nhist int
}

func (q *Virtqueue) initPacked(cfg QueueConfig) error {
	if cfg.Desc%16 != 0 || cfg.Avail%4 != 0 || cfg.Used%4 != 0 {
		return fmt.Errorf("vhost: packed queue %d: %w", cfg.Index, errRingMisaligned)
	}
	q.pk = packedState{on: true, ndesc: make([]uint16, cfg.Size), firstSlot: -1}
	q.lastAvail = cfg.LastAvail &^ wrapBit
	q.pk.availWrap = cfg.LastAvail&wrapBit != 0
	q.pk.usedIdx = cfg.LastUsed &^ wrapBit
	q.pk.usedWrap = cfg.LastUsed&wrapBit != 0
	if q.lastAvail >= q.size || q.pk.usedIdx >= q.size {
		return fmt.Errorf("vhost: packed queue %d: base %#x/%#x beyond size %d", cfg.Index, cfg.LastAvail, cfg.LastUsed, cfg.Size)
	}
	q.pk.published, q.pk.publishedW = q.pk.usedIdx, q.pk.usedWrap
	if err := q.translatePacked(cfg); err != nil {
		return err
	}
	q.setPolling()
	return nil
}

func (q *Virtqueue) translatePacked(cfg QueueConfig) error {
	var err error
	if q.desc, err = q.mem.TranslateUVA(cfg.Desc, descSize*uint64(cfg.Size)); err != nil {
		return fmt.Errorf("vhost: packed queue %d ring at %#x: %w: %w", cfg.Index, cfg.Desc, errRingOutsideGuest, err)
	}
	if q.avail, err = q.mem.TranslateUVA(cfg.Avail, 4); err != nil {
		return fmt.Errorf("vhost: packed queue %d driver area at %#x: %w: %w", cfg.Index, cfg.Avail, errRingOutsideGuest, err)
	}
	if q.used, err = q.mem.TranslateUVA(cfg.Used, 4); err != nil {
		return fmt.Errorf("vhost: packed queue %d device area at %#x: %w: %w", cfg.Index, cfg.Used, errRingOutsideGuest, err)
	}
	if !aligned4(q.desc, 0) || !aligned4(q.avail, 0) || !aligned4(q.used, 0) {
		return fmt.Errorf("vhost: packed queue %d: %w", cfg.Index, errRingMisaligned)
	}
	return nil
}

// PackedBase is the ring position as GET_VRING_BASE reports it for a packed
// ring: avail index and wrap counter in the low 16 bits, used index and
// wrap counter in the high 16 bits (the layout QEMU reads back).
func (q *Virtqueue) PackedBase() uint32 {
	a := uint32(q.lastAvail)
	if q.pk.availWrap {
		a |= wrapBit
	}
	u := uint32(q.pk.usedIdx)
	if q.pk.usedWrap {
		u |= wrapBit
	}
	return a | u<<16
}

// slotAvail reports whether the descriptor flags mark a slot available
// for the wrap counter w.
func slotAvail(flags uint16, w bool) bool {
	return (flags&packedFAvail != 0) == w && (flags&packedFUsed != 0) != w
}

func (q *Virtqueue) availPacked() int {
	// The flags half-word is read with acquire semantics (32-bit load of
	// id|flags): the descriptor's other fields are read after it.
	if slotAvail(uint16(load32(q.desc, descSize*int(q.lastAvail)+12)>>16), q.pk.availWrap) {
		return 1
	}
	return 0
}

func (q *Virtqueue) popPacked(c *Chain) (bool, error) {
	start := q.lastAvail
	if !slotAvail(uint16(load32(q.desc, descSize*int(start)+12)>>16), q.pk.availWrap) {
		return false, nil
	}
	c.Segs = c.Segs[:0]
	c.ReadLen, c.WriteLen = 0, 0
	idx, wrap := start, q.pk.availWrap
	var total uint64
	truncated := false
	var id, count uint16
	for {
		if count >= q.size {
			return false, q.fail(errDescLoop)
		}
		d := q.desc[descSize*int(idx) : descSize*int(idx)+descSize]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		id = binary.LittleEndian.Uint16(d[12:])
		flags := binary.LittleEndian.Uint16(d[14:])
		count++
		if flags&descFIndirect != 0 {
			if count != 1 || flags&descFNext != 0 {
				return false, q.fail(errIndirectNext)
			}
			if err := q.walkPackedIndirect(c, addr, length, &total, &truncated); err != nil {
				return false, q.fail(err)
			}
		} else if err := q.addBuffer(c, addr, length, flags, &total, &truncated); err != nil {
			return false, q.fail(err)
		}
		if idx++; idx == q.size {
			idx, wrap = 0, !wrap
		}
		if flags&descFNext == 0 {
			break
		}
	}
	if id >= q.size {
		return false, q.fail(errBufferID)
	}
	q.pk.ndesc[id] = count
	q.pk.hist[q.pk.nhist%unpopDepth] = packPos(start, q.pk.availWrap)
	q.pk.nhist++
	q.lastAvail, q.pk.availWrap = idx, wrap
	c.Head = id
	q.counts.Popped++
	if truncated {
		return true, ErrTooManySegs
	}
	return true, nil
}

// walkPackedIndirect adds the buffers of an indirect table: len/16 packed
// descriptors used in order (no NEXT chaining inside the table).
func (q *Virtqueue) walkPackedIndirect(c *Chain, addr uint64, length uint32, total *uint64, truncated *bool) error {
	if length == 0 || length%descSize != 0 {
		return errIndirectLen
	}
	t, err := q.mem.TranslateGPA(addr, uint64(length))
	if err != nil {
		return errIndirectAddr
	}
	// DPDK's virtio PMD (22.11) presets every entry of its TX indirect
	// tables to VRING_DESC_F_WRITE (vring_desc_init_indirect_packed) and
	// never rewrites the flags of entry 0, the virtio-net header, so each
	// multi-segment frame arrives as "writable header, readable data".
	// In a transmit queue (odd index: transmitq k is queue 2k+1, the
	// control queue 2N is even) the device only reads, so WRITE flags in
	// its indirect tables are ignored, as DPDK's vhost library ignores
	// them in every indirect table.
	deviceReadsOnly := q.index%2 == 1
	for i := 0; i < len(t); i += descSize {
		flags := binary.LittleEndian.Uint16(t[i+14:])
		if flags&descFIndirect != 0 {
			return errIndirectNested
		}
		if deviceReadsOnly {
			flags &^= descFWrite
		}
		if err := q.addBuffer(c, binary.LittleEndian.Uint64(t[i:]), binary.LittleEndian.Uint32(t[i+8:]), flags, total, truncated); err != nil {
			return err
		}
	}
	return nil
}

func packPos(idx uint16, wrap bool) uint16 {
	if wrap {
		return idx | wrapBit
	}
	return idx
}

func (q *Virtqueue) unpopPacked(n int) {
	if n <= 0 {
		return
	}
	if n > unpopDepth || n > q.pk.nhist {
		panic("vhost: Unpop beyond the packed ring's pop history")
	}
	q.pk.nhist -= n
	pos := q.pk.hist[q.pk.nhist%unpopDepth]
	q.inflightRewound(pos)
	q.lastAvail, q.pk.availWrap = pos&^wrapBit, pos&wrapBit != 0
}

func (q *Virtqueue) pushPacked(id uint16, written uint32) {
	if id >= q.size {
		return // not a buffer this queue handed out
	}
	slot := int(q.pk.usedIdx)
	d := q.desc[descSize*slot : descSize*slot+descSize]
	binary.LittleEndian.PutUint32(d[8:], written)
	var flags uint16
	if q.pk.usedWrap {
		flags = packedFAvail | packedFUsed
	}
	word := uint32(id) | uint32(flags)<<16
	if q.pk.firstSlot < 0 {
		q.pk.firstSlot, q.pk.firstWord = slot, word
	} else {
		store32(q.desc, descSize*slot+12, word)
	}
	q.pk.usedIdx += q.pk.ndesc[id]
	if q.pk.usedIdx >= q.size {
		q.pk.usedIdx -= q.size
		q.pk.usedWrap = !q.pk.usedWrap
	}
	q.pk.nhist = 0 // pushed chains cannot be unpopped
	q.counts.Pushed++
}

func (q *Virtqueue) flushPacked() {
	if q.pk.firstSlot < 0 {
		return
	}
	logged := q.dirty != nil && q.logRing
	if logged {
		q.logPackedSlots()
	}
	q.inflightPublishing()
	// Release store of the burst's first flags: every descriptor written
	// before becomes visible with it.
	store32(q.desc, descSize*q.pk.firstSlot+12, q.pk.firstWord)
	q.inflightPublished()
	if logged {
		q.dirty.Mark(q.descGPA+descSize*uint64(q.pk.firstSlot), descSize)
	}
	q.pk.firstSlot = -1
	old, oldW := q.pk.published, q.pk.publishedW
	q.pk.published, q.pk.publishedW = q.pk.usedIdx, q.pk.usedWrap
	q.counts.Flushes++
	if q.call == nil {
		return
	}
	fullFence(&q.fence)
	ev := load32(q.avail, 0) // off_wrap | flags<<16
	switch uint16(ev >> 16) {
	case packedEventDisable:
		return
	case packedEventDesc:
		if !q.eventIdx || !q.packedNeedEvent(uint16(ev), old, oldW) {
			return
		}
	}
	q.signal()
}

// logPackedSlots marks the descriptor slots written back since the last
// Flush: from the published position to the current one, wrapping.
func (q *Virtqueue) logPackedSlots() {
	from, to := uint64(q.pk.published), uint64(q.pk.usedIdx)
	size := uint64(q.size)
	switch {
	case from < to:
		q.dirty.Mark(q.descGPA+descSize*from, descSize*(to-from))
	case from == to && q.pk.publishedW == q.pk.usedWrap:
		// nothing written
	case from == to:
		q.dirty.Mark(q.descGPA, descSize*size)
	default:
		q.dirty.Mark(q.descGPA+descSize*from, descSize*(size-from))
		q.dirty.Mark(q.descGPA, descSize*to)
	}
}

// packedNeedEvent applies the event-index test to a packed ring: indexes
// live in [0, size) with wrap counters, so they are first brought onto one
// line (subtracting size for the older lap) as the Linux driver and DPDK
// do.
func (q *Virtqueue) packedNeedEvent(offWrap, old uint16, oldWrap bool) bool {
	newIdx := q.pk.usedIdx
	if oldWrap != q.pk.usedWrap {
		old -= q.size
	}
	off := offWrap &^ wrapBit
	if (offWrap&wrapBit != 0) != q.pk.usedWrap {
		off -= q.size
	}
	return NeedEvent(off, newIdx, old)
}
