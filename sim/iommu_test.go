package sim

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// orphanedMem returns size bytes of a memfd mapped shared, as a vhost-user
// front end hands over guest memory, and a function that truncates the
// memfd to nothing: after it, touching the memory raises SIGBUS.
func orphanedMem(t testing.TB, size int) (mem []byte, truncate func()) {
	t.Helper()
	fd, err := unix.MemfdCreate("sim-orphan", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatalf("size the memfd: %v", err)
	}
	mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap the memfd: %v", err)
	}
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	return mem, func() {
		t.Helper()
		if err := unix.Ftruncate(fd, 0); err != nil {
			t.Fatalf("truncate the memfd: %v", err)
		}
	}
}

// remap replaces the mapping at iova (size bytes) with mem, as a test
// swapping a ring's buffers for memory it is about to pull away.
func remap(t testing.TB, p *PF, iova uint64, size int, mem []byte) {
	t.Helper()
	if err := p.DMA().UnmapDMA(iova, uint64(size)); err != nil {
		t.Fatal(err)
	}
	if err := p.DMA().MapDMA(iova, mem); err != nil {
		t.Fatal(err)
	}
}

// TestIOMMUOrphanedMemory: memory whose file was truncated after it was
// mapped behaves as the pinned pages VFIO would have kept: writes are
// lost, reads return zeros, the process lives, and each access is counted
// as orphaned, not as an IOMMU fault. Pages still there next to it take
// their part of a spanning write.
func TestIOMMUOrphanedMemory(t *testing.T) {
	p := NewPF(DefaultOptions())
	mem, truncate := orphanedMem(t, 4*4096)
	next := dmaMem(t, 4096)
	d := p.DMA()
	if err := d.MapDMA(0x40000, mem); err != nil {
		t.Fatal(err)
	}
	if err := d.MapDMA(0x44000, next); err != nil {
		t.Fatal(err)
	}
	truncate()

	u := p.IOMMU()
	u.mu.RLock()
	if !u.dmaWrite(0x40010, bytes.Repeat([]byte{0x5A}, 64)) {
		t.Error("write into orphaned memory reported a fault")
	}
	got := bytes.Repeat([]byte{0xAA}, 64)
	if !u.dmaRead(0x40010, got) {
		t.Error("read from orphaned memory reported a fault")
	}
	if !bytes.Equal(got, make([]byte, 64)) {
		t.Errorf("read from orphaned memory gave % x, want zeros", got[:8])
	}
	if !u.dmaWrite(0x43FFC, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Error("write spanning orphaned and live memory reported a fault")
	}
	span := bytes.Repeat([]byte{0xAA}, 8)
	if !u.dmaRead(0x43FFC, span) {
		t.Error("read spanning orphaned and live memory reported a fault")
	}
	u.mu.RUnlock()

	if want := []byte{0, 0, 0, 0, 5, 6, 7, 8}; !bytes.Equal(span, want) {
		t.Errorf("spanning read gave % x, want % x (zeros from the orphaned part)", span, want)
	}
	if !bytes.Equal(next[:4], []byte{5, 6, 7, 8}) {
		t.Errorf("live page after the orphaned mapping holds % x, want 05 06 07 08", next[:4])
	}
	if n, last := u.OrphanAccesses(); n != 4 || last != 0x43FFC {
		t.Errorf("%d orphaned accesses, last at %#x; want 4, last at 0x43ffc", n, last)
	}
	if n, _ := u.Faults(); n != 0 {
		t.Errorf("%d IOMMU faults, want 0: the memory was mapped", n)
	}
}

// TestEnginesSurviveOrphanedBuffers: a frame received into, and a packet
// sent from, buffers whose memfd was truncated go through the engines as
// on silicon with pinned pages: descriptors complete, the received data is
// lost, the sent frame carries zeros, and no fault or drop is counted.
func TestEnginesSurviveOrphanedBuffers(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r := setupRx(t, p, bar, 0, 8, 2, 0)
	rxBufs, truncate := orphanedMem(t, len(r.bufs))
	remap(t, p, r.bufIOVA(0), len(r.bufs), rxBufs)
	truncate()
	r.give(7)
	f := udpFrame(testMAC, 100)
	p.Deliver(f)
	if n := p.Step(); n != 1 {
		t.Fatalf("Step moved %d frames, want 1", n)
	}
	st := binary.LittleEndian.Uint64(r.desc(0)[8:])
	if st&3 != 3 || int(st>>32&0xFFFF) != len(f) {
		t.Errorf("write-back status %#x: want DD, EOP and length %d", st, len(f))
	}

	tp, _, tr, c := txSetup(t)
	g := udpFrame(peerMAC, 100)
	tr.data(g, 512, 0, 0, len(g)) // copies g into the live buffers first
	txBufs, truncateTx := orphanedMem(t, len(tr.bufs))
	remap(t, tp, txBufIOVA, len(tr.bufs), txBufs)
	truncateTx()
	tr.kick()
	if n := tp.Step(); n != 1 {
		t.Fatalf("TX Step sent %d frames, want 1", n)
	}
	if len(c.frames) != 1 || !bytes.Equal(c.frames[0], make([]byte, len(g))) {
		t.Errorf("wire got %d frames; want one of %d zero bytes", len(c.frames), len(g))
	}
	if !tr.dd(0) {
		t.Error("TX descriptor not completed")
	}

	for name, pf := range map[string]*PF{"RX": p, "TX": tp} {
		cs := pf.Counters()
		if cs.OrphanAccesses != 1 || cs.IOMMUFaults != 0 || cs.RxDMAFault != 0 || cs.TxDMAFault != 0 {
			t.Errorf("%s: %d orphaned accesses, %d IOMMU faults, %d/%d RX/TX DMA drops; want 1, 0, 0, 0",
				name, cs.OrphanAccesses, cs.IOMMUFaults, cs.RxDMAFault, cs.TxDMAFault)
		}
	}
}
