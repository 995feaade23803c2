package vhost_test

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
)

// Chain-walking fuzz targets: the guest controls every byte of its rings,
// so whatever it writes, Pop must not panic, must return only segments
// inside guest memory with lengths that add up, and a queue it broke must
// stay broken.
//
// Guest memory is one memfd of fuzzMemSize bytes in two regions that are
// adjacent in guest physical space (so buffers can straddle them) but not
// in this process. The fuzz input is consumed as: ring geometry, then the
// descriptor ring, then the avail ring (split), then the rest of memory
// (indirect tables and buffer contents), then one byte per step driving
// the device and the driver.
const (
	fuzzMemSize = 64 << 10
	fuzzHalf    = fuzzMemSize / 2
	fuzzDesc    = 0x0000 // descriptor table / packed ring
	fuzzAvail   = 0x1000 // avail ring / driver event area
	fuzzUsed    = 0x2000 // used ring / device event area
	fuzzData    = 0x3000 // indirect tables and buffers
)

type fuzzGuest struct {
	t    *testing.T
	mem  []byte // the whole memfd, as the guest sees it (GPA 0..)
	tbl  *vhost.MemoryTable
	data []byte // remaining fuzz input
}

func newFuzzGuest(t *testing.T) *fuzzGuest {
	fd, err := unix.MemfdCreate("chainfuzz", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, fuzzMemSize); err != nil {
		t.Fatal(err)
	}
	guestView, err := unix.Mmap(fd, 0, fuzzMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	// The device's mapping: a second mmap of each half, separately.
	lo, err := unix.Mmap(fd, 0, fuzzHalf, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	hi, err := unix.Mmap(fd, fuzzHalf, fuzzHalf, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(guestView); _ = unix.Munmap(lo); _ = unix.Munmap(hi) })
	tbl, err := vhost.NewMemoryTable([]vhost.Region{
		{GuestPhysAddr: 0, UserAddr: 0, Size: fuzzHalf, Host: lo},
		{GuestPhysAddr: fuzzHalf, UserAddr: fuzzHalf, Size: fuzzHalf, Host: hi},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fuzzGuest{t: t, mem: guestView, tbl: tbl}
}

// take returns the next n input bytes (fewer at the end).
func (g *fuzzGuest) take(n int) []byte {
	n = min(n, len(g.data))
	b := g.data[:n]
	g.data = g.data[n:]
	return b
}

func (g *fuzzGuest) byte() byte {
	if b := g.take(1); len(b) == 1 {
		return b[0]
	}
	return 0
}

// checkChain asserts the invariants of a chain Pop returned.
func (g *fuzzGuest) checkChain(c *vhost.Chain, err error, size int, packed bool) {
	t := g.t
	if int(c.Head) >= size {
		t.Fatalf("head/id %d out of a %d-entry queue", c.Head, size)
	}
	var r, w uint64
	seenWritable := false
	for i, s := range c.Segs {
		if len(s.Buf) == 0 {
			t.Fatalf("segment %d is empty", i)
		}
		want, terr := g.tbl.TranslateGPA(s.GPA, uint64(len(s.Buf)))
		if terr != nil {
			t.Fatalf("segment %d gpa %#x len %d is not inside one region of guest memory: %v", i, s.GPA, len(s.Buf), terr)
		}
		if &want[0] != &s.Buf[0] {
			t.Fatalf("segment %d gpa %#x does not point at the host bytes of that guest address", i, s.GPA)
		}
		if s.Writable {
			seenWritable = true
			w += uint64(len(s.Buf))
		} else {
			if seenWritable {
				t.Fatalf("readable segment %d after a writable one", i)
			}
			r += uint64(len(s.Buf))
		}
	}
	if uint64(c.ReadLen)+uint64(c.WriteLen) > math.MaxUint32 {
		t.Fatalf("chain length %d+%d overflows 32 bits", c.ReadLen, c.WriteLen)
	}
	if err == nil && (r != uint64(c.ReadLen) || w != uint64(c.WriteLen)) {
		t.Fatalf("segments hold %d/%d bytes, chain says %d/%d", r, w, c.ReadLen, c.WriteLen)
	}
	if errors.Is(err, vhost.ErrTooManySegs) && (r > uint64(c.ReadLen) || w > uint64(c.WriteLen)) {
		t.Fatalf("truncated chain: segments hold %d/%d bytes, more than its %d/%d", r, w, c.ReadLen, c.WriteLen)
	}
}

// drive pops and pushes for as long as the input lasts, checking every
// chain and that a broken queue stays broken.
func (g *fuzzGuest) drive(q *vhost.Virtqueue, size int, packed bool, republish func(step byte)) {
	t := g.t
	c := vhost.Chain{Segs: make([]vhost.Segment, 0, 8)}
	var held []vhost.Chain
	broken := false
	for step := 0; step < 256 && len(g.data) > 0; step++ {
		op := g.byte()
		switch op % 4 {
		case 0, 1: // pop
			ok, err := q.Pop(&c)
			if broken {
				if ok || !errors.Is(err, vhost.ErrQueueBroken) || q.Avail() != 0 {
					t.Fatalf("broken queue returned ok=%v err=%v avail=%d", ok, err, q.Avail())
				}
				continue
			}
			if errors.Is(err, vhost.ErrQueueBroken) {
				if ok || !q.Broken() {
					t.Fatalf("Pop failed with %v but ok=%v broken=%v", err, ok, q.Broken())
				}
				broken = true
				continue
			}
			if err != nil && !errors.Is(err, vhost.ErrTooManySegs) {
				t.Fatalf("Pop: unexpected error %v", err)
			}
			if !ok {
				continue
			}
			g.checkChain(&c, err, size, packed)
			if op&0x80 != 0 && err == nil && !packed {
				q.Unpop(1)
				continue
			}
			held = append(held, vhost.Chain{Head: c.Head, WriteLen: c.WriteLen})
		case 2: // push what was held, written up to its writable length
			for _, h := range held {
				q.Push(h.Head, min(h.WriteLen, uint32(op)))
			}
			held = held[:0]
			q.Flush()
		case 3: // the driver rewrites part of its ring and republishes
			republish(g.byte())
		}
	}
}

func FuzzSplitChain(f *testing.F) {
	// Seeds: a plain two-descriptor chain, an indirect table, and a loop.
	seed := func(size byte, descs [][4]uint64, availIdx uint16, heads []uint16, rest []byte) []byte {
		b := []byte{size}
		for _, d := range descs {
			var e [16]byte
			binary.LittleEndian.PutUint64(e[:], d[0])
			binary.LittleEndian.PutUint32(e[8:], uint32(d[1]))
			binary.LittleEndian.PutUint16(e[12:], uint16(d[2]))
			binary.LittleEndian.PutUint16(e[14:], uint16(d[3]))
			b = append(b, e[:]...)
		}
		for len(b) < 1+16*(1<<(size%5)) {
			b = append(b, 0)
		}
		b = binary.LittleEndian.AppendUint16(b, 0)
		b = binary.LittleEndian.AppendUint16(b, availIdx)
		for _, h := range heads {
			b = binary.LittleEndian.AppendUint16(b, h)
		}
		for len(b) < 1+16*(1<<(size%5))+4+2*(1<<(size%5)) {
			b = append(b, 0)
		}
		return append(b, rest...)
	}
	steps := []byte{0, 0, 2, 0, 3, 7, 0, 2, 1, 0x80, 2}
	f.Add(seed(2, [][4]uint64{{fuzzData, 64, 1, 1}, {fuzzData + 64, 1500, 2, 0}}, 1, []uint16{0}, steps))
	f.Add(seed(2, [][4]uint64{{fuzzData, 32, 4, 0}}, 1, []uint16{0},
		append([]byte{16}, steps...)))
	f.Add(seed(1, [][4]uint64{{fuzzData, 10, 1, 1}, {fuzzData, 10, 1, 0}}, 2, []uint16{0, 1}, steps))
	f.Add(seed(3, [][4]uint64{{fuzzHalf - 100, 200, 2, 0}}, 5, []uint16{0, 0, 0, 0, 0}, steps))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 {
			return
		}
		g := newFuzzGuest(t)
		g.data = data[1:]
		size := 1 << (data[0] % 5) // 1..16 entries
		copy(g.mem[fuzzDesc:], g.take(16*size))
		copy(g.mem[fuzzAvail:], g.take(4+2*size+2))
		copy(g.mem[fuzzData:], g.take(int(g.byte())*8))
		q, err := vhost.NewSplitQueue(g.tbl, vhost.QueueConfig{Size: uint16(size), Desc: fuzzDesc,
			Avail: fuzzAvail, Used: fuzzUsed, EventIdx: data[0]&0x80 != 0, LastAvail: uint16(g.byte())})
		if err != nil {
			t.Fatalf("a ring inside guest memory was refused: %v", err)
		}
		g.drive(q, size, false, func(b byte) {
			// Rewrite one descriptor (or the avail idx) with input bytes.
			if int(b)%(size+1) == size {
				copy(g.mem[fuzzAvail+2:], g.take(2))
				return
			}
			copy(g.mem[fuzzDesc+16*(int(b)%(size+1)):], g.take(16))
		})
	})
}

func FuzzPackedChain(f *testing.F) {
	seed := func(size byte, descs [][4]uint64, rest []byte) []byte {
		b := []byte{size}
		for _, d := range descs {
			var e [16]byte
			binary.LittleEndian.PutUint64(e[:], d[0])
			binary.LittleEndian.PutUint32(e[8:], uint32(d[1]))
			binary.LittleEndian.PutUint16(e[12:], uint16(d[2])) // id
			binary.LittleEndian.PutUint16(e[14:], uint16(d[3])) // flags
			b = append(b, e[:]...)
		}
		for len(b) < 1+16*(1<<(size%5)) {
			b = append(b, 0)
		}
		return append(b, rest...)
	}
	const avail = 1 << 7
	steps := []byte{0, 0, 0, 2, 0, 3, 5, 0, 2}
	f.Add(seed(2, [][4]uint64{{fuzzData, 64, 0, avail | 1}, {fuzzData + 64, 1500, 0, avail | 2}, {fuzzData, 100, 1, avail}}, append([]byte{0, 0}, steps...)))
	f.Add(seed(2, [][4]uint64{{fuzzData, 32, 0, avail | 4}}, append([]byte{16, 0}, steps...)))
	f.Add(seed(1, [][4]uint64{{fuzzHalf - 100, 200, 0, avail | 2}, {fuzzData, 1, 1, avail}}, append([]byte{0, 0}, steps...)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 {
			return
		}
		g := newFuzzGuest(t)
		g.data = data[1:]
		size := 1 << (data[0] % 5)
		copy(g.mem[fuzzDesc:], g.take(16*size))
		copy(g.mem[fuzzData:], g.take(int(g.byte())*8))
		// Start position inside the ring, wrap counter from the top bit.
		start := uint16(g.byte())
		pos := start%uint16(size) | (start&0x80)<<8
		if start&0x80 == 0 {
			pos |= 1 << 15 // the driver's initial wrap counter is 1
		}
		q, err := vhost.NewSplitQueue(g.tbl, vhost.QueueConfig{Size: uint16(size), Desc: fuzzDesc,
			Avail: fuzzAvail, Used: fuzzUsed, Packed: true, EventIdx: data[0]&0x80 != 0,
			LastAvail: pos, LastUsed: pos})
		if err != nil {
			t.Fatalf("a packed ring inside guest memory was refused: %v", err)
		}
		g.drive(q, size, true, func(b byte) {
			copy(g.mem[fuzzDesc+16*(int(b)%size):], g.take(16))
		})
	})
}
