package ixgbe

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim/wire"
)

// TestFreeRunningCable runs two ports back to back with the simulator's
// engines in their own goroutines, as on silicon: the driver polls while
// the device DMAs concurrently. Frames are numbered and checked byte for
// byte on arrival; every buffer comes home.
func TestFreeRunningCable(t *testing.T) {
	pfA, a, allocA := simPort(t, Config{TxRingSize: 256})
	pfB, b, allocB := simPort(t, Config{RxRingSize: 256})
	wire.Connect(pfA, pfB)
	bufsA := newTestBufs(t, pfA, a, allocA, 512, 2048)
	bufsB := newTestBufs(t, pfB, b, allocB, 512, 2048)
	pfA.Start()
	pfB.Start()
	defer pfA.Stop()
	defer pfB.Stop()

	const frames = 3000
	rxq, txq := b.RxQueue(0), a.TxQueue(0)
	rxq.Post(bufsB.rxBufs(t, 255))
	frameFor := func(seq int) []byte {
		f := udpFrame([6]byte(b.MAC()), 1, 2, payloadBytes(60+seq%900, byte(seq)))
		binary.BigEndian.PutUint32(f[42:], uint32(seq))
		fillChecksums(f)
		return f
	}
	sent, got := 0, 0
	pkts := make([]ring.TxPkt, 32)
	cookies := make([]ring.Cookie, 64)
	done := make([]ring.RxDone, 64)
	deadline := time.Now().Add(20 * time.Second)
	for got < frames {
		if time.Now().After(deadline) {
			t.Fatalf("after %d sent, only %d of %d frames arrived", sent, got, frames)
		}
		// Keep at most 128 frames in flight so the receiver never drops.
		k := 0
		for k < len(pkts) && sent+k < frames && sent+k-got < 128 {
			seg, idx := bufsA.txSeg(t, frameFor(sent+k))
			pkts[k] = ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: ring.Cookie(idx)}
			k++
		}
		n := txq.Submit(pkts[:k])
		if n < k {
			idx := make([]uint32, 0, k-n)
			for _, p := range pkts[n:k] {
				idx = append(idx, uint32(p.Cookie))
			}
			bufsA.Put(idx)
		}
		sent += n
		for m := txq.Reclaim(cookies); m > 0; m = txq.Reclaim(cookies) {
			idx := make([]uint32, m)
			for i := range idx {
				idx[i] = uint32(cookies[i])
			}
			bufsA.Put(idx)
		}
		m := rxq.Harvest(done)
		for _, d := range done[:m] {
			if f := bufsB.Bytes(uint32(d.Cookie))[:d.Len]; !bytes.Equal(f, frameFor(got)) {
				t.Fatalf("frame %d arrived different from what was sent (seq field %d)", got, binary.BigEndian.Uint32(f[42:]))
			}
			got++
		}
		repost := make([]ring.Buf, m)
		for i, d := range done[:m] {
			repost[i] = ring.Buf{IOVA: bufsB.IOVA(uint32(d.Cookie)), Len: 2048, Cookie: d.Cookie}
		}
		if rxq.Post(repost) != m {
			t.Fatal("could not repost harvested buffers")
		}
		if m == 0 && n == 0 {
			time.Sleep(10 * time.Microsecond)
		}
	}
	pfA.Stop()
	pfB.Stop()
	if st := b.Stats(); st.Queues[0].RxDropped+st.RxMissed != 0 {
		t.Errorf("receiver dropped %d frames", st.Queues[0].RxDropped+st.RxMissed)
	}
}
