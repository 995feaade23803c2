package vhost_test

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// queuePair is a driver ring (the test guest's) and the device queue over
// the same memory, without a socket.
type queuePair struct {
	mem *guest.Memory
	drv *guest.Ring
	dev *vhost.Virtqueue
	buf uint64 // 64 KiB of buffer space
}

func newQueuePair(t testing.TB, size uint16, eventIdx, split bool) *queuePair {
	return newRingPair(t, size, eventIdx, split, false)
}

func newPackedPair(t testing.TB, size uint16, eventIdx bool) *queuePair {
	return newRingPair(t, size, eventIdx, false, true)
}

// newRingPair builds a driver ring and the device queue over it, split or
// packed.
func newRingPair(t testing.TB, size uint16, eventIdx, split, packed bool) *queuePair {
	t.Helper()
	mem, err := guest.NewMemory(guest.MemoryOptions{Size: 4 << 20, Split: split})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	newRing := guest.NewRing
	cfg := vhost.QueueConfig{Size: size, EventIdx: eventIdx}
	if packed {
		newRing = guest.NewPackedRing
		const base = 1 << 15 // both wrap counters start at 1
		cfg.Packed, cfg.LastAvail, cfg.LastUsed = true, base, base
	}
	drv, err := newRing(mem, size, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := mem.Table()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Desc, cfg.Avail, cfg.Used = drv.Addrs()
	dev, err := vhost.NewSplitQueue(tab, cfg)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := mem.Alloc(64<<10, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return &queuePair{mem: mem, drv: drv, dev: dev, buf: buf}
}

func newChain(n int) vhost.Chain { return vhost.Chain{Segs: make([]vhost.Segment, 0, n)} }

func TestPopDirectAndIndirect(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		qp := newQueuePair(t, 64, false, false)
		copy(qp.mem.Bytes(qp.buf, 4), "abcd")
		bufs := []guest.Buf{{GPA: qp.buf, Len: 100}, {GPA: qp.buf + 100, Len: 28}, {GPA: qp.buf + 4096, Len: 2048, Write: true}}
		head, err := qp.drv.Add(bufs, indirect)
		if err != nil {
			t.Fatal(err)
		}
		c := newChain(8)
		if ok, err := qp.dev.Pop(&c); ok || err != nil {
			t.Fatalf("popped before publish: %v %v", ok, err)
		}
		qp.drv.Publish()
		if qp.dev.Avail() != 1 {
			t.Fatalf("Avail = %d", qp.dev.Avail())
		}
		ok, err := qp.dev.Pop(&c)
		if !ok || err != nil {
			t.Fatalf("indirect=%v: Pop = %v, %v", indirect, ok, err)
		}
		if c.Head != head || c.ReadLen != 128 || c.WriteLen != 2048 || len(c.Segs) != 3 {
			t.Fatalf("indirect=%v: chain %+v", indirect, c)
		}
		if string(c.Segs[0].Buf[:4]) != "abcd" || c.Segs[0].Writable || !c.Segs[2].Writable || c.Segs[2].GPA != qp.buf+4096 {
			t.Fatalf("segments wrong: %+v", c.Segs)
		}
		qp.dev.Push(c.Head, 77)
		if qp.drv.UsedIdx() != 0 {
			t.Fatal("used entry visible before Flush")
		}
		qp.dev.Flush()
		h, n, ok := qp.drv.Used()
		if !ok || h != head || n != 77 {
			t.Fatalf("used = %d %d %v", h, n, ok)
		}
	}
}

func TestPopSplitsBufferAcrossRegions(t *testing.T) {
	qp := newQueuePair(t, 16, false, true)
	regs := qp.mem.Regions()
	// A buffer that runs off the end of region 0 is not in guest memory
	// (region 1 is not guest-adjacent): the queue must break.
	end0 := regs[0].GuestPhysAddr + regs[0].Size
	if _, err := qp.drv.Add([]guest.Buf{{GPA: end0 - 8, Len: 16}}, false); err != nil {
		t.Fatal(err)
	}
	qp.drv.Publish()
	c := newChain(4)
	if _, err := qp.dev.Pop(&c); !errors.Is(err, vhost.ErrQueueBroken) || !qp.dev.Broken() {
		t.Fatalf("buffer across a hole: %v", err)
	}
}

// sabotage publishes one chain and then corrupts it with f before the
// device pops it; the queue must break without panicking.
func TestBrokenChains(t *testing.T) {
	cases := map[string]func(qp *queuePair, head uint16){
		"loop": func(qp *queuePair, head uint16) {
			d := qp.drv.Desc(head)
			binary.LittleEndian.PutUint16(d[12:], guest.DescNext)
			binary.LittleEndian.PutUint16(d[14:], head)
		},
		"next-out-of-range": func(qp *queuePair, head uint16) {
			d := qp.drv.Desc(head)
			binary.LittleEndian.PutUint16(d[12:], guest.DescNext)
			binary.LittleEndian.PutUint16(d[14:], 1000)
		},
		"outside-memory": func(qp *queuePair, head uint16) {
			binary.LittleEndian.PutUint64(qp.drv.Desc(head), qp.mem.End()+4096)
		},
		"address-wraps": func(qp *queuePair, head uint16) {
			binary.LittleEndian.PutUint64(qp.drv.Desc(head), math.MaxUint64-10)
		},
		"length-overflow": func(qp *queuePair, head uint16) {
			// Two descriptors of 3 GiB each. Each descriptor's address
			// range is checked as it is added, so in a guest smaller than
			// 3 GiB the first one is already outside memory; the total's
			// overflow check guards bigger guests.
			a, b := qp.drv.Desc(head), qp.drv.Desc(head+1)
			binary.LittleEndian.PutUint32(a[8:], 3<<30)
			binary.LittleEndian.PutUint16(a[12:], guest.DescNext)
			binary.LittleEndian.PutUint16(a[14:], head+1)
			copy(b, a)
			binary.LittleEndian.PutUint16(b[12:], 0)
		},
		"indirect-with-next": func(qp *queuePair, head uint16) {
			d := qp.drv.Desc(head)
			binary.LittleEndian.PutUint16(d[12:], guest.DescIndirect|guest.DescNext)
		},
		"indirect-bad-length": func(qp *queuePair, head uint16) {
			d := qp.drv.Desc(head)
			binary.LittleEndian.PutUint32(d[8:], 17)
			binary.LittleEndian.PutUint16(d[12:], guest.DescIndirect)
		},
		"nested-indirect": func(qp *queuePair, head uint16) {
			// An indirect table whose entry is itself indirect.
			d := qp.drv.Desc(head)
			table := binary.LittleEndian.Uint64(d)
			binary.LittleEndian.PutUint16(qp.mem.Bytes(table, 16)[12:], guest.DescIndirect)
		},
		"read-after-write": func(qp *queuePair, head uint16) {
			a, b := qp.drv.Desc(head), qp.drv.Desc(head+1)
			binary.LittleEndian.PutUint64(a, qp.buf)
			binary.LittleEndian.PutUint32(a[8:], 8)
			binary.LittleEndian.PutUint16(a[12:], guest.DescNext|guest.DescWrite)
			binary.LittleEndian.PutUint16(a[14:], head+1)
			binary.LittleEndian.PutUint64(b, qp.buf+8)
			binary.LittleEndian.PutUint32(b[8:], 8)
			binary.LittleEndian.PutUint16(b[12:], 0)
		},
		"head-out-of-range": func(qp *queuePair, head uint16) {
			qp.drv.Repost(500)
			qp.drv.PublishRaw(qp.drv.AvailIdx())
		},
		// The first index past the table: an off-by-one in the check
		// would read past it (the table is 16 descriptors).
		"head-equals-size": func(qp *queuePair, head uint16) {
			qp.drv.Repost(16)
			qp.drv.PublishRaw(qp.drv.AvailIdx())
		},
		"next-equals-size": func(qp *queuePair, head uint16) {
			d := qp.drv.Desc(head)
			binary.LittleEndian.PutUint16(d[12:], guest.DescNext)
			binary.LittleEndian.PutUint16(d[14:], 16)
		},
		"avail-index-jump": func(qp *queuePair, head uint16) {
			qp.drv.PublishRaw(qp.drv.AvailIdx() + 100)
		},
	}
	// Why each must break the queue (the error says).
	reasons := map[string]string{
		"loop": "loop", "next-out-of-range": "next index out of range", "next-equals-size": "next index out of range",
		"outside-memory": "outside guest memory", "address-wraps": "outside guest memory", "length-overflow": "outside guest memory",
		"indirect-with-next": "INDIRECT and NEXT", "indirect-bad-length": "indirect table length",
		"nested-indirect": "indirect descriptor inside", "read-after-write": "readable descriptor after a writable",
		"head-out-of-range": "head index out of range", "head-equals-size": "head index out of range",
		"avail-index-jump": "avail index moved",
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			qp := newQueuePair(t, 16, false, false)
			indirect := name == "nested-indirect"
			head, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 64}}, indirect)
			if err != nil {
				t.Fatal(err)
			}
			if name == "head-out-of-range" || name == "head-equals-size" {
				qp.drv.Publish()
				ok, err := qp.dev.Pop(&vhost.Chain{Segs: make([]vhost.Segment, 0, 4)})
				if !ok || err != nil {
					t.Fatal("valid chain refused", err)
				}
			}
			qp.drv.Publish()
			corrupt(qp, head) // after publishing: the device reads at Pop time
			c := newChain(4)
			ok, err := qp.dev.Pop(&c)
			if ok || !errors.Is(err, vhost.ErrQueueBroken) || !qp.dev.Broken() {
				t.Fatalf("Pop = %v, %v; broken %v", ok, err, qp.dev.Broken())
			}
			if want := reasons[name]; want == "" || !strings.Contains(err.Error(), want) {
				t.Fatalf("queue broke with %q, want the reason %q", err, want)
			}
			if _, err := qp.dev.Pop(&c); !errors.Is(err, vhost.ErrQueueBroken) {
				t.Fatalf("second Pop on a broken queue: %v", err)
			}
			if qp.dev.Avail() != 0 {
				t.Fatal("broken queue reports available chains")
			}
		})
	}
}

