package ixgbe

import (
	"bytes"
	"net"
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// poolMAC is the address of guest pool i in these tests.
func poolMAC(i int) [6]byte { return [6]byte{0x52, 0x54, 0, 0x12, 0x34, byte(0x50 + i)} }

// TestPoolsSteerByMAC opens a port with four pools, gives each its MAC
// and checks, on the simulated 82599, that each unicast frame lands only
// in its pool's queue, byte for byte, that broadcast lands once in every
// enabled pool, that a pool not enabled gets nothing, and that frames to
// no pool's address (the port's permanent MAC included) reach no queue.
func TestPoolsSteerByMAC(t *testing.T) {
	pf, p, alloc := simPort(t, Config{Pools: 4, RxRingSize: 64, TxRingSize: 64})
	if p.NumRxQueues() != 8 || p.QueuesPerPool() != 2 {
		t.Fatalf("4 pools of 1 queue: %d RX queues, %d per pool; want 8 and 2 (the 64-pool layout)", p.NumRxQueues(), p.QueuesPerPool())
	}
	bufs := newTestBufs(t, pf, p, alloc, 512, 2048)
	const enabled = 3 // pool 3 has no owner: not enabled
	for pool := range 4 {
		m := poolMAC(pool)
		if err := p.AddPoolMAC(pool, net.HardwareAddr(m[:])); err != nil {
			t.Fatal(err)
		}
		if pool < enabled {
			if err := p.EnablePool(pool, true); err != nil {
				t.Fatal(err)
			}
		}
		q := p.PoolQueuePair(pool, 0).Rx()
		if n := q.Post(bufs.rxBufs(t, 32)); n != 32 {
			t.Fatalf("pool %d: Post took %d of 32", pool, n)
		}
	}
	var sent [enabled][][]byte
	for i := range 12 {
		pool := i % enabled
		f := udpFrame(poolMAC(pool), 1000+uint16(i), 53, payloadBytes(40+i*13, byte(i)))
		fillChecksums(f)
		sent[pool] = append(sent[pool], f)
		pf.Deliver(f)
	}
	// Frames for no pool: the port's own address, an unknown unicast, the
	// disabled pool's address.
	for _, dst := range [][6]byte{[6]byte(p.MAC()), {2, 9, 9, 9, 9, 9}, poolMAC(3)} {
		f := udpFrame(dst, 7, 7, payloadBytes(60, 7))
		fillChecksums(f)
		pf.Deliver(f)
	}
	bcast := udpFrame([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 67, 68, payloadBytes(200, 0xb))
	fillChecksums(bcast)
	pf.Deliver(bcast)
	for pool := range enabled {
		q := p.PoolQueuePair(pool, 0).Rx().(*RxQueue)
		want := append(append([][]byte(nil), sent[pool]...), bcast)
		done := harvestN(t, pf, q, len(want))
		if len(done) != len(want) {
			t.Fatalf("pool %d: %d frames, want %d", pool, len(done), len(want))
		}
		for i, d := range done {
			if got := bufs.Bytes(uint32(d.Cookie))[:d.Len]; !bytes.Equal(got, want[i]) {
				t.Errorf("pool %d frame %d: %d bytes, not the %d-byte frame sent to it", pool, i, len(got), len(want[i]))
			}
		}
	}
	for i := range 200 {
		pf.Step()
		_ = i
	}
	buf := make([]ring.RxDone, 64)
	for q := range p.NumRxQueues() {
		if n := p.RxQueue(q).Harvest(buf); n != 0 {
			t.Errorf("queue %d received %d more frames: frames for no enabled pool, or a second copy", q, n)
		}
	}
}

// TestPoolAntiSpoof: a pool with anti-spoofing on cannot send from an
// address that is not its own; the frame never reaches the wire and is
// counted; its own address goes through.
func TestPoolAntiSpoof(t *testing.T) {
	pf, p, alloc := simPort(t, Config{Pools: 2, RxRingSize: 64, TxRingSize: 64})
	rec := &recorder{}
	pf.Attach(rec)
	bufs := newTestBufs(t, pf, p, alloc, 64, 2048)
	own := poolMAC(1)
	if err := p.AddPoolMAC(1, net.HardwareAddr(own[:])); err != nil {
		t.Fatal(err)
	}
	if err := p.EnablePool(1, true); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPoolAntiSpoof(1, true); err != nil {
		t.Fatal(err)
	}
	good := udpFrame([6]byte{2, 0, 0, 0, 0, 9}, 1, 2, payloadBytes(64, 1))
	copy(good[6:12], own[:])
	spoofed := udpFrame([6]byte{2, 0, 0, 0, 0, 9}, 1, 2, payloadBytes(64, 2))
	copy(spoofed[6:12], []byte{0x52, 0x54, 0, 0xde, 0xad, 0x01})
	for _, f := range [][]byte{good, spoofed} {
		fillChecksums(f)
	}
	q := p.PoolQueuePair(1, 0).Tx().(*TxQueue)
	var pkts []ring.TxPkt
	for i, f := range [][]byte{spoofed, good} {
		s, _ := bufs.txSeg(t, f)
		pkts = append(pkts, ring.TxPkt{Segs: []ring.Segment{s}, Cookie: ring.Cookie(i)})
	}
	if n := q.Submit(pkts); n != 2 {
		t.Fatalf("Submit took %d of 2", n)
	}
	if got := reclaimN(t, pf, q, 2); len(got) != 2 {
		t.Fatalf("reclaimed %d of 2: a spoofed frame's descriptors must complete too", len(got))
	}
	frames := rec.take()
	if len(frames) != 1 || !bytes.Equal(frames[0], good) {
		t.Fatalf("the wire got %d frames; want only the one from the pool's own address", len(frames))
	}
	if st := p.Stats(); st.TxSpoofed != 1 {
		t.Errorf("TxSpoofed = %d, want 1", st.TxSpoofed)
	}
}

// TestPoolConfigErrors: layouts the 82599 does not have are refused.
func TestPoolConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{Pools: 65},
		{Pools: 33, PoolQueues: 4},
		{Pools: 4, PoolQueues: 3},
		{Pools: 4, RSS: true},
		{Pools: 4, RxQueues: 3},
		{PoolQueues: 2},
	} {
		if err := c.setDefaults(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	c64 := Config{Pools: 64}
	if err := c64.setDefaults(); err != nil || c64.RxQueues != 128 {
		t.Errorf("64 pools: %v, %d queues; want all 128", err, c64.RxQueues)
	}
	c := Config{Pools: 8, PoolQueues: 4}
	if err := c.setDefaults(); err != nil || c.RxQueues != 32 || c.TxQueues != 32 {
		t.Errorf("8 pools of 4 queues: %v, %d/%d queues; want 32 each way", err, c.RxQueues, c.TxQueues)
	}
}

// TestPoolsAbove32: 64 pools of 2 queues use all 128 queues of the 82599,
// the upper 64 RX queues in the second register bank; a frame for the
// last pool lands in its queue.
func TestPoolsAbove32(t *testing.T) {
	pf, p, alloc := simPort(t, Config{Pools: 64, RxRingSize: 16, TxRingSize: 16})
	if p.NumRxQueues() != 128 || p.NumTxQueues() != 128 {
		t.Fatalf("64 pools: %d RX and %d TX queues, want 128 each", p.NumRxQueues(), p.NumTxQueues())
	}
	bufs := newTestBufs(t, pf, p, alloc, 16, 2048)
	m := poolMAC(63)
	if err := p.AddPoolMAC(63, net.HardwareAddr(m[:])); err != nil {
		t.Fatal(err)
	}
	if err := p.EnablePool(63, true); err != nil {
		t.Fatal(err)
	}
	q := p.PoolQueuePair(63, 0).Rx().(*RxQueue)
	if q.index != 126 {
		t.Fatalf("pool 63's first queue is %d, want 126", q.index)
	}
	if n := q.Post(bufs.rxBufs(t, 8)); n != 8 {
		t.Fatalf("Post took %d of 8", n)
	}
	f := udpFrame(m, 9, 9, payloadBytes(100, 3))
	fillChecksums(f)
	pf.Deliver(f)
	done := harvestN(t, pf, q, 1)
	if got := bufs.Bytes(uint32(done[0].Cookie))[:done[0].Len]; !bytes.Equal(got, f) {
		t.Fatalf("pool 63 received %d bytes, not the frame sent to it", len(got))
	}
}
