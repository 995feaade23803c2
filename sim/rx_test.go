package sim

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

const (
	rxRingIOVA = 0x1000000
	rxBufIOVA  = 0x1100000
)

// rxRing is one RX queue programmed with raw register writes, its ring and
// buffers in mmap memory mapped through the model's IOMMU.
type rxRing struct {
	t       testing.TB
	bar     vfio.BAR
	q, n    int
	bufSize int
	ring    []byte
	bufs    []byte
	next    int // next descriptor software will read
}

func setupRx(t testing.TB, p *PF, bar vfio.BAR, q, n, bufKB int, srrctlExtra uint32) *rxRing {
	t.Helper()
	ring := dmaMem(t, 64<<10)
	bufs := dmaMem(t, 4<<20)
	if err := p.DMA().MapDMA(rxRingIOVA+uint64(q)<<16, ring); err != nil {
		t.Fatal(err)
	}
	if err := p.DMA().MapDMA(rxBufIOVA+uint64(q)<<22, bufs); err != nil {
		t.Fatal(err)
	}
	r := &rxRing{t: t, bar: bar, q: q, n: n, bufSize: bufKB << 10, ring: ring, bufs: bufs}
	bar.Write32(tRXCTRL, 1)
	bar.Write32(tRxq(q, 0x00), uint32(r.ringIOVA()))
	bar.Write32(tRxq(q, 0x04), uint32(r.ringIOVA()>>32))
	bar.Write32(tRxq(q, 0x08), uint32(16*n))
	bar.Write32(tRxq(q, 0x14), uint32(bufKB)|1<<25|srrctlExtra) // advanced one-buffer
	bar.Write32(tRxq(q, 0x10), 0)
	bar.Write32(tRxq(q, 0x18), 0)
	for i := 0; i < n; i++ {
		r.post(i)
	}
	bar.Write32(tRxq(q, 0x28), 1<<25)
	pollSet(t, bar, tRxq(q, 0x28), 1<<25)
	return r
}

func (r *rxRing) ringIOVA() uint64 { return rxRingIOVA + uint64(r.q)<<16 }

func (r *rxRing) bufIOVA(i int) uint64 { return rxBufIOVA + uint64(r.q)<<22 + uint64(i*r.bufSize) }

func (r *rxRing) desc(i int) []byte { return r.ring[16*i : 16*i+16] }

// post writes descriptor i in the read format.
func (r *rxRing) post(i int) {
	d := r.desc(i)
	binary.LittleEndian.PutUint64(d, r.bufIOVA(i))
	binary.LittleEndian.PutUint64(d[8:], 0)
}

// give hands descriptors up to (not including) tail to the NIC.
func (r *rxRing) give(tail int) { r.bar.Write32(tRxq(r.q, 0x18), uint32(tail%r.n)) }

type wb struct {
	pktInfo, rss, status, length, vlan uint32
	data                               []byte
}

func (r *rxRing) wb(i int) wb {
	d := r.desc(i)
	le := binary.LittleEndian
	w := wb{pktInfo: le.Uint32(d), rss: le.Uint32(d[4:]), status: le.Uint32(d[8:]),
		length: le.Uint32(d[12:]) & 0xFFFF, vlan: le.Uint32(d[12:]) >> 16}
	w.data = r.bufs[i*r.bufSize : i*r.bufSize+int(w.length)]
	return w
}

func rxSetup(t testing.TB, mod func(*Options)) (*PF, vfio.BAR) {
	p, bar := newPF(t, func(o *Options) {
		o.LinkDelay = 0
		if mod != nil {
			mod(o)
		}
	})
	p.Step()
	return p, bar
}