func TestPopTooManySegmentsConsumesChain(t *testing.T) {
	qp := newQueuePair(t, 16, false, false)
	bufs := []guest.Buf{{GPA: qp.buf, Len: 10}, {GPA: qp.buf + 10, Len: 10}, {GPA: qp.buf + 20, Len: 10}}
	head, _ := qp.drv.Add(bufs, false)
	qp.drv.Publish()
	c := newChain(2)
	ok, err := qp.dev.Pop(&c)
	if !ok || !errors.Is(err, vhost.ErrTooManySegs) || c.Head != head || qp.dev.Broken() {
		t.Fatalf("Pop = %v %v head %d broken %v", ok, err, c.Head, qp.dev.Broken())
	}
}

func TestNotificationSuppression(t *testing.T) {
	qp := newQueuePair(t, 16, false, false)
	if qp.drv.UsedFlags()&1 == 0 {
		t.Fatal("polling device without EVENT_IDX must set VRING_USED_F_NO_NOTIFY")
	}
	qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 10}}, false)
	if qp.drv.Publish() {
		t.Fatal("driver would kick a polling device")
	}
	qp.dev.EnableNotify()
	qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 10}}, false)
	if !qp.drv.Publish() {
		t.Fatal("driver would not kick after EnableNotify")
	}
	qp.dev.DisableNotify()

	ev := newQueuePair(t, 16, true, false)
	for i := range 40 { // more than the ring: wraps avail indexes past 16
		ev.drv.Add([]guest.Buf{{GPA: ev.buf, Len: 10}}, false)
		if ev.drv.Publish() {
			t.Fatalf("EVENT_IDX driver would kick at %d (avail_event %d)", i, ev.drv.AvailEvent())
		}
		c := newChain(2)
		if ok, err := ev.dev.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		ev.dev.Push(c.Head, 0)
		ev.dev.Flush()
		ev.drv.Used()
	}
}

