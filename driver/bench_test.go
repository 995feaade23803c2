package driver

import (
	"testing"

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
func (r *rig) phyGuestPhy(burst int) int {
	r.gen.Emit(burst)
	r.pf.Step()
	r.port.Poll()
	rx, tx := r.g.Ring(0), r.g.Ring(1)
	n := 0
	for {
		head, _, ok := rx.Used()
		if !ok {
			break
		}
		rx.Repost(head)
		n++
	}
	for {
		head, _, ok := tx.Used()
		if !ok {
			break
		}
		tx.Repost(head)
	}
	rx.Publish()
	tx.Publish()
	r.port.Poll()
	r.pf.Step()
	return n
}

func newBenchRig(t testing.TB, forceCopy bool) *rig {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096, QueueSize: 256},
		port: PortConfig{ForceCopy: forceCopy}, frame: 64})
	r.pf.Attach(nil) // frames sent are counted by the NIC model only
	gen, err := wire.NewGenerator(wire.GeneratorConfig{FrameSize: 64, DstMAC: wire.MAC(sim.DefaultOptions().MAC)}, r.pf)
	if err != nil {
		t.Fatal(err)
	}
	r.gen = gen // without the recording tee, which copies every frame
	r.postRx(t, 255)
	for _, f := range testFrames(128, 60) {
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
		r := newBenchRig(t, forceCopy)
		before := r.port.Stats()
		allocs := testing.AllocsPerRun(200, func() { r.phyGuestPhy(32) })
		after := r.port.Stats()
		if after.RxPackets-before.RxPackets < 1000 || after.TxPackets-before.TxPackets < 1000 {
			t.Fatalf("copy=%v: traffic did not flow: before %+v after %+v", forceCopy, before, after)
		}
		if allocs != 0 {
			t.Fatalf("copy=%v: a phy-guest-phy round allocates %.1f times, want 0", forceCopy, allocs)
		}
	}
}

// BenchmarkPortPhyGuestPhy reports the cost per frame of one frame in
// from the wire to the guest and one frame out from the guest to the wire,
// simulator included.
func BenchmarkPortPhyGuestPhy(b *testing.B) {
	for _, c := range []struct {
		name string
		copy bool
	}{{"zerocopy", false}, {"copy", true}} {
		b.Run(c.name, func(b *testing.B) {
			r := newBenchRig(b, c.copy)
			start := r.port.Stats()
			b.ReportAllocs()
			b.ResetTimer()
			frames := 0
			for b.Loop() {
				frames += r.phyGuestPhy(32)
			}
			b.StopTimer()
			st := r.port.Stats()
			if frames == 0 || st.TxPackets == start.TxPackets {
				b.Fatalf("no traffic: %+v", st)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/packet")
		})
	}
}
