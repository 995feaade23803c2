package dpdk_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/engine"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// zcRig is the zero-copy data path of `zcnet sim --vhost`, assembled for
// a test: a free-running simulated 82599 opened by the ixgbe driver, a
// vhost-user device whose memory hook DMA-maps the guest into the
// simulated IOMMU, and the engine port joining NIC queue pair 0 to the
// guest's queue pair 0, polled by a pinned lcore. A generator feeds the
// NIC's wire; what the NIC transmits goes through a MAC-swap check into a
// verifying sink.
type zcRig struct {
	pf     *sim.PF
	nic    *ixgbe.Port
	dev    *vhost.Device
	dma    *engine.GuestDMA
	port   *engine.Channel
	runner *pollmode.Runner
	gen    *wire.Generator
	sink   *wire.Sink
	swap   *swapCheck
	sock   string
	// warnings keeps what the back end logged at warning level or above:
	// with a well-behaved front end, each is a bug.
	warnings *observer.ObservedLogs
}

const (
	// zcNICRing is the NIC's RX and TX ring size: deeper than the guest's
	// rings, so the guest's buffers, not the NIC's ring, bound what is
	// posted, and as `zcnet sim` has it.
	zcNICRing = 2048
	// zcFrameSize is the generator's frame size on the wire (FCS
	// included).
	zcFrameSize = 256
	// genSrcMAC is the generator's default source address: after the
	// guest's MAC swap, the destination of every frame on the NIC's
	// transmit side.
	genSrcMAC = "02:00:00:00:00:01"
)

type zcRigOptions struct {
	name     string
	features uint64 // offered by the vhost device; 0: vhost.DefaultFeatures
	rate     float64
}

// newZcRig assembles the rig and starts the simulator, the vhost-user
// server and the lcore. Cleanup tears it down in the only safe order (lcore,
// port, vhost session, NIC) and then checks that the NIC never faulted in
// the IOMMU and that no guest memory is left mapped.
func newZcRig(t *testing.T, h host, o zcRigOptions) *zcRig {
	t.Helper()
	warnCore, warnings := observer.New(zapcore.WarnLevel)
	logger := zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, warnCore)
	})))
	r := &zcRig{pf: sim.NewPF(sim.DefaultOptions()), warnings: warnings}
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		t.Fatal(err)
	}
	r.nic, err = ixgbe.Open(r.pf, ixgbe.Config{IOVA: alloc, LinkTimeout: 2 * time.Second,
		RxRingSize: zcNICRing, TxRingSize: zcNICRing, RingMemory: hugepage.Options{PageSize: hugepage.Page4K}})
	if err != nil {
		t.Fatalf("ixgbe.Open on the simulated 82599: %v", err)
	}
	pool := newHostPool(t, r.pf, alloc)

	r.dma = engine.NewGuestDMA(r.pf.DMA(), alloc)
	r.dev, err = vhost.NewDevice(vhost.Config{Name: o.name, Hook: r.dma, Features: o.features, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	r.port, err = engine.NewChannel(engine.ChannelConfig{Name: o.name, Device: r.dev, NIC: r.nic.QueuePair(0),
		DMA: r.dma, CopyPool: pool.Pool})
	if err != nil {
		t.Fatal(err)
	}
	r.sock = filepath.Join(t.TempDir(), "vhost.sock")
	l, err := vhost.Listen(r.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var serving sync.WaitGroup
	serving.Go(func() {
		if err := vhost.ServeListener(ctx, l, r.dev); err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	r.runner, err = pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield},
		[]pollmode.LcoreConfig{{ID: 0, CPU: h.backendCPU, Tasks: []pollmode.Task{r.port}}})
	if err != nil {
		t.Fatal(err)
	}

	r.sink = wire.NewSink(nil)
	r.swap = &swapCheck{next: r.sink, dst: mustMAC(genSrcMAC), src: r.nic.MAC()}
	r.pf.Attach(r.swap)
	r.gen, err = wire.NewGenerator(wire.GeneratorConfig{SrcMAC: wire.MAC(mustMAC(genSrcMAC)), DstMAC: wire.MAC(r.nic.MAC()),
		FrameSize: zcFrameSize, Rate: o.rate}, r.pf)
	if err != nil {
		t.Fatal(err)
	}
	r.pf.Start()
	if err := r.runner.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.gen.Stop()
		if err := r.runner.Stop(); err != nil {
			// A task that panicked inside Poll left the guest's
			// data-path lock held: everything below would block on it.
			t.Errorf("lcore: %v", err)
			var pe *pollmode.TaskPanicError
			if errors.As(err, &pe) {
				t.Logf("panicking goroutine:\n%s", pe.Stack)
			}
			r.pf.Stop()
			return
		}
		if err := r.port.Close(); err != nil {
			t.Errorf("port Close: %v", err)
		}
		cancel()
		serving.Wait()
		if err := r.nic.Close(); err != nil {
			t.Errorf("NIC Close: %v", err)
		}
		r.pf.Stop()
		// Everything that could DMA has stopped: any access outside a
		// mapping, at any point of the run, shows now.
		if c := r.pf.Counters(); c.IOMMUFaults != 0 {
			t.Errorf("the simulated NIC counted %d IOMMU faults (last at IOVA %#x): it reached memory that was not mapped", c.IOMMUFaults, c.LastFaultIOVA)
		}
		if n := r.dma.Mapped(); n != 0 {
			t.Errorf("%d guest memory regions still DMA-mapped after the session ended", n)
		}
		r.pf.Close()
		if err := pool.Close(); err != nil {
			t.Errorf("copy pool: %v", err)
		}
		for _, e := range r.warnings.All() {
			t.Errorf("back end logged %s %q %v", e.Level, e.Message, e.ContextMap())
		}
	})
	return r
}