func TestRxWriteBackLayout(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	r.give(7)
	f := udpFrame(testMAC, 100)
	p.Deliver(f)
	if n := p.Step(); n != 1 {
		t.Fatalf("Step moved %d frames, want 1", n)
	}
	w := r.wb(0)
	if w.status&1 == 0 || w.status&2 == 0 {
		t.Fatalf("status %#x: want DD and EOP", w.status)
	}
	if w.status&(1<<6) == 0 || w.status&(1<<5) == 0 || w.status&(1<<4) == 0 {
		t.Errorf("status %#x: want IPCS, L4CS, UDPCS", w.status)
	}
	if w.status&(3<<30) != 0 {
		t.Errorf("status %#x: checksum errors on a good frame", w.status)
	}
	if w.status&(1<<7) != 0 {
		t.Errorf("status %#x: PIF set for an exact unicast match", w.status)
	}
	if w.length != uint32(len(f)) || string(w.data) != string(f) {
		t.Errorf("length %d, want %d (CRC stripped); data equal %v", w.length, len(f), string(w.data) == string(f))
	}
	if pt := w.pktInfo >> 4 & 0xFFF; pt != (1<<0 | 1<<5) { // IPv4 (bit 4) + UDP (bit 9), shifted
		t.Errorf("packet type %#x, want IPv4|UDP", pt)
	}
	if w.rss != 0x1234 {
		t.Errorf("dword 1 = %#x, want the IP ID 0x1234 when RXCSUM.PCSD=0", w.rss)
	}
	if h := bar.Read32(tRxq(0, 0x10)); h != 1 {
		t.Errorf("RDH = %d, want 1", h)
	}
	if v := bar.Read32(tGPRC); v != 1 {
		t.Errorf("GPRC = %d", v)
	}
	lo, hi := bar.Read32(tGORCL), bar.Read32(tGORCH)
	if lo != uint32(len(f)+4) || hi != 0 {
		t.Errorf("GORC = %d:%d, want %d (frame + CRC)", hi, lo, len(f)+4)
	}
	if bar.Read32(tGORCL) != 0 || bar.Read32(tGPRC) != 0 {
		t.Error("statistics not cleared by the read")
	}
	if v := bar.Read32(tQPRC0); v != 1 {
		t.Errorf("QPRC(0) = %d", v)
	}

	// A bad L4 checksum sets L4E; keeping the CRC adds 4 bytes.
	bar.Write32(tHLREG0, bar.Read32(tHLREG0)&^2)
	bad := buildFrame(frameSpec{dst: testMAC, src: peerMAC, vlan: -1, srcIP: netip.MustParseAddr("10.0.0.2"),
		dstIP: netip.MustParseAddr("10.0.0.1"), proto: 6, sport: 1, dport: 2, payload: 10, badL4: true})
	p.Deliver(bad)
	p.Step()
	w = r.wb(1)
	if w.status&(1<<5) == 0 || w.status&(1<<30) == 0 || w.status&(1<<31) != 0 {
		t.Errorf("status %#x: want L4CS and L4E, no IPE", w.status)
	}
	if w.length != uint32(len(bad)+4) {
		t.Errorf("length %d, want %d with CRC kept", w.length, len(bad)+4)
	}
}

func TestRxMultiDescriptorFrame(t *testing.T) {
	p, bar := rxSetup(t, func(o *Options) {})
	bar.Write32(tHLREG0, bar.Read32(tHLREG0)|1<<2) // jumbo
	bar.Write32(0x04268, 9018<<16)
	r := setupRx(t, p, bar, 0, 16, 1, 0)
	r.give(15)
	f := udpFrame(testMAC, 2500) // 2542 bytes: three 1 KB buffers
	p.Deliver(f)
	p.Step()
	var got []byte
	for i := 0; i < 3; i++ {
		w := r.wb(i)
		if w.status&1 == 0 {
			t.Fatalf("descriptor %d: DD not set", i)
		}
		eop := w.status&2 != 0
		if eop != (i == 2) {
			t.Errorf("descriptor %d: EOP=%v", i, eop)
		}
		got = append(got, w.data...)
	}
	if string(got) != string(f) {
		t.Errorf("reassembled %d bytes differ from the %d sent", len(got), len(f))
	}
	if r.wb(3).status != 0 {
		t.Error("descriptor after the frame was touched")
	}
	if h := bar.Read32(tRxq(0, 0x10)); h != 3 {
		t.Errorf("RDH = %d, want 3", h)
	}
}

