package dpdk_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// zcRig is the zero-copy data path of `zcnet sim --vhost`, on the
// simulated rig: the appliance on a free-running simulated 82599, serving
// one guest (the vhost-user socket sock) on NIC queue pair 0, polled by a
// pinned lcore. A generator feeds the NIC's wire; what the NIC transmits
// goes through a MAC-swap check into a verifying sink.
type zcRig struct {
	*rig.Rig
	pf   *sim.PF
	gen  *wire.Generator
	sink *wire.Sink
	swap *swapCheck
	sock string
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
	// zcPCI is the simulated NIC port's address.
	zcPCI = "sim:0000:01:00.0"
	// zcVFPCI is VF 0 of that port, for a rig whose NIC port is a VF
	// (the PF is then the host's Linux driver's, sim/linuxpf).
	zcVFPCI = zcPCI + "/vf0"
)

type zcRigOptions struct {
	name     string
	features uint64 // offered to the guest: vhost.DefaultFeatures, with or without FRingPacked; 0: the default
	rate     float64
	// guestMAC, if set, is the guest's own MAC, configured for its port,
	// which then shares the NIC port with another guest slot (the NIC in
	// pool mode): the generator addresses the guest, not the NIC.
	guestMAC string
	// vf: the NIC port is zcVFPCI, the guest has the MAC the host
	// assigned the VF and the generator addresses it.
	vf bool
	// count stops the generator after that many frames (0: no limit).
	count uint64
}

// newZcRig has the rig open the appliance and starts the simulator, the
// vhost-user server and the lcore. Cleanup tears it down through
// appliance.Shutdown (lcore, channel, vhost session, NIC) and then checks
// that the NIC never faulted in the IOMMU and that no guest memory is left
// mapped (Shutdown fails otherwise).
func newZcRig(t *testing.T, h host, o zcRigOptions) *zcRig {
	t.Helper()
	if o.features == 0 {
		o.features = vhost.DefaultFeatures
	}
	if o.features&^vhost.FRingPacked != vhost.DefaultFeatures {
		t.Fatalf("features %#x: the appliance offers vhost.DefaultFeatures, with or without RING_PACKED", o.features)
	}
	warnCore, warnings := observer.New(zapcore.WarnLevel)
	logger := zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, warnCore)
	}))).With(zap.String("rig", o.name))
	r := &zcRig{sock: filepath.Join(t.TempDir(), "vhost.sock"), warnings: warnings}
	pci, dst, maxGuests := zcPCI, rig.PortMAC(zcPCI), 1
	if o.vf {
		pci, dst = zcVFPCI, rig.VFMAC(zcVFPCI)
	}
	if o.guestMAC != "" {
		copy(dst[:], mustMAC(o.guestMAC))
		maxGuests = 2
	}
	var err error
	r.Rig, err = rig.Open(rig.Config{
		Spec: appliance.Spec{Lcores: fmt.Sprint(h.backendCPU), PageSize: hugepage.Page4K, LinkTimeout: 2 * time.Second,
			NICs: []appliance.NICSpec{{PCI: pci, Rxd: zcNICRing, Txd: zcNICRing, NoPacked: o.features&vhost.FRingPacked == 0,
				MaxGuests: maxGuests, Guests: []appliance.GuestSpec{{Socket: r.sock, MAC: o.guestMAC}}}}},
		Options:   []appliance.Option{appliance.WithLogger(logger)},
		Generator: &wire.GeneratorConfig{SrcMAC: wire.MAC(mustMAC(genSrcMAC)), DstMAC: wire.MAC(dst), FrameSize: zcFrameSize, Rate: o.rate, Count: o.count},
		Tx: func(sink wire.Endpoint) wire.Endpoint {
			r.swap = &swapCheck{next: sink, dst: mustMAC(genSrcMAC), src: dst[:]}
			return r.swap
		},
	})
	if err != nil {
		t.Fatalf("the appliance on the simulated 82599: %v", err)
	}
	r.pf, r.gen, r.sink = r.Port.PF, r.Gen, r.Port.Sink
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.gen.Stop()
		if l := r.App.Lcores()[0]; lcoreDied(l) {
			// A task that panicked inside Poll left the guest's
			// data-path lock held: shutting down would block on it.
			t.Errorf("lcore: %v", l.Err())
			var pe *pollmode.TaskPanicError
			if errors.As(l.Err(), &pe) {
				t.Logf("panicking goroutine:\n%s", pe.Stack)
			}
			r.Ports.Stop()
			return
		}
		// Shutdown fails if a channel did not stop, a copy pool could not
		// be freed or guest memory stayed DMA-mapped after the session.
		if err := r.Shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		r.Ports.Stop()
		// Everything that could DMA has stopped: any access outside a
		// mapping, at any point of the run, shows now.
		if c := r.pf.Counters(); c.IOMMUFaults != 0 {
			t.Errorf("the simulated NIC counted %d IOMMU faults (last at IOVA %#x): it reached memory that was not mapped", c.IOMMUFaults, c.LastFaultIOVA)
		}
		for _, e := range r.warnings.All() {
			t.Errorf("back end logged %s %q %v", e.Level, e.Message, e.ContextMap())
		}
	})
	return r
}

