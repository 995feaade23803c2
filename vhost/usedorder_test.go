package vhost_test

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/zcnet/zcnet/vhost"
)

// TestFlushPublishesEntriesBeforeIndex checks the order in which the
// device makes used entries visible: a driver that sees the new used->idx
// (split) or a descriptor's USED flag (packed) must find the entry behind
// it, id and length, already written. The other order loses frames only
// now and then, end to end, when the guest's driver happens to read
// between the two stores. (On a packed ring the first descriptor of a
// burst gets its flags at Flush, after the burst's other descriptors, so a
// driver reading in ring order sees a burst whole or not at all.)
//
// Method: the ring lives in ordinary Go memory, and a driver goroutine
// polls it concurrently as a guest does: it loads used->idx (or each
// descriptor's flags word) with the same 32-bit atomic access the device
// publishes with, and only then reads the entries (or the length) with
// plain loads. Under the race detector, which make test runs, this is an
// exact check of the memory model rather than a timing game: the device's
// plain stores of the entries must happen before its atomic store of the
// index for the driver's reads after its atomic load to be ordered after
// them; entries stored after the index race with the driver's reads, and
// the race detector fails the test whenever both happen, whichever goes
// first. (Guest memory proper is mmapped, which the race detector does
// not watch; hence the Go memory here.) Without the race detector the
// driver still checks every entry it reads, which catches a late entry
// when the driver happens to read in between.
//
// The device pushes in bursts of assorted sizes, one over the 64 entries
// it stages before writing, and never laps the ring, so no slot is written
// twice while the driver may read it.
func TestFlushPublishesEntriesBeforeIndex(t *testing.T) {
	bursts := []int{1, 2, 7, 64, 70, 1, 30, 81}
	for _, packed := range []bool{false, true} {
		name := "split"
		if packed {
			name = "packed"
		}
		t.Run(name, func(t *testing.T) {
			r := newHeapRing(t, 256, packed)
			total := 0
			for _, n := range bursts {
				total += n
			}
			c := newChain(2)
			for i := range total {
				if ok, err := r.dev.Pop(&c); !ok || err != nil || c.Head != uint16(i) {
					t.Fatalf("pop %d: ok %v err %v head %d", i, ok, err, c.Head)
				}
			}
			done := make(chan error, 1)
			go func() { done <- r.driverReads(total) }()
			head := 0
			for _, n := range bursts {
				for range n {
					r.dev.Push(uint16(head), writtenFor(head))
					head++
				}
				r.dev.Flush()
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// writtenFor is the length the test device reports for chain head h.
func writtenFor(h int) uint32 { return 0x1000 + uint32(h)*3 }

// heapRing is a ring of size one-descriptor chains in Go memory, made
// available in order before the driver goroutine starts.
type heapRing struct {
	mem    []byte // guest memory from guest address 0
	size   int
	packed bool
	dev    *vhost.Virtqueue
}

// Layout of heapRing's memory.
const (
	heapDesc  = 0x0000
	heapAvail = 0x1000 // split avail ring, packed driver event area
	heapUsed  = 0x2000 // split used ring, packed device event area
	heapBufs  = 0x4000
	heapSize  = 0x10000
	heapBufSz = 64
)

func newHeapRing(t *testing.T, size int, packed bool) *heapRing {
	// A large allocation: page-aligned by the Go allocator, which the
	// rings need (desc 16, used 4 bytes; 32-bit atomics 4).
	mem := make([]byte, heapSize)
	if uintptr(unsafe.Pointer(&mem[0]))%4096 != 0 {
		t.Fatalf("Go memory for the ring at %p is not page aligned", &mem[0])
	}
	r := &heapRing{mem: mem, size: size, packed: packed}
	for i := range size {
		d := mem[heapDesc+16*i:]
		binary.LittleEndian.PutUint64(d, uint64(heapBufs+heapBufSz*i))
		binary.LittleEndian.PutUint32(d[8:], heapBufSz)
		if packed {
			binary.LittleEndian.PutUint16(d[12:], uint16(i)) // id
			binary.LittleEndian.PutUint16(d[14:], 2|1<<7)    // WRITE, AVAIL for wrap counter 1
			continue
		}
		binary.LittleEndian.PutUint16(d[12:], 2) // WRITE
		binary.LittleEndian.PutUint16(mem[heapAvail+4+2*i:], uint16(i))
	}
	binary.LittleEndian.PutUint16(mem[heapAvail+2:], uint16(size))
	tab, err := vhost.NewMemoryTable([]vhost.Region{{GuestPhysAddr: 0, UserAddr: 0, Size: heapSize, Host: mem}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := vhost.QueueConfig{Size: uint16(size), Desc: heapDesc, Avail: heapAvail, Used: heapUsed}
	if packed {
		const wrap = 1 << 15 // both wrap counters start at 1
		cfg.Packed, cfg.LastAvail, cfg.LastUsed = true, wrap, wrap
	}
	if r.dev, err = vhost.NewSplitQueue(tab, cfg); err != nil {
		t.Fatal(err)
	}
	return r
}

// word is the 32-bit word at mem[off], for atomic access.
func (r *heapRing) word(off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[off : off+4][0]))
}

// driverReads polls the used side as a guest driver does until it has
// seen n entries, checking each, for at most 10 s.
func (r *heapRing) driverReads(n int) error {
	deadline := time.Now().Add(10 * time.Second)
	for seen := 0; seen < n; {
		if time.Now().After(deadline) {
			return fmt.Errorf("the driver saw %d of %d used entries in 10 s", seen, n)
		}
		var head, written uint32
		if r.packed {
			w := atomic.LoadUint32(r.word(heapDesc + 16*seen + 12))
			const availUsed = 1<<7 | 1<<15 // both set: used in the first lap
			if (w>>16)&availUsed != availUsed {
				continue
			}
			head = w & 0xffff
			written = binary.LittleEndian.Uint32(r.mem[heapDesc+16*seen+8:])
		} else {
			idx := int(atomic.LoadUint32(r.word(heapUsed)) >> 16)
			if idx == seen {
				continue
			}
			if idx > n {
				return fmt.Errorf("used->idx %d, only %d pushed", idx, n)
			}
			e := r.mem[heapUsed+4+8*seen:]
			head, written = binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
		}
		if head != uint32(seen) || written != writtenFor(seen) {
			return fmt.Errorf("used entry %d published as head %d length %#x, want head %d length %#x: the entry was not written before it was published",
				seen, head, written, seen, writtenFor(seen))
		}
		seen++
	}
	return nil
}
