package vhost

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Inflight tracking for packed rings (QEMU's docs/interop/vhost-user.rst,
// "Inflight I/O tracking", QueueRegionPacked). A packed ring has no
// available ring to find a taken chain in again: the slots a chain came
// from are overwritten by used descriptors of other chains as soon as
// chains complete out of order. So the region keeps a copy of every
// descriptor taken, in entries allocated from a free list:
//
//	u64 features; u16 version; u16 desc_num; u16 free_head; u16 old_free_head;
//	u16 used_idx; u16 old_used_idx; u8 used_wrap_counter; u8 old_used_wrap_counter;
//	u8 padding[7];
//	desc[desc_num] { u8 inflight; u8 padding; u16 next; u16 last; u16 num;
//	                 u64 counter; u16 id; u16 flags; u32 len; u64 addr }
//
// A chain of num descriptors takes num entries linked through next, the
// first (its head entry) holding inflight, counter, num and last. The old_
// fields are the committed state: a back end that crashes part way through
// an update leaves them as they were, and the next one rolls back to them
// (or forward, if the used descriptors were already published).
//
// The back end's own copy of the links (next, last, num, the free list's
// head) is what it reads while the ring runs: the front end can write the
// region at any time, and nothing it writes there may steer the data path.
// The region is read only when a ring starts, and checked in full then.
//
// Where a resumed ring stands: every slot the device took from the ring is
// either behind the committed used position (its chain was used) or
// belongs to a chain still inflight, so the available position is the used
// position plus the slots of the inflight chains. The ring's position from
// SET_VRING_BASE is not used: after a crash QEMU has no packed ring
// position to send but the one of the previous start
// (virtio_queue_packed_restore_last_avail_idx restores nothing), which is
// also why DPDK's rte_vhost_get_vring_base_from_inflight exists.

// Layout of a packed ring's region.
const (
	pkInflHdrSize    = 32
	pkInflOffVers    = 8
	pkInflOffNum     = 10
	pkInflOffFree    = 12 // free_head
	pkInflOffOldFree = 14 // old_free_head
	// used_idx, old_used_idx, used_wrap_counter, old_used_wrap_counter
	// and two bytes of padding: 8 aligned bytes written at once.
	pkInflOffUsed = 16

	pkInflDescSize = 32
	pkdNext        = 2
	pkdLast        = 4
	pkdNum         = 6
	pkdCounter     = 8
	pkdID          = 16
	pkdFlags       = 18
	pkdLen         = 20
	pkdAddr        = 24

	noEntry = 0xffff // entryOf: the buffer id is not tracked
)

// pkDesc is a descriptor copied from the region for resubmission.
type pkDesc struct {
	addr   uint64
	length uint32
	flags  uint16
}

// pkChain is a chain found inflight when the ring started.
type pkChain struct {
	head, id, num uint16
	counter       uint64
	off           uint16 // ring slots from the resume position to its first slot
	descs         []pkDesc
}

// pkPop is a chain taken from the ring: the position it was taken at and
// its buffer id, kept so that a rewind can give it back.
type pkPop struct{ pos, id uint16 }

// packedInflight is a packed ring's tracking state.
type packedInflight struct {
	r       []byte
	size    uint16
	counter uint64

	next     []uint16 // entry links: free list and chains
	last     []uint16 // per head entry: its chain's last entry
	num      []uint16 // per head entry: its chain's descriptors (ring slots)
	freeHead uint16   // old_free_head; size: the list is empty
	nfree    int
	entryOf  []uint16 // per buffer id: head entry, or noEntry
	batch    []uint16 // head entries pushed since the last Flush

	// pops are the most recent chains taken from the ring (a circular
	// buffer of size entries; a rewind never goes back further).
	pops  []pkPop
	npops int
	pEnd  int

	// resubmit lists the chains found inflight, in counter order. They
	// are handed out as if they took the slots from rsStart on, one
	// after the other (off), so that AvailPos, RewindTo and Unpop work
	// on them as on any chain; rsNext is the next one to hand out and
	// rsEnd the position after the last.
	resubmit []pkChain
	rsStart  uint16
	rsEnd    uint16
	rsNext   int
}

func (t *packedInflight) desc(e uint16) int { return pkInflHdrSize + pkInflDescSize*int(e) }

func (t *packedInflight) resubmitted() int { return len(t.resubmit) }

// lin puts a packed position (index, wrap counter in bit 15) on a line of
// 2*size slots, so that distances between positions less than a lap apart
// are plain differences.
func (t *packedInflight) lin(pos uint16) int {
	l := int(pos &^ wrapBit)
	if pos&wrapBit != 0 {
		l += int(t.size)
	}
	return l
}

// dist is the number of slots from position a forward to position b.
func (t *packedInflight) dist(a, b uint16) int {
	d := t.lin(b) - t.lin(a)
	if d < 0 {
		d += 2 * int(t.size)
	}
	return d
}

// advance is position p moved n slots forward (n <= size).
func (t *packedInflight) advance(p uint16, n int) uint16 {
	idx, wrap := int(p&^wrapBit)+n, p&wrapBit
	if idx >= int(t.size) {
		idx -= int(t.size)
		wrap ^= wrapBit
	}
	return uint16(idx) | wrap
}

// storeUsed writes used_idx, old_used_idx and both wrap counters with one
// aligned 8-byte store (a single instruction on amd64 and arm64), so that
// a crash never leaves an index with the other index's wrap counter.
func (t *packedInflight) storeUsed(used uint16, usedWrap bool, old uint16, oldWrap bool) {
	v := uint64(used) | uint64(old)<<16
	if usedWrap {
		v |= 1 << 32
	}
	if oldWrap {
		v |= 1 << 40
	}
	binary.LittleEndian.PutUint64(t.r[pkInflOffUsed:], v)
}

// attachPacked starts tracking q (packed, about to start) in region r and
// resumes from it as the spec's "When reconnecting" says for packed rings:
// commit the last update if its used descriptors were published (the slot
// at old_used_idx carries the used flags of old_used_wrap_counter), else
// roll back to the old_ fields; clear the free list's inflight flags; then
// resubmit every chain still inflight, in counter order. Anything in r
// that no correct back end writes is refused with ErrInflightCorrupt
// before q takes anything from it, and so is a chain whose buffers are not
// in guest memory.
func (q *Virtqueue) attachPacked(r []byte) error {
	n := int(q.size)
	t := &packedInflight{r: r, size: q.size, next: make([]uint16, n), last: make([]uint16, n),
		num: make([]uint16, n), entryOf: make([]uint16, n), batch: make([]uint16, 0, n), pops: make([]pkPop, n)}
	for i := range t.entryOf {
		t.entryOf[i] = noEntry
	}
	fresh, err := checkRegionHeader(r, pkInflOffVers, pkInflOffNum, q.size)
	if err != nil {
		return err
	}
	if fresh {
		// A new buffer: laid out here, from the ring's position, rather
		// than trusting anything a front end left in it.
		clear(r)
		store16(r, pkInflOffNum, q.size)
		for e := range q.size {
			t.next[e] = e + 1
			store16(r, t.desc(e)+pkdNext, e+1)
		}
		t.nfree = n
		t.storeUsed(q.pk.usedIdx, q.pk.usedWrap, q.pk.usedIdx, q.pk.usedWrap)
		store16(r, pkInflOffVers, inflightVersion)
		q.infl = t
		return nil
	}
	used, old := load16(r, pkInflOffUsed), load16(r, pkInflOffUsed+2)
	usedW, oldW := r[pkInflOffUsed+4], r[pkInflOffUsed+5]
	free, oldFree := load16(r, pkInflOffFree), load16(r, pkInflOffOldFree)
	if used >= q.size || old >= q.size || usedW > 1 || oldW > 1 || free > q.size || oldFree > q.size {
		return fmt.Errorf("%w: used_idx %d/%d, wrap counters %d/%d, free_head %d/%d out of range (ring of %d)",
			ErrInflightCorrupt, used, old, usedW, oldW, free, oldFree, q.size)
	}
	if used != old || usedW != oldW {
		// An update was under way. Its first used descriptor, at
		// old_used_idx, is the one whose flags publish it.
		f := uint16(load32(q.desc, descSize*int(old)+12) >> 16)
		w := oldW == 1
		if (f&packedFAvail != 0) == w && (f&packedFUsed != 0) == w {
			old, oldW, oldFree = used, usedW, free // published: commit
		}
	}
	free = oldFree // and roll back whatever was not committed
	// Entries in the free list are not inflight (a batch just committed
	// still has its flags set; a chain being taken when the back end died
	// is the free list's head, not yet taken).
	for h, k := free, 0; h < q.size && k < n; k++ {
		store16(r, t.desc(h), 0)
		h = load16(r, t.desc(h)+pkdNext)
	}
	chains, err := t.collect(q)
	if err != nil {
		return err
	}
	// Resume position: the used position plus the slots of the inflight
	// chains. Those slots must all have been made available by the driver
	// in the lap the position says (their AVAIL flag is that lap's wrap
	// counter, whether the device has overwritten them with used
	// descriptors since or not): a region that claims more than the
	// driver gave is not this ring's.
	start := old
	if oldW == 1 {
		start |= wrapBit
	}
	total := 0
	for i := range chains {
		chains[i].off = uint16(total)
		total += int(chains[i].num)
	}
	for k := range total {
		p := t.advance(start, k)
		f := uint16(load32(q.desc, descSize*int(p&^wrapBit)+12) >> 16)
		if (f&packedFAvail != 0) != (p&wrapBit != 0) {
			return fmt.Errorf("%w: %d ring slots inflight from position %#x, but slot %d was not made available in that lap",
				ErrInflightCorrupt, total, start, p&^wrapBit)
		}
	}
	// Everything checked: from here on the region is rewritten into the
	// state the in-memory copy describes.
	inChain := make([]bool, n)
	for _, c := range chains {
		e := c.head
		for k := range c.num {
			inChain[e] = true
			if k+1 < c.num {
				e = t.next[e]
			}
		}
		t.entryOf[c.id] = c.head
		t.counter = max(t.counter, c.counter+1)
		q.pk.ndesc[c.id] = c.num
	}
	// The free list is rebuilt from every entry no chain holds: entries a
	// crash left out of it are found again.
	tail := q.size
	for e := q.size; e > 0; e-- {
		if !inChain[e-1] {
			t.next[e-1] = tail
			store16(r, t.desc(e-1)+pkdNext, tail)
			tail = e - 1
			t.nfree++
		}
	}
	t.freeHead = tail
	store32(r, pkInflOffFree, uint32(tail)|uint32(tail)<<16)
	w := oldW == 1
	t.storeUsed(old, w, old, w)
	t.resubmit, t.rsStart, t.rsEnd = chains, start, t.advance(start, total)
	q.pk.usedIdx, q.pk.usedWrap = old, w
	q.pk.published, q.pk.publishedW = old, w
	q.lastAvail, q.pk.availWrap = old, w
	q.pk.nhist = 0
	q.infl = t
	return nil
}

// collect reads and checks every chain marked inflight in the region:
// inflight flags 0 or 1, chains of 1..size entries linked from their head
// to its last, no entry in two chains, NEXT on every descriptor but the
// last, INDIRECT only alone, buffer ids in range and distinct, no more
// slots than the ring has, and every buffer in guest memory. They come
// back in counter order (then head order: equal counters still give one
// order). The links of their entries are copied into t.next.
func (t *packedInflight) collect(q *Virtqueue) ([]pkChain, error) {
	r, size := t.r, q.size
	seen := make([]bool, size)
	ids := make([]bool, size)
	var chains []pkChain
	total := 0
	for h := range size {
		switch f := r[t.desc(h)]; f {
		case 0:
			continue
		case 1:
		default:
			return nil, fmt.Errorf("%w: entry %d has inflight flag %d", ErrInflightCorrupt, h, f)
		}
		d := t.desc(h)
		c := pkChain{head: h, num: load16(r, d+pkdNum), counter: binary.LittleEndian.Uint64(r[d+pkdCounter:])}
		if c.num == 0 || c.num > size {
			return nil, fmt.Errorf("%w: entry %d heads a chain of %d descriptors (ring of %d)", ErrInflightCorrupt, h, c.num, size)
		}
		if total += int(c.num); total > int(size) {
			return nil, fmt.Errorf("%w: chains of more than %d descriptors inflight", ErrInflightCorrupt, size)
		}
		e := h
		for k := range c.num {
			if e >= size || seen[e] {
				return nil, fmt.Errorf("%w: chain at entry %d reaches entry %d, out of range or in another chain", ErrInflightCorrupt, h, e)
			}
			seen[e] = true
			de := t.desc(e)
			pd := pkDesc{addr: binary.LittleEndian.Uint64(r[de+pkdAddr:]), length: binary.LittleEndian.Uint32(r[de+pkdLen:]),
				flags: load16(r, de+pkdFlags)}
			lastDesc := k+1 == c.num
			if (pd.flags&descFNext != 0) == lastDesc || (pd.flags&descFIndirect != 0 && c.num != 1) {
				return nil, fmt.Errorf("%w: descriptor %d of the chain at entry %d has flags %#x", ErrInflightCorrupt, k, h, pd.flags)
			}
			c.descs = append(c.descs, pd)
			if lastDesc {
				c.id = load16(r, de+pkdID)
				break
			}
			t.next[e] = load16(r, de+pkdNext)
			e = t.next[e]
		}
		if l := load16(r, d+pkdLast); l != e {
			return nil, fmt.Errorf("%w: chain at entry %d ends at entry %d, its last says %d", ErrInflightCorrupt, h, e, l)
		}
		if c.id >= size || ids[c.id] {
			return nil, fmt.Errorf("%w: chain at entry %d has buffer id %d, out of range or taken twice", ErrInflightCorrupt, h, c.id)
		}
		ids[c.id] = true
		t.last[h], t.num[h] = e, c.num
		// The same checks as a chain popped from the ring, the buffers
		// themselves not kept.
		var scratch Chain
		if _, err := t.walk(q, &scratch, c.descs); err != nil {
			return nil, fmt.Errorf("%w: chain at entry %d: %w", ErrInflightCorrupt, h, err)
		}
		chains = append(chains, c)
	}
	slices.SortFunc(chains, func(a, b pkChain) int {
		if a.counter != b.counter {
			if a.counter < b.counter {
				return -1
			}
			return 1
		}
		return int(a.head) - int(b.head)
	})
	return chains, nil
}

// walk fills c from descriptors copied out of the region, checking them as
// popPacked checks the ring's: order of readable and writable buffers,
// total length, guest memory. truncated reports a full c.Segs.
func (t *packedInflight) walk(q *Virtqueue, c *Chain, descs []pkDesc) (truncated bool, err error) {
	c.Segs = c.Segs[:0]
	c.ReadLen, c.WriteLen = 0, 0
	var total uint64
	for _, d := range descs {
		if d.flags&descFIndirect != 0 {
			err = q.walkPackedIndirect(c, d.addr, d.length, &total, &truncated)
		} else {
			err = q.addBuffer(c, d.addr, d.length, d.flags, &total, &truncated)
		}
		if err != nil {
			return false, err
		}
	}
	return truncated, nil
}

// pop is Pop on a tracked packed ring: the resubmitted chains first, at
// the positions they are handed out as taking, then new chains from the
// ring, each recorded in the region before it is returned.
func (t *packedInflight) pop(q *Virtqueue, c *Chain) (bool, error) {
	if t.rsNext < len(t.resubmit) {
		pos := q.AvailPos()
		if ch := &t.resubmit[t.rsNext]; t.dist(t.rsStart, pos) == int(ch.off) {
			truncated, err := t.walk(q, c, ch.descs)
			if err != nil {
				return false, q.fail(err) // the memory table changed since the start
			}
			c.Head = ch.id
			q.pk.ndesc[ch.id] = ch.num
			q.pk.hist[q.pk.nhist%unpopDepth] = pos
			q.pk.nhist++
			next := t.advance(pos, int(ch.num))
			q.lastAvail, q.pk.availWrap = next&^wrapBit, next&wrapBit != 0
			t.rsNext++
			q.counts.Popped++
			if truncated {
				return true, ErrTooManySegs
			}
			return true, nil
		}
	}
	start := q.AvailPos()
	q.infl = nil // Pop without the hook, then record what it took
	ok, err := q.Pop(c)
	q.infl = t
	if ok {
		t.record(q, start, c.Head)
	}
	return ok, err
}

// record writes the chain with buffer id just taken from the ring at
// position start into the region, in the spec's order: the head entry
// (old_free_head) gets num 0, the counter and inflight 1; then each
// descriptor is copied into the next free entry, free_head following;
// old_free_head moves past the chain last, which is what commits it. A
// chain whose id is already tracked, or that needs more entries than are
// free, is a driver reusing what it has not had back: it is not tracked.
func (t *packedInflight) record(q *Virtqueue, start, id uint16) {
	if t.resubmit != nil && t.dist(t.rsStart, start) >= int(t.size) {
		// A lap past the resubmitted chains: no rewind can reach them
		// (it would span more than the ring), and positions compared on
		// a line of two laps would soon alias to theirs.
		t.resubmit, t.rsNext, t.rsStart = nil, 0, t.rsEnd
	}
	if id >= t.size {
		return
	}
	n := q.pk.ndesc[id]
	if t.entryOf[id] != noEntry || int(n) > t.nfree || n == 0 {
		return
	}
	r := t.r
	h := t.freeHead
	d := t.desc(h)
	store16(r, d+pkdNum, 0)
	binary.LittleEndian.PutUint64(r[d+pkdCounter:], t.counter)
	t.counter++
	store16(r, d, 1) // inflight = 1, padding = 0
	e, slot := h, int(start&^wrapBit)
	for k := range n {
		if k+1 == n {
			store16(r, d+pkdLast, e)
			t.last[h] = e
		}
		store16(r, d+pkdNum, k+1)
		s, de := q.desc[descSize*slot:descSize*slot+descSize], t.desc(e)
		binary.LittleEndian.PutUint64(r[de+pkdAddr:], binary.LittleEndian.Uint64(s))
		binary.LittleEndian.PutUint32(r[de+pkdLen:], binary.LittleEndian.Uint32(s[8:]))
		store32(r, de+pkdID, binary.LittleEndian.Uint32(s[12:])) // id, flags
		e = t.next[e]
		store16(r, pkInflOffFree, e)
		if slot++; slot == int(t.size) {
			slot = 0
		}
	}
	store16(r, pkInflOffOldFree, e)
	t.freeHead, t.nfree = e, t.nfree-int(n)
	t.num[h], t.entryOf[id] = n, h
	t.pops[t.pEnd] = pkPop{start, id}
	t.pEnd = (t.pEnd + 1) & int(t.size-1)
	t.npops = min(t.npops+1, int(t.size))
}

// pushed notes a used entry for buffer id; the region changes at Flush.
func (t *packedInflight) pushed(id uint16) {
	if id >= t.size || t.entryOf[id] == noEntry {
		return
	}
	t.batch = append(t.batch, t.entryOf[id])
	t.entryOf[id] = noEntry
}

// publishing runs just before Flush publishes the used descriptors: each
// chain of the batch goes back to the head of the free list (next of its
// last entry, then free_head), and used_idx and used_wrap_counter take the
// ring's new used position. Nothing of it is committed (old_ fields) yet.
func (t *packedInflight) publishing(q *Virtqueue) {
	for _, h := range t.batch {
		l := t.last[h]
		store16(t.r, t.desc(l)+pkdNext, t.freeHead)
		t.next[l], t.freeHead = t.freeHead, h
		store16(t.r, pkInflOffFree, h)
		t.nfree += int(t.num[h])
	}
	// The ring's published position is still the committed one here.
	t.storeUsed(q.pk.usedIdx, q.pk.usedWrap, q.pk.published, q.pk.publishedW)
}

// published runs just after Flush published the used descriptors: the
// batch's inflight flags are cleared, then the update is committed.
func (t *packedInflight) published(q *Virtqueue) {
	for _, h := range t.batch {
		store16(t.r, t.desc(h), 0)
	}
	t.batch = t.batch[:0]
	store16(t.r, pkInflOffOldFree, t.freeHead)
	t.storeUsed(q.pk.usedIdx, q.pk.usedWrap, q.pk.usedIdx, q.pk.usedWrap)
}

// rewound runs before the ring moves back from its position to pos
// (Unpop, RewindTo). Resubmitted chains at or after pos stay inflight and
// are handed out again from pos; chains taken from the ring at or after
// pos will be taken again, so they go back to the free list, newest first
// (a crash part way then leaves the oldest still inflight, and the resume
// position still ends right after the inflight ones).
func (t *packedInflight) rewound(q *Virtqueue, pos uint16) {
	n := t.dist(pos, q.AvailPos())
	if n > int(t.size) {
		return // not a rewind Pop's positions allow
	}
	if off := t.dist(t.rsStart, pos); off < t.dist(t.rsStart, t.rsEnd) {
		t.rsNext = 0
		for t.rsNext < len(t.resubmit) && int(t.resubmit[t.rsNext].off) < off {
			t.rsNext++
		}
	}
	for t.npops > 0 {
		i := (t.pEnd - 1) & int(t.size-1)
		p := t.pops[i]
		if t.dist(pos, p.pos) >= n {
			break
		}
		t.pEnd, t.npops = i, t.npops-1
		h := t.entryOf[p.id]
		if h == noEntry {
			continue // pushed since: not the caller's to rewind
		}
		store16(t.r, t.desc(h), 0)
		l := t.last[h]
		store16(t.r, t.desc(l)+pkdNext, t.freeHead)
		t.next[l], t.freeHead = t.freeHead, h
		store32(t.r, pkInflOffFree, uint32(h)|uint32(h)<<16) // free_head, old_free_head
		t.nfree += int(t.num[h])
		t.entryOf[p.id] = noEntry
	}
}

// availBase is the packed ring's base for GET_VRING_BASE: resubmitted
// chains not handed out again yet still count as taken (they are inflight
// in the region).
func (t *packedInflight) availBase(q *Virtqueue) uint32 {
	b := q.PackedBase()
	if t.rsNext < len(t.resubmit) {
		b = b&^0xffff | uint32(t.rsEnd)
	}
	return b
}

// The packed ring's hooks (packed.go), one call each; without a region
// they cost the nil check.

func (q *Virtqueue) inflightRewound(pos uint16) {
	if q.infl != nil {
		q.infl.rewound(q, pos)
	}
}

func (q *Virtqueue) inflightPublishing() {
	if q.infl != nil {
		q.infl.publishing(q)
	}
}

func (q *Virtqueue) inflightPublished() {
	if q.infl != nil {
		q.infl.published(q)
	}
}