func TestRxFilters(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 64, 2, 0)
	r.give(63)
	mcast := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	other := [6]byte{0x02, 0x99, 0x99, 0x99, 0x99, 0x99}
	count := func() int {
		n := p.Step()
		return n
	}
	p.Deliver(udpFrame(other, 10))
	p.Deliver(udpFrame(bcastMAC, 10))
	p.Deliver(udpFrame(mcast, 10))
	if n := count(); n != 0 {
		t.Errorf("%d frames passed with no filter accepting them", n)
	}
	bar.Write32(tFCTRL, 1<<10) // BAM
	p.Deliver(udpFrame(bcastMAC, 10))
	if n := count(); n != 1 {
		t.Errorf("broadcast with BAM: %d frames", n)
	}
	// Multicast through the MTA: MO=0 hashes DA bits [47:36].
	h := (uint32(mcast[4])>>4 | uint32(mcast[5])<<4) & 0xFFF
	bar.Write32(tMTA+4*(h>>5), 1<<(h&31))
	p.Deliver(udpFrame(mcast, 10))
	if n := count(); n != 0 {
		t.Error("MTA hit accepted with MCSTCTRL.MFE=0")
	}
	bar.Write32(tMCSTCTRL, 1<<2)
	p.Deliver(udpFrame(mcast, 10))
	if n := count(); n != 1 {
		t.Errorf("multicast MTA hit: %d frames", n)
	}
	if v := bar.Read32(tMPRC); v != 1 {
		t.Errorf("MPRC = %d, want 1", v)
	}
	// A second exact address in RAR(5).
	bar.Write32(tRAL+40, uint32(other[0])|uint32(other[1])<<8|uint32(other[2])<<16|uint32(other[3])<<24)
	bar.Write32(tRAL+44, uint32(other[4])|uint32(other[5])<<8)
	p.Deliver(udpFrame(other, 10))
	if n := count(); n != 0 {
		t.Error("RAR without AV matched")
	}
	setBits(bar, tRAL+44, 1<<31)
	p.Deliver(udpFrame(other, 10))
	if n := count(); n != 1 {
		t.Error("RAR(5) with AV did not match")
	}
	// Promiscuous unicast.
	p.Deliver(udpFrame([6]byte{2, 1, 1, 1, 1, 1}, 10))
	bar.Write32(tFCTRL, 1<<10|1<<9)
	p.Deliver(udpFrame([6]byte{2, 1, 1, 1, 1, 1}, 10))
	if n := count(); n != 1 {
		t.Errorf("UPE: %d frames, want 1", n)
	}
	// VLAN filter: tagged frames need their VID in VFTA once VFE is on.
	tagged := buildFrame(frameSpec{dst: testMAC, src: peerMAC, vlan: 100, srcIP: netip.MustParseAddr("10.0.0.2"),
		dstIP: netip.MustParseAddr("10.0.0.1"), proto: 17, payload: 20})
	bar.Write32(tVLNCTRL, 0x8100|1<<30)
	p.Deliver(tagged)
	if n := count(); n != 0 {
		t.Error("tagged frame passed VFE with an empty VFTA")
	}
	bar.Write32(tVFTA+4*(100>>5), 1<<(100&31))
	p.Deliver(tagged)
	if n := count(); n != 1 {
		t.Fatal("tagged frame with its VID in VFTA dropped")
	}
	if c := p.Counters().RxFiltered; c != 7 {
		t.Errorf("RxFiltered = %d, want 7", c)
	}
}