// newHostPool maps the port's copy-path buffers (2 KiB, as zcnet's) into
// the NIC's IOMMU domain. The zero-copy path must not use them; they are
// there because the engine falls back to them when it has to.
func newHostPool(t *testing.T, pf *sim.PF, alloc *hugepage.IOVAAllocator) *hugepage.DMAPool {
	t.Helper()
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: 2048, Count: 1024},
		Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "dpdk-test-copy"},
		Domains: []hugepage.DMADomain{{Mapper: pf.DMA(), IOVA: alloc}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// swapCheck counts frames on the NIC's transmit side whose addresses are
// not those of a generator frame with source and destination swapped (the
// guest's macswap), then passes every frame on.
type swapCheck struct {
	next     wire.Endpoint
	dst, src net.HardwareAddr
	bad      atomic.Uint64
}

func (s *swapCheck) Deliver(f []byte) {
	if len(f) < 12 || !bytes.Equal(f[:6], s.dst) || !bytes.Equal(f[6:12], s.src) {
		s.bad.Add(1)
	}
	s.next.Deliver(f)
}

// locked runs f with the guest's data-path lock held, as the engine's
// poller and the vhost control path take it. It fails the test, instead of
// blocking for ever, if the lcore died: a task that panics inside Poll
// leaves the lock held.
func (r *zcRig) locked(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		r.dev.LockDataPath()
		defer r.dev.UnlockDataPath()
		f()
		close(done)
	}()
	select {
	case <-done:
	case <-r.runner.Lcores()[0].Done():
		t.Fatalf("the lcore polling the port stopped while traffic ran: %v", r.runner.Lcores()[0].Err())
	}
}

// waitGuestBuffers waits until the port has posted guest receive buffers
// to the NIC: frames that arrive before that are dropped by the NIC (its
// queue is off until the guest posts buffers). More than a burst on the
// NIC means guest buffers: the engine keeps at most a burst of host
// buffers there while the guest has posted none.
func (r *zcRig) waitGuestBuffers(t *testing.T) {
	t.Helper()
	const burst = 32
	deadline := time.Now().Add(5 * time.Second)
	for {
		var posted int
		r.locked(t, func() { posted = r.nic.RxQueue(0).Posted() })
		if posted > burst {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine has not posted the guest's receive buffers to the NIC 5 s after the guest started forwarding (%d buffers on the NIC); port %+v, err %v",
				posted, r.port.Stats(), r.port.Err())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitSession waits for the vhost-user session to end and the guest's
// memory to be unmapped from the NIC's IOMMU, failing the test otherwise.
func (r *zcRig) waitSession(t *testing.T, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.dev.Connected() || r.dma.Mapped() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: 5 s later the back end is still connected (%v) or has %d guest regions DMA-mapped", why, r.dev.Connected(), r.dma.Mapped())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nicCounters is what the NIC side counted, from the ixgbe driver's
// statistics and the simulator's own counters.
type nicCounters struct {
	// Queued is what the NIC DMA-wrote into queue 0's buffers (QPRC).
	Queued uint64
	// Dropped frames, by where: no free descriptor or queue off (QPRDC),
	// packet buffer full (MPC), and refused before the packet buffer
	// (link down or receiver off, filters, size).
	NoDescriptor, Missed, NotReady uint64
	// Transmitted is what left the NIC (QPTC); TxLost what the simulator
	// dropped on its transmit side.
	Transmitted, TxLost uint64
	IOMMUFaults         uint64
}

func (n nicCounters) rxDropped() uint64 { return n.NoDescriptor + n.Missed + n.NotReady }

func (r *zcRig) nicCounters() nicCounters {
	st := r.nic.Stats()
	c := r.pf.Counters()
	return nicCounters{
		Queued: st.Queues[0].RxPackets, NoDescriptor: st.Queues[0].RxDropped, Missed: st.RxMissed,
		NotReady:    c.RxNotReady + c.RxFiltered + c.RxRunt + c.RxOversize + c.RxDMAFault,
		Transmitted: st.Queues[0].TxPackets, TxLost: c.TxNoLink + c.TxDMAFault + c.TxMalformed,
		IOMMUFaults: c.IOMMUFaults,
	}
}

// drain waits until every frame the generator sent is accounted for at the
// sink or by the NIC's drop counters, or until nothing has moved for a
// second (frames lost inside the engine or the guest never arrive; on a
// loaded host a poller can be descheduled for hundreds of milliseconds).
func (r *zcRig) drain() {
	sent := r.gen.Sent()
	last, lastMove := uint64(0), time.Now()
	for time.Since(lastMove) < time.Second {
		seen := r.sink.Stats().Frames + r.nicCounters().rxDropped()
		if seen >= sent {
			return
		}
		if seen != last {
			last, lastMove = seen, time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
}
