package engine

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// checkStoppedRing asserts what a stopped ring must look like to the
// guest right after GET_VRING_BASE replied, before the channel runs again:
// every chain the device consumed is in the used ring (base == used->idx)
// and every descriptor the guest still has out is in an available entry
// the device has not consumed (nothing lost, nothing returned twice).
func checkStoppedRing(t *testing.T, g *guest.Guest, i int, base uint32) {
	t.Helper()
	ring := g.Ring(i)
	if used := ring.UsedIdx(); uint32(used) != base {
		t.Fatalf("vring %d: GET_VRING_BASE replied %d before the used ring caught up (used idx %d): the reply came before the drain", i, base, used)
	}
	outstanding := int(ring.Size()) - ring.Free()
	notConsumed := int(ring.AvailIdx() - uint16(base))
	unseen := int(ring.UsedIdx() - ring.LastUsed())
	if outstanding != notConsumed+unseen {
		t.Fatalf("vring %d: %d descriptors out, %d available not consumed + %d used not yet seen: buffers lost or duplicated", i, outstanding, notConsumed, unseen)
	}
}

// pollFree runs the simulator free and polls the channel from another
// goroutine, as an lcore does, until the function it returns is called
// (or the test ends).
func (r *rig) pollFree(t *testing.T) (stop func()) {
	r.pf.Start()
	var stopping atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stopping.Load() {
			r.channel.Poll()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stopping.Store(true)
			wg.Wait()
			r.pf.Stop()
		})
	}
	t.Cleanup(stop)
	return stop
}

// rxHeld is how many buffers the channel has on the NIC's RX ring.
func (r *rig) rxHeld() int {
	r.dev.LockDataPath()
	defer r.dev.UnlockDataPath()
	return r.channel.rx.posted
}

func TestGetVringBaseRxMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
	r.postRx(t, 64)
	r.gen.Emit(16)
	checkIntact(t, r.receive(t, 16), r.input.take())
	r.channel.Poll() // buffers reposted to the NIC
	held := r.rxHeld()
	if held == 0 {
		t.Fatal("the NIC holds no guest buffer: nothing to drain")
	}
	// Frames written by the NIC into guest buffers, not yet harvested.
	r.gen.Emit(8)
	r.pf.Step()
	base, err := r.g.StopRing(0)
	if err != nil {
		t.Fatal(err)
	}
	checkStoppedRing(t, r.g, 0, base)
	if n := r.rxHeld(); n != 0 {
		t.Fatalf("channel still has %d buffers on the NIC after GET_VRING_BASE replied", n)
	}
	// The frames the NIC had finished arrive intact; the rest come back
	// as never consumed (the ring is rewound over them: no used entry of
	// length 0, which Linux would count as a length error).
	got, err := r.g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	checkIntact(t, got, r.input.take())
	if r.g.EmptyRx != 0 {
		t.Fatalf("guest got %d empty buffers back as used entries, want them rewound", r.g.EmptyRx)
	}
	if n := int(r.g.Ring(0).AvailIdx() - uint16(base)); n != held-8 {
		t.Fatalf("GET_VRING_BASE leaves %d buffers available, want %d (NIC held %d, 8 were filled)", n, held-8, held)
	}
	// The NIC queue is stopped: frames arriving now are dropped by the
	// NIC, never written into guest memory.
	r.gen.Emit(4)
	for range 10 {
		r.step()
	}
	r.input.take()
	if pk, _ := r.g.Receive(0); len(pk) != 0 {
		t.Fatalf("guest received %d frames on a stopped ring", len(pk))
	}
	// The ring resumes where it stopped and traffic flows.
	if err := r.g.ResumeRing(0); err != nil {
		t.Fatal(err)
	}
	r.postRx(t, 64)
	r.gen.Emit(40)
	checkIntact(t, r.receive(t, 40), r.input.take())
	if st := r.channel.Stats(); st.Drops.RxQuiesce != 0 || st.RxRewound != uint64(held-8) || st.Restarts == 0 {
		t.Fatalf("want no frame lost and %d RX buffers given back by rewinding on the stop: %+v", held-8, st)
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults", c.IOMMUFaults)
	}
}

func TestGetVringBaseTxMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{channel: ChannelConfig{TxCompleteBatch: 64}})
	frames := testFrames(60, 400)
	for _, f := range frames {
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	r.channel.Poll() // a burst goes to the NIC
	r.pf.Step()      // the NIC sends part of it
	r.channel.Poll() // reclaims, submits more
	base, err := r.g.StopRing(1)
	if err != nil {
		t.Fatal(err)
	}
	checkStoppedRing(t, r.g, 1, base)
	r.dev.LockDataPath()
	onNIC := r.channel.tx.zcHeads
	r.dev.UnlockDataPath()
	if onNIC != 0 {
		t.Fatalf("%d guest packets still on the NIC after GET_VRING_BASE replied", onNIC)
	}
	for range 10 {
		r.pf.Step()
	}
	sent := r.wire.take()
	st := r.channel.Stats()
	if uint64(len(sent))+st.Drops.TxQuiesce != uint64(base) || len(sent) == 0 || st.Drops.TxQuiesce == 0 {
		t.Fatalf("base %d: wire got %d frames, %d given back unsent (want both > 0, summing to the base)", base, len(sent), st.Drops.TxQuiesce)
	}
	sameFrames(t, sent, frames[:len(sent)])
	r.g.ReclaimTx(0)
	// The rest of the ring (not consumed before the stop) and new frames
	// go out after the resume.
	if err := r.g.ResumeRing(1); err != nil {
		t.Fatal(err)
	}
	more := testFrames(20, 300)
	got := r.transmit(t, more)
	rest := frames[base:]
	if len(got) != len(rest)+len(more) {
		t.Fatalf("after resume the wire got %d frames, want %d", len(got), len(rest)+len(more))
	}
	sameFrames(t, got, append(append([][]byte(nil), rest...), more...))
}

// TestRingStopsWhilePolling stops and resumes rings while an lcore-like
// goroutine polls the channel and the simulator runs free: the drain must
// be synchronous and race-free against the poller (run with -race).
func TestRingStopsWhilePolling(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
	defer r.pollFree(t)()
	if err := r.g.PostRx(0, 128); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		r.gen.Emit(32)
		for _, f := range testFrames(8, 200) {
			if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range []int{0, 1} {
			base, err := r.g.StopRing(i)
			if err != nil {
				t.Fatal(err)
			}
			checkStoppedRing(t, r.g, i, base)
		}
		if _, err := r.g.Receive(0); err != nil {
			t.Fatal(err)
		}
		r.g.ReclaimTx(0)
		for _, i := range []int{0, 1} {
			if err := r.g.ResumeRing(i); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if err := r.g.PostRx(0, int(r.g.Ring(0).Free())); err != nil && round == 0 {
			t.Fatal(err)
		}
	}
	if err := r.channel.Err(); err != nil {
		t.Fatal(err)
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults", c.IOMMUFaults)
	}
}