func TestPopPushAllocatesNothing(t *testing.T) {
	qp := newQueuePair(t, 256, true, false)
	primeRecycling(t, qp, 256)
	c := newChain(8)
	allocs := testing.AllocsPerRun(1000, func() { cycle(t, qp, &c, 32) })
	if allocs != 0 {
		t.Fatalf("pop/push/flush allocated %.1f times per burst", allocs)
	}
}

// primeRecycling adds n single-buffer chains once; cycle then recycles
// them with Repost/SkipUsed, which allocate nothing on the driver side.
func primeRecycling(t testing.TB, qp *queuePair, n int) {
	t.Helper()
	for i := range n {
		if _, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf + uint64(i%32)*2048, Len: 2048, Write: true}}, false); err != nil {
			t.Fatal(err)
		}
	}
	qp.drv.Publish()
}

// cycle is one burst: the device pops up to burst chains and pushes them
// back, publishing once; the driver reposts them and publishes once.
func cycle(t testing.TB, qp *queuePair, c *vhost.Chain, burst int) {
	for range burst {
		ok, err := qp.dev.Pop(c)
		if !ok || err != nil {
			t.Fatalf("pop: %v %v", ok, err)
		}
		qp.dev.Push(c.Head, 64)
		qp.drv.Repost(c.Head)
	}
	qp.dev.Flush()
	qp.drv.SkipUsed()
	qp.drv.Publish()
}

