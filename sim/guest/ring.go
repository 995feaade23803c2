package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Descriptor flags of a split ring.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// maxIndirect is the size of each head's indirect table.
const maxIndirect = 16

// Buf is one guest buffer of a chain.
type Buf struct {
	GPA   uint64
	Len   uint32
	Write bool // device-writable
}

// Ring is the driver side of a split virtqueue in guest memory.
type Ring struct {
	mem      *Memory
	size     uint16
	eventIdx bool

	DescGPA, AvailGPA, UsedGPA uint64
	desc, avail, used          []byte
	indirectGPA                uint64 // size tables of maxIndirect descriptors

	free     []uint16
	chainLen []uint16 // by head: descriptors its chain holds in the table (0: no chain)

	packed    bool
	pk        packedDriver
	availIdx  uint16 // next avail index to publish
	published uint16
	lastUsed  uint16
}

// ErrRingFull means no descriptors are free.
var ErrRingFull = errors.New("guest: ring full")

// NewRing lays out a split ring of size entries in mem (region 0).
func NewRing(mem *Memory, size uint16, eventIdx bool) (*Ring, error) {
	if size == 0 || size&(size-1) != 0 {
		return nil, fmt.Errorf("guest: ring size %d not a power of two", size)
	}
	n := uint64(size)
	r := &Ring{mem: mem, size: size, eventIdx: eventIdx, chainLen: make([]uint16, size)}
	var err error
	alloc := func(sz uint64) uint64 {
		if err != nil {
			return 0
		}
		var gpa uint64
		gpa, err = mem.AllocIn(0, sz, 4096)
		return gpa
	}
	r.DescGPA = alloc(16 * n)
	r.AvailGPA = alloc(6 + 2*n)
	r.UsedGPA = alloc(6 + 8*n)
	r.indirectGPA = alloc(16 * maxIndirect * n)
	if err != nil {
		return nil, err
	}
	r.desc = mem.Bytes(r.DescGPA, 16*n)
	r.avail = mem.Bytes(r.AvailGPA, 6+2*n)
	r.used = mem.Bytes(r.UsedGPA, 6+8*n)
	r.Reset()
	return r, nil
}

// Reset clears the ring to its initial state (device reset).
func (r *Ring) Reset() {
	if r.packed {
		r.resetPacked()
		return
	}
	clear(r.desc)
	clear(r.avail)
	clear(r.used)
	r.free = r.free[:0]
	for i := int(r.size) - 1; i >= 0; i-- {
		r.free = append(r.free, uint16(i))
	}
	clear(r.chainLen)
	r.availIdx, r.published, r.lastUsed = 0, 0, 0
}

// Size is the number of descriptors.
func (r *Ring) Size() uint16 { return r.size }

// Free is the number of free descriptors (ring slots of a packed ring).
func (r *Ring) Free() int {
	if r.packed {
		return r.pk.freeSlots
	}
	return len(r.free)
}

// Addrs returns the ring's addresses as the front end reports them
// (SET_VRING_ADDR: user addresses).
func (r *Ring) Addrs() (desc, avail, used uint64) {
	return r.mem.UVA(r.DescGPA), r.mem.UVA(r.AvailGPA), r.mem.UVA(r.UsedGPA)
}

// Desc returns descriptor i's 16 bytes for inspection or sabotage.
func (r *Ring) Desc(i uint16) []byte { return r.desc[16*int(i) : 16*int(i)+16] }

