package guest

import (
	"encoding/binary"
	"fmt"
)

// Packed ring constants (virtio 1.1+, 2.8).
const (
	packedAvail        = 1 << 7
	packedUsed         = 1 << 15
	packedEventEnable  = 0
	packedEventDisable = 1
	packedEventDesc    = 2
)

// packedDriver is the driver's state of a packed ring.
type packedDriver struct {
	availWrap bool // wrap counter of the next slot the driver fills
	usedWrap  bool // wrap counter of the next used descriptor to read
	freeSlots int
	ids       []uint16 // free buffer ids
	ndesc     []uint16 // per id: ring slots its chain took
}

// NewPackedRing lays out a packed ring of size descriptors in mem: the
// descriptor ring, and 4-byte driver and device event suppression areas
// (reported as avail and used addresses).
func NewPackedRing(mem *Memory, size uint16, eventIdx bool) (*Ring, error) {
	if size == 0 || size > 1<<15 {
		return nil, fmt.Errorf("guest: packed ring size %d", size)
	}
	r := &Ring{mem: mem, size: size, eventIdx: eventIdx, packed: true}
	var err error
	for _, f := range []struct {
		gpa *uint64
		n   uint64
	}{{&r.DescGPA, 16 * uint64(size)}, {&r.AvailGPA, 4}, {&r.UsedGPA, 4}, {&r.indirectGPA, 16 * maxIndirect * uint64(size)}} {
		if *f.gpa, err = mem.AllocIn(0, f.n, 4096); err != nil {
			return nil, err
		}
	}
	r.desc = mem.Bytes(r.DescGPA, 16*uint64(size))
	r.avail = mem.Bytes(r.AvailGPA, 4)
	r.used = mem.Bytes(r.UsedGPA, 4)
	r.pk.ndesc = make([]uint16, size)
	r.Reset()
	return r, nil
}

func (r *Ring) resetPacked() {
	clear(r.desc)
	clear(r.avail)
	clear(r.used)
	r.pk.availWrap, r.pk.usedWrap = true, true
	r.pk.freeSlots = int(r.size)
	r.pk.ids = r.pk.ids[:0]
	for i := int(r.size) - 1; i >= 0; i-- {
		r.pk.ids = append(r.pk.ids, uint16(i))
	}
	r.availIdx, r.lastUsed = 0, 0
}

func (r *Ring) availFlags(write, next bool) uint16 {
	var f uint16
	if write {
		f |= DescWrite
	}
	if next {
		f |= DescNext
	}
	if r.pk.availWrap {
		f |= packedAvail
	} else {
		f |= packedUsed
	}
	return f
}

// addPacked writes a chain into consecutive ring slots; the first slot's
// flags are stored last (release), which hands the chain to the device.
func (r *Ring) addPacked(bufs []Buf, indirect bool) (uint16, error) {
	need := len(bufs)
	if indirect {
		need = 1
	}
	if need > r.pk.freeSlots || len(r.pk.ids) == 0 {
		return 0, ErrRingFull
	}
	id := r.pk.ids[len(r.pk.ids)-1]
	r.pk.ids = r.pk.ids[:len(r.pk.ids)-1]
	if indirect {
		tgpa := r.indirectGPA + uint64(id)*16*maxIndirect
		table := r.mem.Bytes(tgpa, 16*uint64(len(bufs)))
		for i, b := range bufs {
			putPacked(table[16*i:], b.GPA, b.Len, uint16(i), 0)
			if b.Write {
				binary.LittleEndian.PutUint16(table[16*i+14:], DescWrite)
			}
		}
		bufs = []Buf{{GPA: tgpa, Len: uint32(16 * len(bufs))}}
	}
	first := int(r.availIdx)
	var firstWord uint32
	for k, b := range bufs {
		slot := int(r.availIdx)
		flags := r.availFlags(b.Write, k < len(bufs)-1)
		if indirect {
			flags |= DescIndirect
		}
		putPacked(r.desc[16*slot:], b.GPA, b.Len, id, 0)
		if k == 0 {
			firstWord = uint32(id) | uint32(flags)<<16
		} else {
			store32(r.desc, 16*slot+12, uint32(id)|uint32(flags)<<16)
		}
		if r.availIdx++; r.availIdx == r.size {
			r.availIdx, r.pk.availWrap = 0, !r.pk.availWrap
		}
	}
	store32(r.desc, 16*first+12, firstWord)
	r.pk.ndesc[id] = uint16(need)
	r.pk.freeSlots -= need
	return id, nil
}

func putPacked(d []byte, addr uint64, length uint32, id, flags uint16) {
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], id)
	binary.LittleEndian.PutUint16(d[14:], flags)
}

func (r *Ring) usedPacked() (uint16, uint32, bool) {
	slot := int(r.lastUsed)
	w := load32(r.desc, 16*slot+12)
	flags := uint16(w >> 16)
	if (flags&packedUsed != 0) != r.pk.usedWrap || (flags&packedAvail != 0) != r.pk.usedWrap {
		return 0, 0, false
	}
	id := uint16(w)
	length := binary.LittleEndian.Uint32(r.desc[16*slot+8:])
	if id >= r.size {
		panic(fmt.Sprintf("guest: device used packed buffer id %d", id))
	}
	n := r.pk.ndesc[id]
	r.lastUsed += n
	if r.lastUsed >= r.size {
		r.lastUsed -= r.size
		r.pk.usedWrap = !r.pk.usedWrap
	}
	r.pk.freeSlots += int(n)
	r.pk.ids = append(r.pk.ids, id)
	return id, length, true
}