func BenchmarkSplitPopPush(b *testing.B) {
	const burst = 32
	qp := newQueuePair(b, 256, true, false)
	primeRecycling(b, qp, 256)
	c := newChain(8)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += burst {
		cycle(b, qp, &c, burst)
	}
}

func TestPackedPopPushWraps(t *testing.T) {
	qp := newPackedPair(t, 8, false)
	if qp.drv.Publish() {
		t.Fatal("driver would kick a polling device (device event flags not DISABLE)")
	}
	bufs := []guest.Buf{{GPA: qp.buf, Len: 64}, {GPA: qp.buf + 64, Len: 100, Write: true}, {GPA: qp.buf + 164, Len: 100, Write: true}}
	c := newChain(8)
	for round := range 20 { // 3 slots per chain on an 8-slot ring: wraps often
		id, err := qp.drv.Add(bufs, round%3 == 0)
		if err != nil {
			t.Fatal(round, err)
		}
		ok, err := qp.dev.Pop(&c)
		if !ok || err != nil || c.Head != id || c.ReadLen != 64 || c.WriteLen != 200 {
			t.Fatalf("round %d: Pop = %v %v chain %+v", round, ok, err, c)
		}
		if ok, _ := qp.dev.Pop(&c); ok {
			t.Fatalf("round %d: popped a chain twice", round)
		}
		qp.dev.Push(c.Head, uint32(round))
		if _, _, ok := qp.drv.Used(); ok {
			t.Fatal("used descriptor visible before Flush")
		}
		qp.dev.Flush()
		gotID, n, ok := qp.drv.Used()
		if !ok || gotID != id || n != uint32(round) {
			t.Fatalf("round %d: used %d %d %v", round, gotID, n, ok)
		}
	}
	// Unpop returns the chain again.
	id, _ := qp.drv.Add(bufs, false)
	qp.dev.Pop(&c)
	qp.dev.Unpop(1)
	if ok, err := qp.dev.Pop(&c); !ok || err != nil || c.Head != id {
		t.Fatalf("after Unpop: %v %v %d", ok, err, c.Head)
	}
}

func TestPackedBrokenChains(t *testing.T) {
	for name, corrupt := range map[string]func(d []byte){
		"outside-memory": func(d []byte) { binary.LittleEndian.PutUint64(d, 1<<50) },
		"id-out-of-range": func(d []byte) {
			binary.LittleEndian.PutUint16(d[12:], 999)
		},
		"indirect-with-next": func(d []byte) {
			f := binary.LittleEndian.Uint16(d[14:])
			binary.LittleEndian.PutUint16(d[14:], f|guest.DescIndirect|guest.DescNext)
		},
	} {
		t.Run(name, func(t *testing.T) {
			qp := newPackedPair(t, 8, false)
			if _, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 64}}, false); err != nil {
				t.Fatal(err)
			}
			corrupt(qp.drv.Desc(0)) // a fresh ring's first chain sits in slot 0
			c := newChain(4)
			if ok, err := qp.dev.Pop(&c); ok || !errors.Is(err, vhost.ErrQueueBroken) {
				t.Fatalf("Pop = %v %v", ok, err)
			}
		})
	}
}

