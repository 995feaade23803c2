package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// phyGuestPhy drives one round of wire -> NIC -> guest and guest -> NIC ->
// wire: burst frames from the generator are received zero-copy into guest
// buffers, and the guest retransmits burst frames by recycling its TX
// chains. The guest side recycles descriptors in place (Repost), so the
// round allocates nothing once warm.
//
// It returns the frames delivered to the guest and the time spent in the
// engine's two polls, the only part of the round a PMD core would run.
func (r *rig) phyGuestPhy(burst int) (frames int, pmd time.Duration) {
	r.gen.Emit(burst)
	r.pf.Step()
	start := time.Now()
	r.channel.Poll()
	pmd = time.Since(start)
	n := r.recycle(0)
	r.recycle(1)
	start = time.Now()
	r.channel.Poll()
	pmd += time.Since(start)
	r.pf.Step()
	return n, pmd
}

func newBenchRig(t testing.TB, forceCopy bool, frameSize int) *rig {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096, QueueSize: 256},
		channel: ChannelConfig{ForceCopy: forceCopy}, frame: frameSize})
	r.pf.Attach(nil) // frames sent are counted by the NIC model only
	gen, err := wire.NewGenerator(wire.GeneratorConfig{FrameSize: frameSize, DstMAC: wire.MAC(sim.DefaultOptions().MAC)}, r.pf)
	if err != nil {
		t.Fatal(err)
	}
	r.gen = gen // without the recording tee, which copies every frame
	r.postRx(t, 255)
	for _, f := range testFrames(128, frameSize-4) { // the FCS is the NIC's
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	for range 200 { // warm up: every path taken once
		r.phyGuestPhy(32)
	}
	return r
}

func TestPollAllocatesNothing(t *testing.T) {
	for _, forceCopy := range []bool{false, true} {
		r := newBenchRig(t, forceCopy, 64)
		before := r.channel.Stats()
		allocs := testing.AllocsPerRun(200, func() { r.phyGuestPhy(32) })
		after := r.channel.Stats()
		if after.RxPackets-before.RxPackets < 1000 || after.TxPackets-before.TxPackets < 1000 {
			t.Fatalf("copy=%v: traffic did not flow: before %+v after %+v", forceCopy, before, after)
		}
		if allocs != 0 {
			t.Fatalf("copy=%v: a phy-guest-phy round allocates %.1f times, want 0", forceCopy, allocs)
		}
	}
}

// TestPhyGuestPhyStaysZeroCopy asserts what BenchmarkChannelPhyGuestPhy
// checks of its zero-copy runs, at each frame size it measures: frames
// move both ways, none through host buffers, and the NIC's DMA stays in
// its mappings.
func TestPhyGuestPhyStaysZeroCopy(t *testing.T) {
	for _, size := range []int{64, 512, 1518} {
		r := newBenchRig(t, false, size)
		start := r.channel.Stats()
		frames := 0
		for range 100 {
			n, _ := r.phyGuestPhy(32)
			frames += n
		}
		st := r.channel.Stats()
		if rx, tx := st.RxZeroCopy-start.RxZeroCopy, st.TxZeroCopy-start.TxZeroCopy; frames < 1000 || rx != uint64(frames) || tx < 1000 {
			t.Fatalf("%d-byte frames: %d delivered, %d received and %d sent zero-copy: %+v", size, frames, rx, tx, st)
		}
		if st.RxCopied != start.RxCopied || st.TxCopied != start.TxCopied {
			t.Fatalf("%d-byte frames: the zero-copy channel copied %d received and %d sent frames: %+v",
				size, st.RxCopied-start.RxCopied, st.TxCopied-start.TxCopied, st)
		}
		if c := r.pf.Counters(); c.IOMMUFaults != 0 {
			t.Fatalf("%d-byte frames: %d IOMMU faults (last at IOVA %#x)", size, c.IOMMUFaults, c.LastFaultIOVA)
		}
	}
}

// BenchmarkChannelPhyGuestPhy reports the cost per frame of one frame in
// from the wire to the guest and one frame out from the guest to the wire:
// ns/packet with the simulator and the test guest included, pmd-ns/packet
// for the engine's polls alone (what the poll core spends; the clock reads
// around the two polls per 32 frames add about 2 ns/packet).
func BenchmarkChannelPhyGuestPhy(b *testing.B) {
	for _, c := range []struct {
		name string
		copy bool
	}{{"zerocopy", false}, {"copy", true}} {
		for _, size := range []int{64, 512, 1518} {
			b.Run(fmt.Sprintf("%s/%dB", c.name, size), func(b *testing.B) {
				r := newBenchRig(b, c.copy, size)
				start := r.channel.Stats()
				frames := timeRounds(b, "packet", func() (int, time.Duration) { return r.phyGuestPhy(32) })
				st := r.channel.Stats()
				if frames == 0 || st.TxPackets == start.TxPackets {
					b.Fatalf("no traffic: %+v", st)
				}
				if !c.copy && st.RxCopied+st.TxCopied != start.RxCopied+start.TxCopied {
					b.Fatalf("zero-copy run copied frames: %+v", st)
				}
			})
		}
	}
}

// timeRounds runs round, which returns the frames it moved and the time
// of the channel's polls in it, for the benchmark's time, and reports
// ns/unit (the whole round) and pmd-ns/unit (the polls) per frame. It
// returns the frames moved.
func timeRounds(b *testing.B, unit string, round func() (int, time.Duration)) int {
	b.ReportAllocs()
	b.ResetTimer()
	frames := 0
	var pmd time.Duration
	for b.Loop() {
		n, t := round()
		frames += n
		pmd += t
	}
	b.StopTimer()
	if frames > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/"+unit)
		b.ReportMetric(float64(pmd.Nanoseconds())/float64(frames), "pmd-ns/"+unit)
	}
	return frames
}