func TestRxVLANStrip(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	bar.Write32(tRxq(0, 0x28), bar.Read32(tRxq(0, 0x28))|1<<30) // VME
	r.give(7)
	tagged := buildFrame(frameSpec{dst: testMAC, src: peerMAC, vlan: 0x2064, srcIP: netip.MustParseAddr("10.0.0.2"),
		dstIP: netip.MustParseAddr("10.0.0.1"), proto: 6, payload: 20})
	p.Deliver(tagged)
	p.Step()
	w := r.wb(0)
	if w.status&(1<<3) == 0 || w.vlan != 0x2064 {
		t.Errorf("status %#x vlan %#x: want VP and the tag 0x2064", w.status, w.vlan)
	}
	want := append(append([]byte{}, tagged[:12]...), tagged[16:]...)
	if string(w.data) != string(want) {
		t.Error("stripped frame content wrong")
	}
	if w.status&(1<<5) == 0 || w.status&(1<<30) != 0 {
		t.Errorf("status %#x: checksum of the tagged TCP frame not verified as good", w.status)
	}
}

func TestRxNoDescriptors(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	r.give(2) // descriptors 0 and 1: the NIC stops one short of RDT
	for i := 0; i < 4; i++ {
		p.Deliver(udpFrame(testMAC, 10))
	}
	if n := p.Step(); n != 2 {
		t.Fatalf("Step moved %d frames into 2 free descriptors", n)
	}
	if r.wb(2).status != 0 {
		t.Error("the NIC used the descriptor at RDT")
	}
	// Without DROP_EN the rest wait in the packet buffer.
	if n := p.Step(); n != 0 {
		t.Fatalf("frames moved with RDH == RDT: %d", n)
	}
	if v := bar.Read32(tRNBC0); v != 1 {
		t.Errorf("RNBC = %d, want 1 (counted once for the blocked frame)", v)
	}
	r.give(5)
	if n := p.Step(); n != 2 {
		t.Errorf("after refill: %d frames, want the 2 waiting", n)
	}
	// With DROP_EN they are dropped and counted per queue.
	bar.Write32(tRxq(0, 0x14), bar.Read32(tRxq(0, 0x14))|1<<28)
	for i := 0; i < 3; i++ {
		p.Deliver(udpFrame(testMAC, 10))
	}
	if n := p.Step(); n != 3 {
		t.Fatalf("Step handled %d frames, want 1 received + 2 dropped", n)
	}
	if v := bar.Read32(tQPRDC0); v != 2 {
		t.Errorf("QPRDC(0) = %d, want 2", v)
	}
	if v := bar.Read32(tQPRC0); v != 5 {
		t.Errorf("QPRC(0) = %d, want 5", v)
	}
}

func TestRxPacketBufferOverflow(t *testing.T) {
	p, bar := rxSetup(t, func(o *Options) { o.RxFIFOFrames = 4 })
	setupRx(t, p, bar, 0, 8, 2, 0)
	bar.Write32(tEIMS, 1<<17)
	for i := 0; i < 6; i++ {
		p.Deliver(udpFrame(testMAC, 10))
	}
	if v := bar.Read32(tMPC0); v != 2 {
		t.Errorf("MPC(0) = %d, want 2", v)
	}
	if bar.Read32(tEICR)&(1<<17) == 0 {
		t.Error("EICR.RX_MISS not raised")
	}
}

// TestRxPacketBufferHoldsHalfAMegabyteOfSmallFrames: with the default
// options, the receive packet buffer of a port whose queue has no
// descriptors takes 512 KB (RXPBSIZE(0) in non-DCB mode) of minimum-size
// frames before it misses one, as the 82599's does: its byte size, not a
// frame count of the model's, sets how long a burst it rides out.
func TestRxPacketBufferHoldsHalfAMegabyteOfSmallFrames(t *testing.T) {
	p, bar := rxSetup(t, nil)
	setupRx(t, p, bar, 0, 8, 2, 0)
	f := udpFrame(testMAC, 18) // 60 bytes: the minimum without the FCS
	fit := 512 << 10 / 64      // what 512 KB holds of 64-byte frames on the wire
	for range fit {
		p.Deliver(f)
	}
	if v := bar.Read32(tMPC0); v != 0 {
		t.Fatalf("MPC(0) = %d after %d frames of %d bytes: the buffer held fewer than 512 KB of them", v, fit, len(f))
	}
	p.Deliver(f)
	if v := p.Counters().RxFIFOFull; v != 1 {
		t.Fatalf("the model counted %d frames missed after %d, want the next one missed", v, fit+1)
	}
}

