package ixgbe

import (
	"fmt"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
)

// The benchmarks measure the driver alone: the test plays the device by
// writing write-back descriptors into ring memory itself (one store per
// descriptor, the least any device model costs), and the tail register is
// a plain store into memory. ns/op is per packet.

// memBAR is a register window that only remembers the last write, standing
// in for BAR0 so the tail write costs what a posted MMIO store costs the
// CPU.
type memBAR struct{ last, off uint32 }

func (b *memBAR) Read32(uint32) uint32         { return 0 }
func (b *memBAR) Write32(off uint32, v uint32) { b.off, b.last = off, v }
func (b *memBAR) Len() int                     { return 0x20000 }

const benchRing = 512

func benchRingMem(tb testing.TB) []byte {
	r, err := hugepage.Alloc(benchRing*descSize, hugepage.Options{PageSize: hugepage.Page4K, Name: "ixgbe-bench-ring"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r.Bytes()
}

// rxRig is an RX queue with the device side played by the test.
type rxRig struct {
	q    *RxQueue
	bufs []ring.Buf
	done []ring.RxDone
}

func newRxRig(tb testing.TB, batch int) *rxRig {
	q, err := newRxQueue(&memBAR{}, 0, benchRingMem(tb), 1<<32, benchRing, 2048, 1518)
	if err != nil {
		tb.Fatal(err)
	}
	r := &rxRig{q: q, bufs: make([]ring.Buf, batch), done: make([]ring.RxDone, batch)}
	for i := range r.bufs {
		r.bufs[i] = ring.Buf{IOVA: 1<<33 + uint64(i)*2048, Len: 2048, Cookie: ring.Cookie(i)}
	}
	if q.Post(r.bufs) != batch {
		tb.Fatal("initial post failed")
	}
	return r
}

// deviceReceive writes back every posted descriptor as a 64-byte frame.
func (r *rxRig) deviceReceive() {
	q := r.q
	for s := q.next; s != q.tail; s++ {
		q.ring.store(s, 7<<rxPTypeShift|0x1234<<rxRSSHashShift|7, 64<<rxLenShift|rxStatDD|rxStatEOP|rxStatIPCS|rxStatL4CS)
	}
}

// cycle is one burst: the device fills the posted buffers, the driver
// harvests them and posts them again.
func (r *rxRig) cycle() int {
	r.deviceReceive()
	n := r.q.Harvest(r.done)
	r.q.Post(r.bufs[:n])
	return n
}

// txRig is a TX queue with the device side played by the test.
type txRig struct {
	q       *TxQueue
	pkts    []ring.TxPkt
	cookies []ring.Cookie
}

func newTxRig(tb testing.TB, batch int, offload bool) *txRig {
	q, err := newTxQueue(&memBAR{}, 0, benchRingMem(tb), 1<<32, benchRing)
	if err != nil {
		tb.Fatal(err)
	}
	r := &txRig{q: q, pkts: make([]ring.TxPkt, batch), cookies: make([]ring.Cookie, batch)}
	segs := make([]ring.Segment, batch)
	for i := range r.pkts {
		segs[i] = ring.Segment{IOVA: 1<<33 + uint64(i)*2048, Len: 64}
		r.pkts[i] = ring.TxPkt{Segs: segs[i : i+1], Cookie: ring.Cookie(i)}
		if offload {
			r.pkts[i].Offload = ring.OffloadIPv4Csum | ring.OffloadL4Csum
			r.pkts[i].L4Proto, r.pkts[i].L2Len, r.pkts[i].L3Len = ring.L4UDP, 14, 20
		}
	}
	return r
}

// deviceSend marks every submitted descriptor done, as the device does for
// RS descriptors.
func (r *txRig) deviceSend() {
	q := r.q
	for s := q.clean; s != q.tail; s++ {
		q.ring.store(s, 0, uint64(txdStatDD)<<32)
	}
}

func (r *txRig) cycle() int {
	n := r.q.Submit(r.pkts)
	r.deviceSend()
	r.q.Reclaim(r.cookies)
	return n
}

var benchBatches = []int{1, 8, 32, 64}

func BenchmarkRxHarvestPost(b *testing.B) {
	for _, batch := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			r := newRxRig(b, batch)
			b.ReportAllocs()
			b.ResetTimer()
			for pkts := 0; pkts < b.N; {
				pkts += r.cycle()
			}
		})
	}
}

func BenchmarkTxSubmitReclaim(b *testing.B) {
	for _, batch := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			r := newTxRig(b, batch, false)
			b.ReportAllocs()
			b.ResetTimer()
			for pkts := 0; pkts < b.N; {
				pkts += r.cycle()
			}
		})
	}
}

func BenchmarkTxSubmitReclaimChecksum(b *testing.B) {
	r := newTxRig(b, 32, true)
	b.ReportAllocs()
	b.ResetTimer()
	for pkts := 0; pkts < b.N; {
		pkts += r.cycle()
	}
}

func TestHotPathAllocatesNothing(t *testing.T) {
	rx := newRxRig(t, 32)
	if a := testing.AllocsPerRun(100, func() { rx.cycle() }); a != 0 {
		t.Errorf("RX Harvest+Post allocates %v times per burst", a)
	}
	tx := newTxRig(t, 32, true)
	if a := testing.AllocsPerRun(100, func() { tx.cycle() }); a != 0 {
		t.Errorf("TX Submit+Reclaim allocates %v times per burst", a)
	}
	if rx.cycle() != 32 || tx.cycle() != 32 {
		t.Error("a steady-state burst did not move 32 packets")
	}
}
