package fwd

import (
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/wire"
)

// fwdRig is two simulated 82599 ports with a forwarder between them: a
// generator feeds port A's wire, port B's wire ends in a verifying sink.
type fwdRig struct {
	pfA, pfB *sim.PF
	a, b     *ixgbe.Port
	fwd      *Forwarder
	gen      *wire.Generator
	sink     *wire.Sink
}

func newFwdRig(t *testing.T, frameSize, bufSize int) *fwdRig {
	t.Helper()
	r := &fwdRig{}
	openPort := func(cfg ixgbe.Config) (*sim.PF, *ixgbe.Port, *hugepage.IOVAAllocator) {
		pf := sim.NewPF(sim.DefaultOptions())
		t.Cleanup(func() { pf.Close() })
		alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
		if err != nil {
			t.Fatal(err)
		}
		cfg.IOVA = alloc
		cfg.LinkTimeout = 2 * time.Second
		p, err := ixgbe.Open(pf, cfg)
		if err != nil {
			t.Fatalf("open simulated port: %v", err)
		}
		return pf, p, alloc
	}
	var allocA, allocB *hugepage.IOVAAllocator
	r.pfA, r.a, allocA = openPort(ixgbe.Config{RxRingSize: 1024, RxBufSize: bufSize, MTU: 9000})
	r.pfB, r.b, allocB = openPort(ixgbe.Config{TxRingSize: 1024, MTU: 9000})

	// One pool, mapped at the same IOVA into both ports' IOMMU domains:
	// A's NIC writes a frame into a buffer and B's NIC reads it from there.
	const count = 4096
	region, err := hugepage.Alloc(uint64(count*bufSize), hugepage.Options{PageSize: hugepage.Page2M, Name: "fwd-test"})
	if err != nil {
		t.Fatal(err)
	}
	iova, err := allocA.Alloc(uint64(region.Len()), hugepage.IOMMUPage)
	if err != nil {
		t.Fatal(err)
	}
	if err := allocB.Reserve(iova, uint64(region.Len())); err != nil {
		t.Fatal(err)
	}
	if err := region.MapInto(r.pfA.DMA(), iova); err != nil {
		t.Fatal(err)
	}
	if err := r.pfB.DMA().MapDMA(iova, region.Bytes()); err != nil {
		t.Fatal(err)
	}
	pool, err := hugepage.NewPool(region, hugepage.PoolConfig{BufSize: bufSize, Count: count, CheckDoubleFree: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Ports stop (and give back every buffer) before the memory goes.
		if err := r.a.Close(); err != nil {
			t.Errorf("close A: %v", err)
		}
		if err := r.b.Close(); err != nil {
			t.Errorf("close B: %v", err)
		}
		_ = r.pfB.DMA().UnmapDMA(iova, uint64(region.Len()))
		region.Close()
		for _, pf := range []*sim.PF{r.pfA, r.pfB} {
			if c := pf.Counters(); c.IOMMUFaults != 0 {
				t.Errorf("IOMMU faults: %d (last at %#x)", c.IOMMUFaults, c.LastFaultIOVA)
			}
		}
	})
	r.fwd, err = New("A->B", r.a.RxQueue(0), r.b.TxQueue(0), pool, 32)
	if err != nil {
		t.Fatal(err)
	}
	r.sink = wire.NewSink(nil)
	r.pfB.Attach(r.sink)
	r.gen, err = wire.NewGenerator(wire.GeneratorConfig{
		DstMAC: wire.MAC(r.a.MAC()), FrameSize: frameSize, Flows: 16,
	}, r.pfA)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestForwardLossless forwards frames between two simulated ports in
// deterministic steps, at a pace the receive ring can absorb, and checks
// that every frame arrives intact and in order. Jumbo frames span several
// 2 KiB receive buffers and go out as multi-segment packets.
func TestForwardLossless(t *testing.T) {
	for _, size := range []int{64, 1518, 9018} {
		t.Run(wireSizeName(size), func(t *testing.T) {
			r := newFwdRig(t, size, 2048)
			for i := 0; i < 40; i++ { // let the forwarder fill the RX ring (8 bursts a poll)
				r.fwd.Poll()
				r.pfA.Step()
			}
			const total, burst = 5000, 32
			for sent := 0; sent < total; sent += burst {
				r.gen.Emit(min(burst, total-sent))
				for k := 0; k < 8; k++ { // a jumbo burst needs 160 descriptors: 5 polls
					r.pfA.Step()
					r.fwd.Poll()
					r.pfB.Step()
				}
			}
			for k := 0; k < 50; k++ {
				r.pfA.Step()
				r.fwd.Poll()
				r.pfB.Step()
			}
			s := r.sink.Stats()
			if s.Received != total || s.Lost != 0 || s.OutOfOrder != 0 || s.BadIPChecksum+s.BadUDPChecksum != 0 {
				t.Fatalf("sink after %d frames of %d B: %+v\nforwarder: %+v\nport A: %+v\nsim A: %+v\nsim B: %+v",
					total, size, s, r.fwd.Stats(), r.a.Stats(), r.pfA.Counters(), r.pfB.Counters())
			}
			fs := r.fwd.Stats()
			if fs.TxFrames != total || fs.DroppedRxError != 0 {
				t.Errorf("forwarder stats %+v", fs)
			}
			if st := r.a.Stats(); st.RxMissed != 0 || st.Queues[0].RxDropped != 0 {
				t.Errorf("port A dropped frames: %+v", st)
			}
		})
	}
}

// TestForwardFreeRunning runs both simulators on their own goroutines and
// the forwarder on a pinned lcore, as `zcnet run --fwd` does: nothing may
// be lost. The frames go out as earlier ones arrive, never more in flight
// than a quarter of the receive ring, so the outcome does not depend on
// how promptly a loaded machine schedules the lcore and the simulators.
func TestForwardFreeRunning(t *testing.T) {
	r := newFwdRig(t, 64, 2048)
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	runner, err := pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield, AllowSharedCPU: true},
		[]pollmode.LcoreConfig{{ID: 0, CPU: cpus[len(cpus)-1], Tasks: []pollmode.Task{r.fwd}}})
	if err != nil {
		t.Fatal(err)
	}
	// The forwarder fills the receive ring before anything runs free.
	rxq := r.a.RxQueue(0)
	for i := 0; rxq.Posted() < rxq.Size()-1; i++ {
		if i == 100 {
			t.Fatalf("the forwarder posted %d of %d receive buffers in 100 polls", rxq.Posted(), rxq.Size()-1)
		}
		r.fwd.Poll()
	}
	inFlight := uint64(rxq.Size() / 4)
	r.pfA.Start()
	r.pfB.Start()
	defer r.pfA.Stop()
	defer r.pfB.Stop()
	if err := runner.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer runner.Stop()

	const total = 5000
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(r.a.MAC())}, r.pfA)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for r.sink.Stats().Received < total {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frames sent, %d arrived in 20 s: sink %+v", gen.Sent(), total, r.sink.Stats().Received, r.sink.Stats())
		}
		if sent := gen.Sent(); sent < total && sent-r.sink.Stats().Received < inFlight {
			gen.Emit(int(min(32, total-sent)))
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
	if s := r.sink.Stats(); s.Received != total || s.Lost != 0 || s.BadIPChecksum+s.BadUDPChecksum != 0 {
		t.Fatalf("sink: %+v\nforwarder: %+v\nport A: %+v\nsim A: %+v", s, r.fwd.Stats(), r.a.Stats(), r.pfA.Counters())
	}
}

