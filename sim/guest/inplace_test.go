package guest_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// echoBurst is one round of a macswap guest on the burst API: take what
// arrived, swap MACs in place, queue it for transmission, publish once,
// refill the receive buffers used. It returns the frames echoed.
func echoBurst(t *testing.T, g *guest.Guest, burst []guest.RxFrame) int {
	frames, err := g.ReceiveInPlace(0, burst[:0])
	if err != nil {
		t.Fatal(err)
	}
	used := 0
	for i := range frames {
		f := frames[i].Frame
		var mac [6]byte
		copy(mac[:], f[:6])
		copy(f[:6], f[6:12])
		copy(f[6:12], mac[:])
		if err := g.QueueTx(0, vhost.NetHeader{}, f); err != nil {
			t.Fatalf("QueueTx: %v", err)
		}
		used += frames[i].Buffers
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	if err := g.RefillRx(0, used); err != nil {
		t.Fatalf("RefillRx(%d): %v", used, err)
	}
	return len(frames)
}

// TestInPlaceEchoRoundTrip sends frames with the burst API through the
// back end's loopback (which swaps MACs), echoes them in place (swapping
// back) and checks they return byte for byte, over the ring layouts and
// descriptor shapes a guest may choose.
func TestInPlaceEchoRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		dev  vhost.Config
		opt  guest.Options
	}{
		{name: "split", opt: guest.Options{RxBufSize: 4096, TxBufSize: 2048}},
		{name: "split-tx-indirect", opt: guest.Options{RxBufSize: 4096, TxSplit: true, TxIndirect: true}},
		{name: "no-mrg-rxbuf-chained", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 4096, RxChainDescs: 2}},
		// RefillRx lays buffers out as Receive and ReceiveInPlace read
		// them back: the header alone, the data further on.
		{name: "header-apart", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 4096, RxHeaderApart: true}},
		{name: "header-apart-mrg-rxbuf", opt: guest.Options{RxBufSize: 4096, RxHeaderApart: true}},
		{name: "packed", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FRingPacked},
			opt: guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked, RxBufSize: 4096, TxSplit: true}},
	}
	sizes := []int{60, 1514, 508, 61}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := startBackend(t, c.dev)
			g := dial(t, b, c.opt)
			descs := max(1, c.opt.RxChainDescs) // per receive buffer
			if c.opt.RxHeaderApart {
				descs = 2
			}
			if err := g.RefillRx(0, int(g.Ring(0).Size())/descs); err != nil {
				t.Fatal(err)
			}
			var sent [][]byte
			for seq := range 64 {
				f := frame(seq, sizes[seq%len(sizes)])
				if err := g.QueueTx(0, vhost.NetHeader{}, f); err != nil {
					t.Fatalf("QueueTx frame %d: %v", seq, err)
				}
				sent = append(sent, f)
			}
			if err := g.FlushTx(0); err != nil {
				t.Fatal(err)
			}
			loopUntil(t, b, uint64(len(sent))) // sent -> RX, MACs swapped
			if n := echoBurst(t, g, make([]guest.RxFrame, 0, 2*len(sent))); n != len(sent) {
				t.Fatalf("echoed %d frames, sent %d (loopback %+v)", n, len(sent), b.loop.Counters())
			}
			loopUntil(t, b, 2*uint64(len(sent))) // echoes -> RX, swapped again
			got, err := g.ReceiveInPlace(0, make([]guest.RxFrame, 0, 2*len(sent)))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(sent) {
				t.Fatalf("got %d frames back, sent %d", len(got), len(sent))
			}
			for i := range sent {
				if want := swapMACs(sent[i]); !bytes.Equal(got[i].Frame, want) {
					t.Fatalf("frame %d (%d bytes) came back as %d bytes: %s", i, len(sent[i]), len(got[i].Frame), diff(want, got[i].Frame))
				}
				if got[i].Buffers != 1 {
					t.Errorf("frame %d took %d receive buffers, want 1 with 4 KiB buffers", i, got[i].Buffers)
				}
			}
		})
	}
}

// loopUntil polls the back end's loopback until it has returned n frames
// in all.
func loopUntil(t *testing.T, b *backend, n uint64) {
	t.Helper()
	for range 100 {
		if b.loop.Counters().Frames >= n {
			return
		}
		b.loop.Poll()
	}
	t.Fatalf("loopback returned %+v, want %d frames", b.loop.Counters(), n)
}

// TestInPlaceBurstLimit checks ReceiveInPlace stops at the capacity of dst
// and leaves the rest on the ring.
func TestInPlaceBurstLimit(t *testing.T) {
	b := startBackend(t, vhost.Config{})
	g := dial(t, b, guest.Options{RxBufSize: 4096})
	if err := g.RefillRx(0, 64); err != nil {
		t.Fatal(err)
	}
	for seq := range 10 {
		if err := g.QueueTx(0, vhost.NetHeader{}, frame(seq, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	b.loop.Poll()
	first, err := g.ReceiveInPlace(0, make([]guest.RxFrame, 0, 4))
	if err != nil || len(first) != 4 {
		t.Fatalf("first burst: %d frames, %v; want 4", len(first), err)
	}
	rest, err := g.ReceiveInPlace(0, make([]guest.RxFrame, 0, 64))
	if err != nil || len(rest) != 6 {
		t.Fatalf("second burst: %d frames, %v; want the other 6", len(rest), err)
	}
	if !bytes.Equal(rest[0].Frame, swapMACs(frame(4, 100))) {
		t.Errorf("second burst starts with the wrong frame")
	}
}

// TestQueueTxRingFull checks QueueTx reports ErrRingFull, not a panic or
// a silent drop, once every TX buffer is in flight, and recovers when the
// device has used them.
func TestQueueTxRingFull(t *testing.T) {
	b := startBackend(t, vhost.Config{})
	g := dial(t, b, guest.Options{QueueSize: 16})
	if err := g.RefillRx(0, 16); err != nil {
		t.Fatal(err)
	}
	for seq := range 16 {
		if err := g.QueueTx(0, vhost.NetHeader{}, frame(seq, 64)); err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
	}
	if err := g.QueueTx(0, vhost.NetHeader{}, frame(16, 64)); !errors.Is(err, guest.ErrRingFull) {
		t.Fatalf("17th frame on a 16-entry ring: err = %v, want ErrRingFull", err)
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	b.loop.Poll()
	if err := g.QueueTx(0, vhost.NetHeader{}, frame(16, 64)); err != nil {
		t.Fatalf("after the device used the ring: %v", err)
	}
}

// TestInPlaceEchoAllocatesNothing is the point of the burst API: a guest
// echoing through it (the back end's loopback included) allocates nothing
// per round.
func TestInPlaceEchoAllocatesNothing(t *testing.T) {
	b := startBackend(t, vhost.Config{})
	g := dial(t, b, guest.Options{RxBufSize: 4096, TxBufSize: 2048})
	if err := g.RefillRx(0, int(g.Ring(0).Size())); err != nil {
		t.Fatal(err)
	}
	for seq := range 32 {
		if err := g.QueueTx(0, vhost.NetHeader{}, frame(seq, 60)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	burst := make([]guest.RxFrame, 0, 32)
	moved := 0
	round := func() {
		b.loop.Poll()
		moved += echoBurst(t, g, burst)
		g.ReclaimTx(0)
	}
	for range 50 { // let maps and slices reach their working size
		round()
	}
	moved = 0
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Errorf("an echo round allocates %.1f times", a)
	}
	if moved < 200*32 {
		t.Errorf("only %d frames moved in 201 rounds of 32: the echo stalled", moved)
	}
}