func TestRxIOMMUFault(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	binary.LittleEndian.PutUint64(r.desc(0), 0xdead0000) // unmapped buffer
	r.give(7)
	p.Deliver(udpFrame(testMAC, 10))
	p.Step()
	if n, last := p.IOMMU().Faults(); n != 1 || last != 0xdead0000 {
		t.Errorf("faults %d at %#x, want 1 at 0xdead0000", n, last)
	}
	if r.wb(0).status&1 != 0 {
		t.Error("descriptor written back after a faulting DMA")
	}
	// Unmap the buffers: the next frame faults too, and memory is untouched.
	r.post(0)
	if err := p.DMA().UnmapDMA(rxBufIOVA, uint64(len(r.bufs))); err != nil {
		t.Fatal(err)
	}
	p.Deliver(udpFrame(testMAC, 10))
	p.Step()
	if n, _ := p.IOMMU().Faults(); n != 2 {
		t.Errorf("faults %d after unmap, want 2", n)
	}
	if r.bufs[0] != 0 || r.wb(0).status != 0 {
		t.Error("DMA reached unmapped memory")
	}
	if c := p.Counters().RxDMAFault; c != 2 {
		t.Errorf("RxDMAFault = %d", c)
	}
}

func TestRxNeedsBusMaster(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	r.give(7)
	_ = p.Config().Write16(vfio.PCICommand, vfio.PCICommandMemory)
	p.Deliver(udpFrame(testMAC, 10))
	if n := p.Step(); n != 0 || r.wb(0).status != 0 {
		t.Fatal("DMA happened with bus mastering off")
	}
	if p.Counters().DMANoBusMaster == 0 {
		t.Error("blocked DMA not counted")
	}
	_ = vfio.EnableBusMaster(p.Config())
	if n := p.Step(); n != 1 {
		t.Error("frame lost while bus mastering was off")
	}
}

// TestRxLengthAndFilterCounters: runts and oversize frames count in RUC and
// ROC, and both in RLEC, only when they pass address filtering, as the
// datasheet says; the
// model's counters see every dropped frame exactly once; the registers
// clear on read.
func TestRxLengthAndFilterCounters(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 64, 2, 0)
	r.give(63)
	other := [6]byte{0x02, 0x99, 0x99, 0x99, 0x99, 0x99}
	runt := func(dst [6]byte) []byte { f := udpFrame(dst, 10); return f[:42] }
	big := func(dst [6]byte) []byte { return udpFrame(dst, 1600) }
	p.Deliver(runt(testMAC))
	p.Deliver(runt(other))
	p.Deliver(big(testMAC))
	p.Deliver(big(other))
	p.Deliver(udpFrame(other, 10))
	p.Deliver(udpFrame(testMAC, 10))
	p.Deliver([]byte{1, 2, 3}) // not even a destination address
	if n := p.Step(); n != 1 {
		t.Errorf("%d frames received, want 1", n)
	}
	const rlec, ruc, roc, tpr = 0x04040, 0x040A4, 0x040AC, 0x040D0
	for _, c := range []struct {
		name      string
		reg, want uint32
	}{{"RUC", ruc, 1}, {"ROC", roc, 1}, {"RLEC", rlec, 2}, {"TPR", tpr, 3}} {
		if got := bar.Read32(c.reg); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
		if got := bar.Read32(c.reg); got != 0 {
			t.Errorf("%s = %d on the second read: not cleared on read", c.name, got)
		}
	}
	if c := p.Counters(); c.RxRunt != 3 || c.RxOversize != 2 || c.RxFiltered != 1 {
		t.Errorf("model counters runt %d oversize %d filtered %d, want 3, 2, 1", c.RxRunt, c.RxOversize, c.RxFiltered)
	}
}
