package sim

import (
	"encoding/binary"
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

// rxtxSetup is a model with RX queue 0 (7 buffers given) and TX queue 3
// programmed, its wire captured.
func rxtxSetup(t *testing.T, mod func(*Options)) (*PF, vfio.BAR, *rxRing, *txRing, *capture) {
	t.Helper()
	p, bar := rxSetup(t, mod)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	r.give(7)
	tr := setupTx(t, p, bar, 3, 64)
	c := &capture{}
	p.Attach(c)
	return p, bar, r, tr, c
}

// TestFlapLink: a flap takes LINKS down at once, with LSC, drops and
// counts what arrives meanwhile, completes what is sent without putting it
// on the wire, and brings the link back by itself once the cable is back
// and autonegotiation is done.
func TestFlapLink(t *testing.T) {
	p, bar, r, tr, c := rxtxSetup(t, func(o *Options) { o.LinkDelay = 5 })
	pollSet(t, bar, tLINKS, 1<<30)
	bar.Read32(tEICR)

	p.FlapLink(20)
	start := p.clock.Load()
	if bar.Read32(tLINKS)&(1<<30) != 0 {
		t.Fatal("LINKS reads up right after the flap")
	}
	if bar.Read32(tEICR)&(1<<20) == 0 {
		t.Error("EICR.LSC not raised by the link going down")
	}
	p.Deliver(udpFrame(testMAC, 10))
	f := udpFrame(peerMAC, 10)
	tr.data(f, 512, 0, 0, len(f))
	tr.kick()
	p.Step()
	if cs := p.Counters(); cs.RxNotReady != 1 || cs.TxNoLink != 1 {
		t.Errorf("while down: RxNotReady %d, TxNoLink %d; want 1 each", cs.RxNotReady, cs.TxNoLink)
	}
	if len(c.frames) != 0 || !tr.dd(0) {
		t.Errorf("while down: %d frames on the wire (want 0), descriptor done %v (want true)", len(c.frames), tr.dd(0))
	}

	// The link is back after the 20 ticks down and 5 of autonegotiation,
	// not before.
	for bar.Read32(tLINKS)&(1<<30) == 0 {
		if p.clock.Load()-start > 1000 {
			t.Fatal("link never came back")
		}
	}
	if ticks := p.clock.Load() - start; ticks != 20+5 {
		t.Errorf("link back after %d ticks, want 25 (20 down, 5 of autonegotiation)", ticks)
	}
	if bar.Read32(tEICR)&(1<<20) == 0 {
		t.Error("EICR.LSC not raised by the link coming back")
	}
	p.Deliver(udpFrame(testMAC, 10))
	tr.data(f, 512, 0, 0, len(f))
	tr.kick()
	if n := p.Step(); n != 2 || len(c.frames) != 1 || r.wb(0).status&1 == 0 {
		t.Errorf("after the flap: %d frames moved, %d on the wire, RX DD %v; want 2, 1, true", n, len(c.frames), r.wb(0).status&1 != 0)
	}
}

// TestWriteBackDelay: held write-backs reach memory, and raise their
// interrupt, only after the set number of engine passes, in order; the
// frames themselves move at once. Disabling a queue writes back what is
// held; a delay of zero flushes on the next pass.
func TestWriteBackDelay(t *testing.T) {
	p, bar, r, tr, c := rxtxSetup(t, nil)
	bar.Write32(tIVAR, 0x80)           // RX queue 0 → vector 0
	bar.Write32(tIVAR+4, (0x80|1)<<24) // TX queue 3 → vector 1
	bar.Read32(tEICR)

	const delay = 3
	p.DelayWriteBack(delay)
	f := udpFrame(testMAC, 10)
	p.Deliver(f)
	p.Deliver(f)
	g := udpFrame(peerMAC, 10)
	tr.data(g, 512, 0, 0, len(g))
	tr.kick()
	if n := p.Step(); n != 3 {
		t.Fatalf("Step moved %d frames, want 3: a delay holds write-backs, not data", n)
	}
	if len(c.frames) != 1 || string(r.bufs[:len(f)]) != string(f) {
		t.Errorf("data did not move at once: %d frames on the wire, RX buffer holds the frame: %v", len(c.frames), string(r.bufs[:len(f)]) == string(f))
	}
	for pass := 1; pass <= delay; pass++ {
		if r.wb(0).status&1 != 0 || r.wb(1).status&1 != 0 || tr.dd(0) {
			t.Fatalf("written back %d passes after the DMA, want %d", pass-1, delay)
		}
		if v := bar.Read32(tEICS); v&3 != 0 {
			t.Fatalf("queue interrupt causes %#x raised before the write-back", v&3)
		}
		p.Step()
	}
	if r.wb(0).status&1 == 0 || r.wb(1).status&1 == 0 || !tr.dd(0) {
		t.Errorf("not written back after %d passes: RX DD %v %v, TX DD %v", delay, r.wb(0).status&1 != 0, r.wb(1).status&1 != 0, tr.dd(0))
	}
	if v := bar.Read32(tEICR); v&3 != 3 {
		t.Errorf("EICR %#x after the write-backs, want both queue causes", v)
	}
	if r.wb(0).length != uint32(len(f)) {
		t.Errorf("held write-back carries length %d, want %d", r.wb(0).length, len(f))
	}

	// Disabling the queue writes back what it holds.
	p.Deliver(f)
	p.Step()
	if r.wb(2).status&1 != 0 {
		t.Fatal("written back at once with a delay set")
	}
	bar.Write32(tRxq(0, 0x28), 0)
	if r.wb(2).status&1 == 0 {
		t.Error("disabling the queue left its write-back held")
	}

	// Head write-back is held too, and a zero delay flushes on the next
	// pass, before anything newer.
	bar.Write32(tTxq(3, 0x38), txWBIOVA|1)
	tr.data(g, 512, 0, 0, len(g))
	tr.kick()
	p.Step()
	if h := binary.LittleEndian.Uint32(tr.wb); h != 0 {
		t.Fatalf("head written back at once (%d) with a delay set", h)
	}
	p.DelayWriteBack(0)
	p.Step()
	if h := binary.LittleEndian.Uint32(tr.wb); h != 2 {
		t.Errorf("head write-back %d after the delay was lifted, want 2", h)
	}
}

// TestInjectedDMAFaults: injected faults act exactly as unmapped IOVAs do,
// are counted as IOMMU faults and as injected, and once they are over the
// same buffers and rings work again.
func TestInjectedDMAFaults(t *testing.T) {
	p, _, r, tr, c := rxtxSetup(t, nil)

	// RX: the next access, the descriptor fetch, faults: that frame is
	// dropped, the next one lands in the same descriptor.
	p.FailDMA(1)
	p.Deliver(udpFrame(testMAC, 10))
	p.Deliver(udpFrame(testMAC, 11))
	if n := p.Step(); n != 2 {
		t.Fatalf("Step handled %d frames, want 2 (one dropped, one received)", n)
	}
	if w := r.wb(0); w.status&1 == 0 || int(w.length) != len(udpFrame(testMAC, 11)) {
		t.Errorf("descriptor 0: status %#x length %d, want the second frame", w.status, w.length)
	}
	cs := p.Counters()
	if cs.RxDMAFault != 1 || cs.IOMMUFaults != 1 || cs.InjectedFaults != 1 || cs.LastFaultIOVA != r.ringIOVA() {
		t.Errorf("RxDMAFault %d, IOMMU faults %d (%d injected, last at %#x); want 1, 1, 1 at %#x",
			cs.RxDMAFault, cs.IOMMUFaults, cs.InjectedFaults, cs.LastFaultIOVA, r.ringIOVA())
	}

	// A failing buffer: every frame for it is dropped until the fault is
	// cleared; the buffer is untouched.
	p.FailDMARange(r.bufIOVA(1)+100, 1)
	for i := 0; i < 3; i++ {
		p.Deliver(udpFrame(testMAC, 200))
	}
	p.Step()
	if r.wb(1).status&1 != 0 || r.bufs[r.bufSize] != 0 {
		t.Error("the frame reached a buffer whose IOVA faults")
	}
	p.ClearDMAFailures()
	p.Deliver(udpFrame(testMAC, 200))
	p.Step()
	if r.wb(1).status&1 == 0 {
		t.Error("no frame received once the fault was cleared")
	}

	// TX: a faulting ring fetch delays the packet and loses nothing; a
	// faulting buffer drops its packet and still completes it.
	f := udpFrame(peerMAC, 10)
	tr.data(f, 512, 0, 0, len(f))
	tr.kick()
	p.FailDMA(1)
	p.Step()
	if len(c.frames) != 0 {
		t.Fatal("packet sent although its descriptor fetch faulted")
	}
	p.Step()
	first := tr.data(f, 512, 0, 0, len(f))
	p.FailDMARange(txBufIOVA+uint64(tr.used)-64, 64)
	tr.kick()
	p.Step()
	if len(c.frames) != 1 || !tr.dd(first) {
		t.Errorf("%d frames on the wire (want 1, the packet behind the faulting ring fetch); faulting packet completed: %v",
			len(c.frames), tr.dd(first))
	}
	cs = p.Counters()
	if cs.TxDMAFault != 1 || cs.RxDMAFault != 4 || cs.IOMMUFaults != 6 || cs.InjectedFaults != 6 {
		t.Errorf("TxDMAFault %d, RxDMAFault %d, IOMMU faults %d (%d injected); want 1, 4, 6, 6",
			cs.TxDMAFault, cs.RxDMAFault, cs.IOMMUFaults, cs.InjectedFaults)
	}
}
