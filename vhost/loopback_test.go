package vhost_test

import (
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// BenchmarkLoopbackEcho is the io mode of the testpmd benchmark in one
// process: a poll-mode guest (sim/guest's burst API, which allocates
// nothing) keeps a burst of 64-byte frames circulating through the
// back end's Loopback, echoing each frame it receives. An op is one frame
// round trip; loopback-ns/frame is the share spent in Loopback.Poll, the
// back end's cost per frame (pop TX, pop RX, copy, push both, publish).
func BenchmarkLoopbackEcho(b *testing.B) {
	const burst = 32
	s := serve(b, vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder})
	g, err := guest.Dial(s.path, guest.Options{Features: guest.DefaultWanted | vhost.FInOrder, RxBufSize: 2048, TxBufSize: 2048})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	loop := vhost.NewLoopback(s.dev)
	if err := g.RefillRx(0, int(g.Ring(0).Size())); err != nil {
		b.Fatal(err)
	}
	frame := make([]byte, 64-4) // 64 bytes on the wire with the FCS
	copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	for range burst {
		if err := g.QueueTx(0, vhost.NetHeader{}, frame); err != nil {
			b.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		b.Fatal(err)
	}
	frames := make([]guest.RxFrame, 0, burst)
	var inPoll time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for moved := 0; moved < b.N; {
		start := time.Now()
		loop.Poll()
		inPoll += time.Since(start)
		got, err := g.ReceiveInPlace(0, frames[:0])
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			b.Fatalf("the loop stalled after %d frames: %+v", moved, loop.Counters())
		}
		for i := range got {
			if err := g.QueueTx(0, vhost.NetHeader{}, got[i].Frame); err != nil {
				b.Fatal(err)
			}
		}
		if err := g.FlushTx(0); err != nil {
			b.Fatal(err)
		}
		if err := g.RefillRx(0, len(got)); err != nil {
			b.Fatal(err)
		}
		g.ReclaimTx(0)
		moved += len(got)
	}
	b.StopTimer()
	b.ReportMetric(float64(inPoll.Nanoseconds())/float64(b.N), "loopback-ns/frame")
	if c := loop.Counters(); c.Dropped != 0 {
		b.Fatalf("loopback dropped frames: %+v", c)
	}
}
