package sim

import (
	"testing"
)

// The simulator's own cost per 64-byte frame (60 bytes without FCS), so
// that driver benchmarks run against the model can subtract it.

// rxOneFrame delivers one frame, runs the RX engine and hands the
// descriptor back, as a driver would.
func rxOneFrame(p *PF, r *rxRing, f []byte, i int) {
	p.Deliver(f)
	p.stepRX()
	slot := i % r.n
	r.post(slot)
	r.give(slot)
}

func BenchmarkSimRX(b *testing.B) {
	p, bar := rxSetup(b, nil)
	r := setupRx(b, p, bar, 0, 512, 2, 0)
	r.give(511)
	f := udpFrame(testMAC, 18) // 60 bytes
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rxOneFrame(p, r, f, i)
	}
	b.StopTimer()
	if got := p.Counters().RxDMAFault + p.Counters().RxFIFOFull; got != 0 {
		b.Fatalf("%d frames lost", got)
	}
}

// txOneFrame posts one descriptor (written once, reused) and runs the TX
// engine over it.
func BenchmarkSimTX(b *testing.B) {
	p, bar, r, _ := txSetup(b)
	p.Attach(discard{})
	f := udpFrame(peerMAC, 18)
	for i := 0; i < r.n; i++ {
		r.data(f, 512, 0, 0, len(f))
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bar.Write32(tTxq(3, 0x18), uint32((i+1)%r.n))
		p.stepTX()
	}
	b.StopTimer()
	if v := p.Counters().TxDMAFault; v != 0 {
		b.Fatalf("%d TX faults", v)
	}
}

type discard struct{}

func (discard) Deliver([]byte) {}

// The engines' per-frame paths must not allocate: they run for every frame
// of every later test and benchmark.
func TestEnginesDoNotAllocate(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 512, 2, 0)
	r.give(511)
	f := udpFrame(testMAC, 18)
	i := 0
	if n := testing.AllocsPerRun(1000, func() { rxOneFrame(p, r, f, i); i++ }); n != 0 {
		t.Errorf("RX path: %v allocations per frame", n)
	}
	tp, tbar, tr, _ := txSetup(t)
	tp.Attach(discard{})
	g := udpFrame(peerMAC, 18)
	for k := 0; k < tr.n; k++ {
		tr.data(g, 512, 0, 0, len(g))
	}
	k := 0
	if n := testing.AllocsPerRun(1000, func() {
		k++
		tbar.Write32(tTxq(3, 0x18), uint32(k%tr.n))
		tp.stepTX()
	}); n != 0 {
		t.Errorf("TX path: %v allocations per frame", n)
	}
}

// BenchmarkDMAWrite is the IOMMU's cost for the data of one 64-byte frame:
// translation, and the copy guarded against host memory that went away.
func BenchmarkDMAWrite(b *testing.B) {
	p := NewPF(DefaultOptions())
	if err := p.DMA().MapDMA(0x10000, dmaMem(b, 4096)); err != nil {
		b.Fatal(err)
	}
	u := p.IOMMU()
	src := udpFrame(testMAC, 18)
	b.SetBytes(int64(len(src)))
	u.mu.RLock()
	defer u.mu.RUnlock()
	for b.Loop() {
		if !u.dmaWrite(0x10100, src) {
			b.Fatal("fault")
		}
	}
}
