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

// TestTxStoppedQueueReclaimsSentDrainsTheRest: packets the device sent
// before its queue stopped come back from Reclaim as sent, so Drain hands
// back only those never sent (the owner counts those as dropped), and a
// closed port's queue reclaims nothing (its ring memory is gone).
func TestTxStoppedQueueReclaimsSentDrainsTheRest(t *testing.T) {
	eachTxCompletion(t, func(t *testing.T, headWB bool) {
		env := newTxEnv(t, Config{TxHeadWriteBack: headWB})
		submit := func(first, n int) {
			t.Helper()
			pkts := make([]ring.TxPkt, n)
			for i := range pkts {
				seg, _ := env.bufs.txSeg(t, tcpFrame(testSrcMAC, 1, 2, payloadBytes(100, byte(first+i))))
				pkts[i] = ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: ring.Cookie(first + i)}
			}
			if k := env.q.Submit(pkts); k != n {
				t.Fatalf("submitted %d of %d", k, n)
			}
		}
		submit(0, 5)
		env.pf.Step() // the device sends them; nobody reclaims yet
		submit(5, 3)  // never sent
		if err := env.p.StopTxQueue(0); err != nil {
			t.Fatal(err)
		}
		if sent := len(env.rec.take()); sent != 5 {
			t.Fatalf("the wire carried %d frames, want 5", sent)
		}
		done := make([]ring.Cookie, 16)
		n := env.q.Reclaim(done)
		if n != 5 || done[0] != 0 || done[4] != 4 {
			t.Fatalf("a stopped queue reclaimed %v, want the 5 packets sent (0-4)", done[:n])
		}
		rest, err := env.q.Drain(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rest) != 3 || rest[0] != 5 || rest[2] != 7 {
			t.Fatalf("Drain returned %v, want the 3 packets never sent (5-7)", rest)
		}
		if err := env.p.StartTxQueue(0); err != nil {
			t.Fatal(err)
		}
		submit(10, 2)
		env.pf.Step()
		if err := env.p.Close(); err != nil {
			t.Fatal(err)
		}
		if n := env.q.Reclaim(done); n != 0 {
			t.Fatalf("a closed port's queue reclaimed %d packets", n)
		}
		if rest, _ := env.q.Drain(nil); len(rest) != 2 {
			t.Fatalf("Drain after Close returned %v, want the 2 packets in flight", rest)
		}
	})
}
