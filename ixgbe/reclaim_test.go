package ixgbe

import (
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// TestTxHeadWriteBackReclaimsOnlyFinished: with head write-back the device
// reports the first descriptor it has not finished. A packet whose last
// descriptor is that one is still being read, so it must not be handed
// back (its buffer could be reused under the DMA); the packets before it
// are.
func TestTxHeadWriteBackReclaimsOnlyFinished(t *testing.T) {
	q, err := newTxQueue(&memBAR{}, 0, benchRingMem(t), 1<<32, benchRing)
	if err != nil {
		t.Fatal(err)
	}
	word := make([]byte, 64)
	q.useHeadWriteBack(word, 1<<34)
	pkts := make([]ring.TxPkt, 3)
	for i := range pkts {
		pkts[i] = ring.TxPkt{Segs: []ring.Segment{{IOVA: 1<<33 + uint64(i)*2048, Len: 64}}, Cookie: ring.Cookie(i)}
	}
	if n := q.Submit(pkts); n != 3 {
		t.Fatalf("submitted %d of 3", n)
	}
	done := make([]ring.Cookie, 4)
	if n := q.Reclaim(done); n != 0 {
		t.Fatalf("head 0: reclaimed %d packets, want none", n)
	}
	for head := 1; head <= 3; head++ {
		// Descriptors below head are finished: with one descriptor per
		// packet, exactly packet head-1 completes at each step.
		q.head.store(uint32(head))
		if n := q.Reclaim(done); n != 1 || done[0] != ring.Cookie(head-1) {
			t.Fatalf("head %d: reclaimed %v, want packet %d alone", head, done[:n], head-1)
		}
	}
}

// TestTxRingNeverFillsToTheHead: the tail may never catch up with the head
// (tail == head means an empty ring to the device), so a ring of size
// descriptors takes size-1 single-descriptor packets and no more until one
// is reclaimed.
func TestTxRingNeverFillsToTheHead(t *testing.T) {
	q, err := newTxQueue(&memBAR{}, 0, benchRingMem(t), 1<<32, benchRing)
	if err != nil {
		t.Fatal(err)
	}
	q.useHeadWriteBack(make([]byte, 64), 1<<34)
	pkts := make([]ring.TxPkt, benchRing)
	for i := range pkts {
		pkts[i] = ring.TxPkt{Segs: []ring.Segment{{IOVA: 1 << 33, Len: 64}}, Cookie: ring.Cookie(i)}
	}
	if n := q.Submit(pkts); n != benchRing-1 {
		t.Fatalf("a %d-descriptor ring took %d packets, want %d", benchRing, n, benchRing-1)
	}
	if n := q.Submit(pkts[:1]); n != 0 {
		t.Fatalf("a full ring took %d more", n)
	}
	q.head.store(1)
	done := make([]ring.Cookie, 2)
	if n := q.Reclaim(done); n != 1 {
		t.Fatalf("reclaimed %d, want 1", n)
	}
	if n := q.Submit(pkts[:2]); n != 1 {
		t.Fatalf("after one reclaim the ring took %d packets, want 1", n)
	}
}