// lcoreDied reports whether l stopped with an error (a task crashed).
func lcoreDied(l *pollmode.Lcore) bool {
	select {
	case <-l.Done():
		return l.Err() != nil
	default:
		return false
	}
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

// session reads the guest's session (appliance.Session takes the guest's
// data-path lock, as the engine's poller and the vhost control path do).
// It fails the test, instead of blocking for ever, if the lcore died: a
// task that panics inside Poll leaves the lock held.
func (r *zcRig) session(t *testing.T) appliance.Session {
	t.Helper()
	var s appliance.Session
	var err error
	done := make(chan struct{})
	go func() {
		s, err = r.App.Session(r.sock)
		close(done)
	}()
	l := r.App.Lcores()[0]
	select {
	case <-done:
	case <-l.Done():
		t.Fatalf("the lcore polling the port stopped while traffic ran: %v", l.Err())
	}
	if err != nil || len(s.Channels) != 1 {
		t.Fatalf("session: %+v, %v: want one channel", s, err)
	}
	return s
}

// channel is the guest's one channel: its counters and its error.
func (r *zcRig) channel(t *testing.T) appliance.ChannelState {
	t.Helper()
	return r.session(t).Channels[0]
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
		c := r.channel(t)
		if c.RxPosted > burst {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine has not posted the guest's receive buffers to the NIC 5 s after the guest started forwarding (%d buffers on the NIC); port %+v, err %v",
				c.RxPosted, c.Stats, c.Err)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitSession waits for the vhost-user session to end and the guest's
// memory to be unmapped from the NIC's IOMMU, failing the test otherwise.
func (r *zcRig) waitSession(t *testing.T, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s := r.session(t); s.Connected || s.MappedRegions != 0; s = r.session(t) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: 5 s later the back end is still connected (%v) or has %d guest regions DMA-mapped", why, s.Connected, s.MappedRegions)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nicCounters is what the NIC side counted, from the ixgbe driver's
// statistics and the simulator's own counters.
type nicCounters struct {
	// Queued is what the NIC DMA-wrote into its one queue's buffers
	// (QPRC).
	Queued uint64
	// Dropped frames, by where: no free descriptor or queue off (QPRDC),
	// packet buffer full (MPC), and refused before the packet buffer
	// (link down or receiver off, filters, size).
	NoDescriptor, Missed, NotReady uint64
	// Transmitted is what left the NIC (GPTC, which with one queue is its
	// QPTC); TxLost what the simulator
	// dropped on its transmit side.
	Transmitted, TxLost uint64
	IOMMUFaults         uint64
}

func (n nicCounters) rxDropped() uint64 { return n.NoDescriptor + n.Missed + n.NotReady }

func (r *zcRig) nicCounters() nicCounters {
	n := r.App.Snapshot("test").NICs[0]
	c := r.pf.Counters()
	return nicCounters{
		Queued: n.RxQueued, NoDescriptor: n.RxNoDescriptor, Missed: n.RxMissed,
		NotReady:    c.RxNotReady + c.RxFiltered + c.RxRunt + c.RxOversize + c.RxDMAFault,
		Transmitted: n.TxPackets, TxLost: c.TxNoLink + c.TxDMAFault + c.TxMalformed,
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