func putDesc(d []byte, b Buf, flags uint16, next uint16) {
	binary.LittleEndian.PutUint64(d, b.GPA)
	binary.LittleEndian.PutUint32(d[8:], b.Len)
	if b.Write {
		flags |= DescWrite
	}
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// Add makes a chain of bufs available (not yet published: see Publish).
// With indirect, the chain goes into the head's indirect table and takes
// one ring descriptor.
func (r *Ring) Add(bufs []Buf, indirect bool) (uint16, error) {
	if len(bufs) == 0 {
		return 0, errors.New("guest: empty chain")
	}
	if r.packed {
		return r.addPacked(bufs, indirect)
	}
	need := len(bufs)
	if indirect {
		if len(bufs) > maxIndirect {
			return 0, fmt.Errorf("guest: %d buffers exceed the indirect table", len(bufs))
		}
		need = 1
	}
	if need > len(r.free) {
		return 0, ErrRingFull
	}
	ids := r.free[len(r.free)-need:]
	r.free = r.free[:len(r.free)-need]
	head := ids[need-1]
	if indirect {
		tgpa := r.indirectGPA + uint64(head)*16*maxIndirect
		table := r.mem.Bytes(tgpa, 16*uint64(len(bufs)))
		for i, b := range bufs {
			var fl uint16
			if i < len(bufs)-1 {
				fl = DescNext
			}
			putDesc(table[16*i:], b, fl, uint16(i+1))
		}
		putDesc(r.Desc(head), Buf{GPA: tgpa, Len: uint32(16 * len(bufs))}, DescIndirect, 0)
	} else {
		for i := range need {
			id := ids[need-1-i]
			var fl, next uint16
			if i < need-1 {
				fl, next = DescNext, ids[need-2-i]
			}
			putDesc(r.Desc(id), bufs[i], fl, next)
		}
	}
	r.chainLen[head] = uint16(need)
	r.avail[4+2*int(r.availIdx&(r.size-1))] = byte(head)
	r.avail[5+2*int(r.availIdx&(r.size-1))] = byte(head >> 8)
	r.availIdx++
	return head, nil
}

// Publish makes every added chain visible to the device (release store of
// avail->idx) and reports whether the device wants a kick.
func (r *Ring) Publish() bool {
	if r.packed {
		return load16(r.used, 2) != packedEventDisable
	}
	old := r.published
	r.published = r.availIdx
	store32(r.avail, 0, uint32(load16(r.avail, 0))|uint32(r.availIdx)<<16)
	if r.eventIdx {
		ev := load16(r.used, 4+8*int(r.size))
		return uint16(r.availIdx-ev-1) < uint16(r.availIdx-old)
	}
	return load16(r.used, 0)&1 == 0 // VRING_USED_F_NO_NOTIFY
}

// SetNoInterrupt sets or clears VRING_AVAIL_F_NO_INTERRUPT.
func (r *Ring) SetNoInterrupt(on bool) {
	if r.packed {
		f := uint16(packedEventEnable)
		if on {
			f = packedEventDisable
		}
		store16(r.avail, 2, f)
		return
	}
	var f uint16
	if on {
		f = 1
	}
	store32(r.avail, 0, uint32(f)|uint32(r.published)<<16)
}

// SetUsedEvent asks for a call once the device's used index passes idx
// (EVENT_IDX).
// On a packed ring idx is the used position with the wrap counter in bit 15.
func (r *Ring) SetUsedEvent(idx uint16) {
	if r.packed {
		store32(r.avail, 0, uint32(idx)|packedEventDesc<<16)
		return
	}
	store16(r.avail, 4+2*int(r.size), idx)
}

// UsedIdx is the device's used->idx.
func (r *Ring) UsedIdx() uint16 { return uint16(load32(r.used, 0) >> 16) }

// UsedFlags is the device's used->flags.
func (r *Ring) UsedFlags() uint16 { return uint16(load32(r.used, 0)) }

// AvailEvent is the device's avail_event field.
func (r *Ring) AvailEvent() uint16 { return load16(r.used, 4+8*int(r.size)) }

// LastUsed is the next used entry the driver will consume.
func (r *Ring) LastUsed() uint16 { return r.lastUsed }

// AvailIdx is the next avail index the driver will publish.
func (r *Ring) AvailIdx() uint16 { return r.availIdx }

// Used takes the next used entry, freeing its descriptors.
func (r *Ring) Used() (head uint16, length uint32, ok bool) {
	if r.packed {
		return r.usedPacked()
	}
	if r.UsedIdx() == r.lastUsed {
		return 0, 0, false
	}
	e := r.used[4+8*int(r.lastUsed&(r.size-1)):]
	head = uint16(binary.LittleEndian.Uint32(e))
	length = binary.LittleEndian.Uint32(e[4:])
	r.lastUsed++
	// The head is the device's word: one that is no chain's frees nothing.
	var n uint16
	if int(head) < len(r.chainLen) {
		n, r.chainLen[head] = r.chainLen[head], 0
	}
	id := head
	for range n {
		r.free = append(r.free, id)
		id = binary.LittleEndian.Uint16(r.Desc(id)[14:])
	}
	return head, length, true
}

// Restart is the SET_VRING_BASE value after a (re)connect: the device
// restarts at used->idx, what QEMU sends. A packed ring restarts where the
// driver last consumed a used descriptor, for both sides, with the wrap
// counters in bits 15 and 31.
func (r *Ring) Restart() uint32 {
	if r.packed {
		p := uint32(r.lastUsed)
		if r.pk.usedWrap {
			p |= 1 << 15
		}
		return p | p<<16
	}
	return uint32(r.UsedIdx())
}

// Repost makes head available again without rewriting its descriptors (a
// driver recycling a buffer; used by allocation-free benchmarks together
// with SkipUsed instead of Add/Used).
func (r *Ring) Repost(head uint16) {
	store16(r.avail, 4+2*int(r.availIdx&(r.size-1)), head)
	r.availIdx++
}

// SkipUsed consumes every used entry without freeing descriptors (see
// Repost) and returns how many there were.
func (r *Ring) SkipUsed() int {
	n := int(r.UsedIdx() - r.lastUsed)
	r.lastUsed += uint16(n)
	return n
}

// PublishRaw stores avail->idx = idx without kick logic (for tests that
// make the driver misbehave).
func (r *Ring) PublishRaw(idx uint16) {
	store32(r.avail, 0, uint32(load16(r.avail, 0))|uint32(idx)<<16)
}

// slotTable maps the heads of chains on a ring (below the ring's size) to
// the buffer slots they use. A slice, not a map: it is looked up for every
// frame the built-in guest sends and receives, and heads come from the
// device, so a head the table does not hold (out of range, or no chain's)
// reads as absent.
type slotTable []int32

func newSlotTable(size int) slotTable {
	t := make(slotTable, size)
	t.reset()
	return t
}

func (t slotTable) get(head uint16) (int, bool) {
	if int(head) >= len(t) || t[head] < 0 {
		return 0, false
	}
	return int(t[head]), true
}

// take is get, removing the head.
func (t slotTable) take(head uint16) (int, bool) {
	s, ok := t.get(head)
	if ok {
		t[head] = -1
	}
	return s, ok
}

func (t slotTable) set(head uint16, slot int) { t[head] = int32(slot) }

func (t slotTable) reset() {
	for i := range t {
		t[i] = -1
	}
}