func TestPackedPopPushAllocatesNothing(t *testing.T) {
	qp := newPackedPair(t, 256, true)
	bufs := []guest.Buf{{GPA: qp.buf, Len: 2048, Write: true}}
	c := newChain(8)
	allocs := testing.AllocsPerRun(1000, func() {
		for range 32 {
			if _, err := qp.drv.Add(bufs, false); err != nil {
				t.Fatal(err)
			}
		}
		for range 32 {
			if ok, err := qp.dev.Pop(&c); !ok || err != nil {
				t.Fatal(ok, err)
			}
			qp.dev.Push(c.Head, 64)
		}
		qp.dev.Flush()
		for range 32 {
			qp.drv.Used()
		}
	})
	if allocs != 0 {
		t.Fatalf("packed pop/push allocated %.1f times per burst", allocs)
	}
}

// BenchmarkPackedPopPush is BenchmarkSplitPopPush on a packed ring (the
// driver side re-adds each buffer, which on a packed ring is as cheap as a
// repost).
func BenchmarkPackedPopPush(b *testing.B) {
	const burst = 32
	qp := newPackedPair(b, 256, true)
	bufs := []guest.Buf{{GPA: qp.buf, Len: 2048, Write: true}}
	c := newChain(8)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += burst {
		for range burst {
			if _, err := qp.drv.Add(bufs, false); err != nil {
				b.Fatal(err)
			}
		}
		for range burst {
			if ok, err := qp.dev.Pop(&c); !ok || err != nil {
				b.Fatal(ok, err)
			}
			qp.dev.Push(c.Head, 64)
		}
		qp.dev.Flush()
		for range burst {
			qp.drv.Used()
		}
	}
}

// TestUsedEntriesWrittenAsBlock: staged used entries reach the ring in
// order across its end, and more pushes between flushes than the ring has
// slots (a driver that posts chains again before they are used) wrap
// without a fault, the later entries in each slot.
func TestUsedEntriesWrittenAsBlock(t *testing.T) {
	const size = 16
	qp := newQueuePair(t, size, false, false)
	used := qp.mem.Bytes(qp.drv.UsedGPA, 6+8*size)
	entry := func(slot int) (uint32, uint32) {
		e := used[4+8*slot:]
		return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
	}
	// 10 entries, then 12 that run over the end of the ring.
	for _, n := range []int{10, 12} {
		start := int(qp.drv.UsedIdx())
		for i := range n {
			qp.dev.Push(uint16(i), uint32(100*n+i))
		}
		qp.dev.Flush()
		if got := int(qp.drv.UsedIdx()); got != start+n {
			t.Fatalf("used->idx %d, want %d", got, start+n)
		}
		for i := range n {
			if id, l := entry((start + i) % size); id != uint32(i) || l != uint32(100*n+i) {
				t.Fatalf("slot %d: id %d len %d, want %d %d", (start+i)%size, id, l, i, 100*n+i)
			}
		}
	}
	// 40 pushes before a flush on a 16-slot ring.
	start := int(qp.drv.UsedIdx())
	for i := range 40 {
		qp.dev.Push(uint16(i%size), uint32(i))
	}
	qp.dev.Flush()
	for k := range size {
		r := (k - start%size + size) % size // pushes r, r+16, ... land in slot k
		i := r + size*((39-r)/size)         // the last of them
		if id, l := entry(k); id != uint32(i%size) || l != uint32(i) {
			t.Fatalf("after 40 pushes, slot %d: id %d len %d, want %d %d", k, id, l, i%size, i)
		}
	}
}