func TestForwardZeroAllocs(t *testing.T) {
	r := newFwdRig(t, 64, 2048)
	for i := 0; i < 40; i++ {
		r.fwd.Poll()
		r.pfA.Step()
	}
	allocs := testing.AllocsPerRun(200, func() {
		r.pfA.Step()
		r.fwd.Poll()
	})
	if allocs != 0 {
		t.Errorf("Forwarder.Poll allocates %.1f times per call", allocs)
	}
}

func TestNewForwardErrors(t *testing.T) {
	r := newFwdRig(t, 64, 2048)
	for _, c := range []struct {
		name  string
		rx    ring.RxQueue
		tx    ring.TxQueue
		burst int
		want  string
	}{
		{"nil queues", nil, nil, 32, "receive queue, transmit queue and pool are all required"},
		{"burst 0", r.a.RxQueue(0), r.b.TxQueue(0), 0, "burst 0 out of range 1-1024"},
		{"burst 1025", r.a.RxQueue(0), r.b.TxQueue(0), 1025, "burst 1025 out of range 1-1024"},
	} {
		if _, err := New("x", c.rx, c.tx, r.fwd.pool, c.burst); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to say %q", c.name, err, c.want)
		}
	}
}

func wireSizeName(n int) string {
	switch n {
	case 64:
		return "64B"
	case 1518:
		return "1518B"
	}
	return "jumbo"
}
