package engine

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// FuzzEngineChains plays a hostile front end against the whole data path:
// a vhost Device served on a unix socket, a Channel, and an 82599 on the
// simulator, all stepped on the test goroutine. Each input connects a new
// guest (memfd memory, split or packed rings) that writes whatever
// descriptors the input says straight into its rings: addresses around
// every edge of its memory and beyond, any lengths, flags and next links,
// indirect tables of its own making, avail indexes that jump, rings
// stopped, reset and re-addressed by a new memory table. Frames arrive
// from the wire meanwhile, and the guest transmits. Then it hangs up.
//
// Whatever the guest wrote, the chains that become NIC descriptors may
// only name that guest's memory. The test checks that three ways:
//   - every buffer the channel posts and every segment it submits lies inside
//     one of the guest's DMA-mapped regions (or, for host buffers, inside
//     the channel's copy pool), checked as the channel hands them to the NIC
//     (dmaAudit);
//   - the simulated IOMMU counted no fault;
//   - two canary regions, DMA-mapped in the same IOMMU domain right below
//     and right above the guest's IOVA range (where a length or offset
//     check off by a little would land the NIC), are intact byte for byte.
//
// And nothing panics, the channel keeps working, and once the guest is gone
// the channel holds none of its buffers and every copy buffer is home.
//
// Input format (decodeEngineOps): one configuration byte (engineCfg*
// bits), then operations, each an op byte followed by its arguments (zeros
// once the input runs out):
//
//	rxChain, txChain  n-1 (2 bits), then n descriptors of 8 bytes:
//	                  index/id, flags (descFlag*), anchor (low 4 bits:
//	                  chainAnchors; bits 4-5: offset scale 1, 8, 64, 4096),
//	                  offset (int16), length (u16; top bit: specialLens), next.
//	                  txChain then has 12 bytes of virtio-net header, written
//	                  with a TCP/IPv4 frame at the first descriptor's address.
//	frames            count-1 (3 bits) and a size (frameSizes) of frames
//	                  arriving from the wire
//	poll              rounds-1 (3 bits) of simulator step + channel poll
//	scratch           offset (u16), n, n bytes written into the guest's
//	                  scratch memory
//	indirect          n-1 (2 bits), scratch offset (u16), then n descriptors
//	                  as for a chain, written as an indirect table there
//	rawAvail          vring (bit 0); split: bit 1 set stores the next byte
//	                  pair as avail->idx, else publishes the u16 as a head;
//	                  packed: 16 raw bytes into slot (next byte)
//	stopResume        vring (bit 0): GET_VRING_BASE, then set it up again
//	memTable          SET_MEM_TABLE with the same regions while running
//	resetQueue        vring (bit 0): stop, clear and set up from index 0
const engineFuzzName = "FuzzEngineChains"

// Configuration byte bits.
const (
	engineCfgPacked     = 1 << 0
	engineCfgNoMrg      = 1 << 1
	engineCfgSplitMem   = 1 << 2
	engineCfgNoIndirect = 1 << 3
	engineCfgNoEventIdx = 1 << 4
	engineCfgNoCsum     = 1 << 5
	engineCfgQueueSize  = 3 << 6 // engineQueueSizes
)

var engineQueueSizes = [4]uint16{16, 8, 64, 32}

// Operations.
const (
	opRxChain = iota
	opTxChain
	opFrames
	opPoll
	opScratch
	opIndirect
	opRawAvail
	opStopResume
	opMemTable
	opResetQueue
	numEngineOps
)

// Descriptor flag byte of a chain operation.
const (
	descFlagNext     = guest.DescNext // raw mode only: auto mode links the chain itself
	descFlagWrite    = guest.DescWrite
	descFlagIndirect = guest.DescIndirect
	// descFlagRaw takes the flags (and, on a split ring, next) as given,
	// with bits 4-7 as unknown high flag bits; otherwise the descriptors
	// of the operation are linked in order, the last without NEXT.
	descFlagRaw = 1 << 3
	// descFlagWrongWrap (packed) marks the descriptor available for the
	// other lap of the ring.
	descFlagWrongWrap = 1 << 6
)

// specialLens are lengths around the boundaries the engine cares about:
// the virtio-net header, the NIC's 1 KiB buffer granularity, the longest
// frame, the guest's 4 KiB pages and 32-bit overflow.
var specialLens = []uint32{0, 1, 10, 12, 13, 1023, 1024, 1025, 1036, 1518, 1530, 2047, 2048, 2060, 4096, 4108, 65535, 1 << 20, 1 << 31, 1<<32 - 1}

// frameSizes of frames arriving from the wire (without FCS): minimal,
// around the 1 KiB buffer size, full size, and longer than the NIC takes.
var frameSizes = []int{60, 64, 200, 1000, 1010, 1024, 1500, 1514, 2000, 9000}

// offsetShifts scale a chain descriptor's offset from its anchor.
var offsetShifts = [4]uint{0, 3, 6, 12}

// Geometry of every fuzzed guest: memory of the same size each time, so
// that its regions land at the same IOVAs, between the canaries.
const (
	engineGuestMem  = 2 << 20
	engineScratch   = 64 << 10
	engineCanary    = 64 << 10
	engineMaxOps    = 96
	engineHeaderLen = 12
)

// engineFuzz is the data path under test, one per fuzz worker process.
type engineFuzz struct {
	r      *rig
	audit  *dmaAudit
	canary [2]*canary // below and above the guest's IOVA range
	// What the last input found, which the next starts from (see fresh).
	faults0  uint64
	poolHome int
	// broke: the last input's guest broke a virtqueue (NEEDS_RESET).
	broke bool
}

func FuzzEngineChains(f *testing.F) {
	// The seeds are in testdata (engineSeeds, TestEngineChainsCorpus).
	e := newEngineFuzz(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		e.run(t, data)
	})
}

func newEngineFuzz(f testing.TB) *engineFuzz {
	e := &engineFuzz{audit: &dmaAudit{}}
	e.r = newRig(f, rigOptions{
		features: vhost.DefaultFeatures | vhost.FRingPacked,
		guest:    engineGuestOptions(0),
		nic:      func(n ring.QueuePair) ring.QueuePair { e.audit.QueuePair = n; return e.audit },
	})
	r := e.r
	e.audit.dma, e.audit.pool = r.dma, r.channel.pool
	r.pf.Attach(nil) // transmitted frames are counted by the NIC model only
	// The rig's guest goes, taking its IOVA range with it: the low canary
	// takes the lowest free IOVAs, and every guest after it maps its
	// memory right above (the allocator takes the lowest range that fits).
	r.g.Close()
	r.g = nil
	if err := waitSessionOver(r); err != nil {
		f.Fatal(err)
	}
	alloc := r.dma.iova
	lowIOVA, err := alloc.Alloc(engineCanary, hugepage.IOMMUPage)
	if err != nil {
		f.Fatal(err)
	}
	e.canary[0] = newCanary(f, r.pf, lowIOVA, 0x5a)
	g, err := guest.Dial(r.path, engineGuestOptions(0))
	if err != nil {
		f.Fatal(err)
	}
	lo, hi := uint64(1<<64-1), uint64(0)
	for _, m := range *r.dma.regions.Load() {
		lo, hi = min(lo, m.iova), max(hi, m.iova+m.size)
	}
	if lo != lowIOVA+engineCanary || hi-lo != engineGuestMem {
		f.Fatalf("guest memory DMA-mapped at [%#x, %#x), want %d bytes right above the canary at %#x", lo, hi, engineGuestMem, lowIOVA)
	}
	if err := alloc.Reserve(hi, engineCanary); err != nil {
		f.Fatal(err)
	}
	e.canary[1] = newCanary(f, r.pf, hi, 0xa5)
	g.Close()
	if err := waitSessionOver(r); err != nil {
		f.Fatal(err)
	}
	e.faults0, e.poolHome = r.pf.Counters().IOMMUFaults, r.channel.pool.Cap()
	return e
}

// engineGuestOptions shapes a fuzzed guest from the configuration byte.
func engineGuestOptions(cfg byte) guest.Options {
	features := uint64(guest.DefaultWanted)
	for _, c := range []struct {
		bit  byte
		what uint64
	}{
		{engineCfgNoMrg, vhost.NetFMrgRxbuf},
		{engineCfgNoIndirect, vhost.FIndirectDesc},
		{engineCfgNoEventIdx, vhost.FEventIdx},
		{engineCfgNoCsum, vhost.NetFCsum | vhost.NetFHostTSO4 | vhost.NetFHostTSO6 | vhost.NetFGuestCsum},
	} {
		if cfg&c.bit != 0 {
			features &^= c.what
		}
	}
	if cfg&engineCfgPacked != 0 {
		features |= vhost.FRingPacked
	}
	return guest.Options{
		Features:  features,
		QueueSize: engineQueueSizes[cfg>>6],
		RxBufSize: 2048, TxBufSize: 2048,
		Memory: guest.MemoryOptions{Size: engineGuestMem, Split: cfg&engineCfgSplitMem != 0},
	}
}

// waitSessionOver waits until the device has let its front end go and
// the guest's memory is unmapped from the NIC's IOMMU domain.
func waitSessionOver(r *rig) error {
	for deadline := time.Now().Add(10 * time.Second); r.dev.Connected() || r.dma.Mapped() != 0; time.Sleep(50 * time.Microsecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("10 s after the guest hung up: device connected %v, %d guest regions still DMA-mapped", r.dev.Connected(), r.dma.Mapped())
		}
	}
	return nil
}

// run plays one input.
func (e *engineFuzz) run(t *testing.T, data []byte) {
	r := e.r
	if len(data) == 0 {
		return
	}
	e.fresh(t)
	opts := engineGuestOptions(data[0])
	g, err := guest.Dial(r.path, opts)
	if err != nil {
		t.Fatalf("a guest could not connect (after the previous input's guest, or set up %+v): %v", opts, err)
	}
	h, err := newHostileGuest(g, r)
	if err != nil {
		g.Close()
		t.Fatal(err)
	}
	func() {
		defer g.Close()
		in := &fuzzBytes{b: data[1:]}
		for n := 0; n < engineMaxOps && len(in.b) > 0; n++ {
			h.do(in)
		}
		e.broke = r.dev.Status()&vhost.StatusNeedsReset != 0
	}()
	if err := waitSessionOver(r); err != nil {
		t.Fatal(err)
	}
	e.check(t)
}

// fresh undoes what a failed input left behind, so that the next input is
// judged on its own: the fuzzer minimizes a failing input by running
// smaller ones in the same process, and those must not fail merely
// because the channel was already stopped, a canary already overwritten or a
// fault already counted. (After a passing input there is nothing to undo.)
func (e *engineFuzz) fresh(t *testing.T) {
	r := e.r
	if err := waitSessionOver(r); err != nil {
		t.Fatal(err)
	}
	e.audit.take()
	for _, c := range e.canary {
		c.fill()
	}
	e.faults0 = r.pf.Counters().IOMMUFaults
	if r.channel.Err() == nil {
		return
	}
	// A channel that failed (a poll round panicked) is replaced by a new
	// one on the same NIC queues, device and copy pool; host buffers the
	// panic lost stay lost.
	cfg := r.channel.cfg
	_ = r.channel.Close()
	p, err := NewChannel(cfg)
	if err != nil {
		t.Fatalf("replacing the channel that failed in an earlier input: %v", err)
	}
	r.channel = p
	e.poolHome = p.pool.Available()
}

// check asserts what must hold after every guest, whatever it did.
func (e *engineFuzz) check(t *testing.T) {
	t.Helper()
	r := e.r
	if v := e.audit.take(); len(v) > 0 {
		t.Fatalf("the channel handed the NIC memory outside the guest's mapped regions and its copy pool:\n%s", errors.Join(v...))
	}
	if c := r.pf.Counters(); c.IOMMUFaults != e.faults0 {
		t.Fatalf("the simulated IOMMU counted %d faults (last at IOVA %#x)", c.IOMMUFaults-e.faults0, c.LastFaultIOVA)
	}
	for _, c := range e.canary {
		c.check(t)
	}
	if err := r.channel.Err(); err != nil {
		t.Fatalf("the channel stopped working: %v", err)
	}
	r.dev.LockDataPath()
	rxPosted, txOnNIC, hostOut := r.channel.rx.posted, r.channel.tx.zcHeads, r.channel.rx.hostOut
	r.dev.UnlockDataPath()
	if rxPosted != 0 || txOnNIC != 0 || hostOut != 0 {
		t.Fatalf("after the guest left the channel still has %d RX buffers on the NIC, %d guest packets in the TX ring, %d host buffers out", rxPosted, txOnNIC, hostOut)
	}
	if got, want := r.channel.pool.Available(), e.poolHome; got != want {
		t.Fatalf("copy pool has %d of its %d buffers after the guest left", got, want)
	}
}

// fuzzBytes hands out input bytes, zeros once they run out.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) u8() byte {
	if len(f.b) == 0 {
		return 0
	}
	v := f.b[0]
	f.b = f.b[1:]
	return v
}

func (f *fuzzBytes) u16() uint16 { return uint16(f.u8()) | uint16(f.u8())<<8 }

func (f *fuzzBytes) bytes(n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = f.u8()
	}
	return out
}

// hostileGuest writes raw descriptors into a connected guest's rings.
type hostileGuest struct {
	g       *guest.Guest
	r       *rig
	packed  bool
	anchors []uint64
	scratch uint64
	// Packed rings: the slot the driver writes next and its wrap counter.
	pos  [2]uint16
	wrap [2]bool
}

func newHostileGuest(g *guest.Guest, r *rig) (*hostileGuest, error) {
	scratch, err := g.Mem.Alloc(engineScratch, 4096)
	if err != nil {
		return nil, fmt.Errorf("scratch memory in the guest: %w", err)
	}
	regs := g.Mem.Regions()
	first, last := regs[0], regs[len(regs)-1]
	h := &hostileGuest{g: g, r: r, packed: g.Features&vhost.FRingPacked != 0, scratch: scratch,
		wrap: [2]bool{true, true}}
	// chainAnchors: what a descriptor's address is relative to.
	h.anchors = []uint64{
		scratch, scratch + engineScratch/2,
		first.GuestPhysAddr, first.GuestPhysAddr + first.Size,
		last.GuestPhysAddr, g.Mem.End(),
		g.Ring(0).DescGPA, g.Ring(0).UsedGPA, g.Ring(1).DescGPA,
		0, 1 << 32, 1<<64 - 4096,
	}
	return h, nil
}

func (h *hostileGuest) do(in *fuzzBytes) {
	op := in.u8()
	switch (op & 15) % numEngineOps {
	case opRxChain:
		h.chain(in, 0, op)
	case opTxChain:
		h.chain(in, 1, op)
	case opFrames:
		b := in.u8()
		h.frames(int(b&7)+1, frameSizes[int(in.u8())%len(frameSizes)])
	case opPoll:
		for range int(op>>4&7) + 1 {
			h.r.step()
		}
	case opScratch:
		off := uint64(in.u16()) % engineScratch
		b := in.bytes(int(in.u8()) % 64)
		h.write(h.scratch+off, b)
	case opIndirect:
		h.indirect(in, op)
	case opRawAvail:
		h.rawAvail(in, int(op>>4&1))
	case opStopResume:
		i := int(op >> 4 & 1)
		// Refusals are fine (the ring may be broken or half set up); the
		// channel must cope with either outcome.
		if _, err := h.g.StopRing(i); err == nil {
			_ = h.g.ResumeRing(i)
		}
	case opMemTable:
		regions := h.g.Mem.Regions()
		fds := make([]int, len(regions))
		for i := range fds {
			fds[i] = h.g.Mem.FD()
		}
		_, _ = h.g.FE.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(regions), fds...)
	case opResetQueue:
		i := int(op >> 4 & 1)
		_ = h.g.ResetQueue(i)
		h.pos[i], h.wrap[i] = 0, true
	}
}

// desc is one decoded chain descriptor.
type desc struct {
	addr        uint64
	length      uint32
	idx, next   uint16
	flags       uint16
	wrongWrap   bool
	explicitRaw bool
}

func (h *hostileGuest) readDesc(in *fuzzBytes) desc {
	idx, fl, anchor := in.u8(), in.u8(), in.u8()
	off := int64(int16(in.u16())) << offsetShifts[anchor>>4&3]
	l := in.u16()
	next := in.u8()
	d := desc{addr: h.anchors[int(anchor&15)%len(h.anchors)] + uint64(off), idx: uint16(idx), next: uint16(next),
		flags: uint16(fl & (descFlagWrite | descFlagIndirect)), wrongWrap: fl&descFlagWrongWrap != 0, explicitRaw: fl&descFlagRaw != 0}
	if l&0x8000 != 0 {
		d.length = specialLens[int(l&0x7fff)%len(specialLens)]
	} else {
		d.length = uint32(l)
	}
	if d.explicitRaw {
		d.flags = uint16(fl&7) | uint16(fl&0xf0)<<8
	}
	return d
}

// chain writes one chain of the operation's descriptors into vring i and
// makes it available.
func (h *hostileGuest) chain(in *fuzzBytes, i int, op byte) {
	ds := h.readDescs(in, op)
	if i == 1 {
		h.txFrame(ds[0], in.bytes(engineHeaderLen))
	}
	if h.packed {
		h.packedChain(i, ds)
		return
	}
	ring := h.g.Ring(i)
	size := ring.Size()
	for k := range ds {
		d := &ds[k]
		d.idx %= size
		if !d.explicitRaw && k < len(ds)-1 {
			d.flags |= guest.DescNext
			d.next = ds[k+1].idx % size
		}
	}
	for _, d := range ds {
		putSplitDesc(ring.Desc(d.idx), d)
	}
	ring.Repost(ds[0].idx)
	ring.Publish()
}

// readDescs reads the descriptors of a chain or indirect-table operation
// (their count is in bits 4-5 of the op byte).
func (h *hostileGuest) readDescs(in *fuzzBytes, op byte) []desc {
	ds := make([]desc, int(op>>4&3)+1)
	for k := range ds {
		ds[k] = h.readDesc(in)
	}
	return ds
}

// packedChain writes ds into the next slots of packed vring i, the
// first descriptor's flags last, as a driver publishes a chain.
func (h *hostileGuest) packedChain(i int, ds []desc) {
	ring := h.g.Ring(i)
	size := ring.Size()
	slots := make([]uint16, len(ds))
	for k := range ds {
		d := &ds[k]
		slots[k] = h.pos[i]
		if !d.explicitRaw && k < len(ds)-1 {
			d.flags |= guest.DescNext
		}
		if h.wrap[i] != d.wrongWrap {
			d.flags |= packedDescAvail
		} else {
			d.flags |= packedDescUsed
		}
		if h.pos[i]++; h.pos[i] == size {
			h.pos[i], h.wrap[i] = 0, !h.wrap[i]
		}
	}
	for k := len(ds) - 1; k >= 0; k-- {
		putPackedDesc(ring.Desc(slots[k]), ds[k])
	}
}

// Packed descriptor flags: available and used for the driver's lap.
const (
	packedDescAvail = 1 << 7
	packedDescUsed  = 1 << 15
)

func putSplitDesc(b []byte, d desc) {
	binary.LittleEndian.PutUint64(b, d.addr)
	binary.LittleEndian.PutUint32(b[8:], d.length)
	binary.LittleEndian.PutUint16(b[12:], d.flags)
	binary.LittleEndian.PutUint16(b[14:], d.next)
}

func putPackedDesc(b []byte, d desc) {
	binary.LittleEndian.PutUint64(b, d.addr)
	binary.LittleEndian.PutUint32(b[8:], d.length)
	binary.LittleEndian.PutUint16(b[12:], d.idx) // buffer id
	binary.LittleEndian.PutUint16(b[14:], d.flags)
}

// indirect writes an indirect table into scratch memory, in the ring
// layout's descriptor format: linked in order on a split ring,
// consecutive on a packed one.
func (h *hostileGuest) indirect(in *fuzzBytes, op byte) {
	off := uint64(in.u16()) % engineScratch &^ 15
	ds := h.readDescs(in, op)
	table := make([]byte, 16*len(ds))
	for k, d := range ds {
		if h.packed {
			putPackedDesc(table[16*k:], d)
			continue
		}
		if !d.explicitRaw {
			d.next = uint16(k + 1)
			if k < len(ds)-1 {
				d.flags |= guest.DescNext
			}
		}
		putSplitDesc(table[16*k:], d)
	}
	h.write(h.scratch+off, table)
}

// rawAvail misbehaves with the avail side of vring i.
func (h *hostileGuest) rawAvail(in *fuzzBytes, i int) {
	ring := h.g.Ring(i)
	b := in.u8()
	if h.packed {
		slot := uint16(in.u8()) % ring.Size()
		copy(ring.Desc(slot), in.bytes(16))
		return
	}
	v := in.u16()
	if b&2 != 0 {
		ring.PublishRaw(v)
		return
	}
	ring.Repost(v)
	ring.Publish()
}

// txFrame writes a virtio-net header and a TCP/IPv4 frame where a TX
// chain's first buffer is (for an indirect chain: the first entry of its
// table), if that is guest memory, so that the engine reads headers the
// fuzzer controls (offload requests included).
func (h *hostileGuest) txFrame(d desc, hdr []byte) {
	addr, length := d.addr, uint64(d.length)
	if d.flags&guest.DescIndirect != 0 {
		entry, ok := h.read(d.addr, 16)
		if !ok {
			return
		}
		addr, length = binary.LittleEndian.Uint64(entry), uint64(binary.LittleEndian.Uint32(entry[8:]))
	}
	n := min(length, 128)
	if n == 0 {
		return
	}
	b := make([]byte, n)
	copy(b, hdr)
	frame := []byte{
		0x02, 0, 0, 0, 0, 0x09, 0x02, 0, 0, 0, 0, 0x08, 0x08, 0x00, // Ethernet, IPv4
		0x45, 0, 0, 100, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
		0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0, // TCP
	}
	if uint64(len(hdr)) < n {
		copy(b[len(hdr):], frame)
	}
	h.write(addr, b)
}

// guestBytes returns guest memory [gpa, gpa+n) if all of it is guest
// memory.
func (h *hostileGuest) guestBytes(gpa, n uint64) ([]byte, bool) {
	for _, r := range h.g.Mem.Regions() {
		if gpa >= r.GuestPhysAddr && gpa-r.GuestPhysAddr <= r.Size && n <= r.Size-(gpa-r.GuestPhysAddr) {
			return h.g.Mem.Bytes(gpa, n), true
		}
	}
	return nil, false
}

func (h *hostileGuest) read(gpa, n uint64) ([]byte, bool) { return h.guestBytes(gpa, n) }

// write stores b at guest address gpa if all of it is guest memory.
func (h *hostileGuest) write(gpa uint64, b []byte) {
	if m, ok := h.guestBytes(gpa, uint64(len(b))); ok {
		copy(m, b)
	}
}

// frames delivers n frames of size bytes (FCS not included) from the wire
// to the NIC, addressed to it.
func (h *hostileGuest) frames(n, size int) {
	mac := sim.DefaultOptions().MAC
	for k := range n {
		f := make([]byte, size)
		copy(f, mac[:])
		copy(f[6:], []byte{0x02, 0, 0, 0, 0, 0x07, 0x88, 0xb5})
		for j := 14; j < size; j++ {
			f[j] = byte(j + k)
		}
		h.r.pf.Deliver(f)
	}
}

// dmaAudit stands between a channel and its NIC queue pair and checks each
// buffer the channel posts and each segment it submits as it goes by: a
// guest buffer (its cookie a chain head) must lie inside one region the
// guest's GuestDMA has DMA-mapped at that moment, a host buffer inside one
// buffer of the channel's copy pool. What a NIC descriptor names is what the
// device will DMA to or from, so this is the engine's isolation promise
// at the point it is made, before the simulator or a canary could tell.
type dmaAudit struct {
	ring.QueuePair
	dma  *GuestDMA
	pool *hugepage.Pool

	mu         sync.Mutex
	violations []error
}

func (a *dmaAudit) Rx() ring.RxQueue { return auditRx{a.QueuePair.Rx(), a} }
func (a *dmaAudit) Tx() ring.TxQueue { return auditTx{a.QueuePair.Tx(), a} }

type auditRx struct {
	ring.RxQueue
	a *dmaAudit
}

func (q auditRx) Post(bufs []ring.Buf) int {
	for _, b := range bufs {
		q.a.check("RX buffer", b.Cookie, b.IOVA, b.Len)
		if b.Cookie&copyCookie != 0 && b.IOVA != q.a.pool.IOVA(uint32(b.Cookie)) {
			q.a.fail(fmt.Errorf("RX host buffer %d posted at IOVA %#x, not its own %#x", uint32(b.Cookie), b.IOVA, q.a.pool.IOVA(uint32(b.Cookie))))
		}
	}
	return q.RxQueue.Post(bufs)
}

type auditTx struct {
	ring.TxQueue
	a *dmaAudit
}

func (q auditTx) Submit(pkts []ring.TxPkt) int {
	for _, p := range pkts {
		if len(p.Segs) == 0 {
			q.a.fail(fmt.Errorf("TX packet %#x without segments", p.Cookie))
		}
		for _, s := range p.Segs {
			q.a.check("TX segment", p.Cookie, s.IOVA, s.Len)
		}
	}
	return q.TxQueue.Submit(pkts)
}

func (a *dmaAudit) check(what string, c ring.Cookie, iova uint64, n uint32) {
	end := iova + uint64(n)
	switch {
	case n == 0 || end < iova:
		a.fail(fmt.Errorf("%s of cookie %#x: %d bytes at IOVA %#x", what, c, n, iova))
	case c&copyCookie != 0:
		size := uint64(a.pool.BufSize())
		base, top := a.pool.IOVA(0), a.pool.IOVA(uint32(a.pool.Cap()-1))+size
		if iova < base || end > top || (iova-base)%size+uint64(n) > size {
			a.fail(fmt.Errorf("%s [%#x, %#x) of a host packet is not inside one copy-pool buffer (pool at [%#x, %#x))", what, iova, end, base, top))
		}
	default:
		for _, m := range *a.dma.regions.Load() {
			if iova >= m.iova && end <= m.iova+m.size {
				return
			}
		}
		a.fail(fmt.Errorf("%s [%#x, %#x) of guest chain %d is not inside one of the guest's DMA-mapped regions %s", what, iova, end, uint16(c), a.mapped()))
	}
}

func (a *dmaAudit) mapped() string {
	s := ""
	for _, m := range *a.dma.regions.Load() {
		s += fmt.Sprintf("[%#x, %#x) ", m.iova, m.iova+m.size)
	}
	return s
}

func (a *dmaAudit) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.violations) < 8 {
		a.violations = append(a.violations, err)
	}
}

// take returns and forgets the violations seen so far.
func (a *dmaAudit) take() []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	v := a.violations
	a.violations = nil
	return v
}

// canary is host memory DMA-mapped in the NIC's IOMMU domain that nothing
// may write: the NIC reaching it means a descriptor named memory that is
// not the guest's.
type canary struct {
	reg  *hugepage.Region
	iova uint64
	seed byte
}

func newCanary(tb testing.TB, pf *sim.PF, iova uint64, seed byte) *canary {
	tb.Helper()
	reg, err := hugepage.Alloc(engineCanary, hugepage.Options{PageSize: hugepage.Page4K, Name: "zcnet-enginefuzz-canary"})
	if err != nil {
		tb.Fatal(err)
	}
	c := &canary{reg: reg, iova: iova, seed: seed}
	c.fill()
	if err := reg.MapInto(pf.DMA(), iova); err != nil {
		reg.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { reg.Close() })
	return c
}

func (c *canary) fill() {
	b := c.reg.Bytes()
	for i := range b {
		b[i] = c.want(i)
	}
}

func (c *canary) want(i int) byte { return byte(i>>2) ^ byte(i*131) ^ c.seed }

func (c *canary) check(t *testing.T) {
	t.Helper()
	for i, v := range c.reg.Bytes() {
		if v != c.want(i) {
			t.Fatalf("canary at IOVA %#x changed at offset %#x (IOVA %#x): %#02x, want %#02x", c.iova, i, c.iova+uint64(i), v, c.want(i))
		}
	}
}

// Seeds.

var updateEngineCorpus = flag.Bool("enginefuzz.update", false, "rewrite the seed corpus of "+engineFuzzName)

// seedDesc is a chain descriptor for a seed: at anchor (an index into
// chainAnchors) plus off, scaled by 1 << offsetShifts[scale].
type seedDesc struct {
	idx, flags, anchor, scale byte
	off                       int16
	length                    uint16
	next                      byte
}

// Offset scales (offsetShifts).
const (
	scale1 = iota
	scale8
	scale64
	scale4096
)

func (d seedDesc) encode() []byte {
	b := []byte{d.idx, d.flags, d.anchor | d.scale<<4}
	b = binary.LittleEndian.AppendUint16(b, uint16(d.off))
	b = binary.LittleEndian.AppendUint16(b, d.length)
	return append(b, d.next)
}

// Chain anchors, as newHostileGuest lists them.
const (
	anchorScratch = iota
	anchorScratchMid
	anchorRegion0
	anchorRegion0End
	anchorLastRegion
	anchorMemEnd
	anchorRxDesc
	anchorRxUsed
	anchorTxDesc
	anchorZero
	anchor4G
	anchorTop
)

// special returns the length field selecting specialLens[i].
func special(l uint32) uint16 {
	for i, v := range specialLens {
		if v == l {
			return 0x8000 | uint16(i)
		}
	}
	panic(fmt.Sprintf("no special length %d", l))
}

type seedOp []byte

func rxChain(ds ...seedDesc) seedOp { return chainOp(opRxChain, ds, nil) }

func txChain(hdr vhost.NetHeader, ds ...seedDesc) seedOp {
	b := make([]byte, engineHeaderLen)
	if _, err := hdr.Encode(b, engineHeaderLen); err != nil {
		panic(err)
	}
	return chainOp(opTxChain, ds, b)
}

func chainOp(op byte, ds []seedDesc, tail []byte) seedOp {
	b := []byte{op | byte(len(ds)-1)<<4}
	for _, d := range ds {
		b = append(b, d.encode()...)
	}
	return append(b, tail...)
}

// arrive has the channel poll (posting what the guest made available) and
// then n frames of frameSizes[sizeIndex] arrive from the wire.
func arrive(n, sizeIndex int) seedOp {
	return append(poll(1), opFrames, byte(n-1), byte(sizeIndex))
}

func poll(rounds int) seedOp      { return seedOp{opPoll | byte(rounds-1)<<4} }
func stopResume(vring int) seedOp { return seedOp{opStopResume | byte(vring)<<4} }
func resetQueue(vring int) seedOp { return seedOp{opResetQueue | byte(vring)<<4} }
func memTable() seedOp            { return seedOp{opMemTable} }

// indirectOp writes an indirect table of ds at scratch offset off.
func indirectOp(off uint16, ds ...seedDesc) seedOp {
	b := binary.LittleEndian.AppendUint16(seedOp{opIndirect | byte(len(ds)-1)<<4}, off)
	for _, d := range ds {
		b = append(b, d.encode()...)
	}
	return b
}

func seedBytes(cfg byte, ops ...seedOp) []byte {
	b := []byte{cfg}
	for _, op := range ops {
		b = append(b, op...)
	}
	return b
}

type engineSeed struct {
	name string
	data []byte
}

func engineSeeds() []engineSeed {
	w := byte(descFlagWrite)
	buf := func(idx byte, off int16, l uint32) seedDesc {
		return seedDesc{idx: idx, flags: w, anchor: anchorScratch, scale: scale8, off: off, length: special(l)}
	}
	rxBufs := func(n int, l uint32) []seedOp {
		var ops []seedOp
		for i := range n {
			ops = append(ops, rxChain(buf(byte(i), int16(i)*512, l)))
		}
		return ops
	}
	txAt := func(idx byte, off int16, l uint16) seedDesc {
		return seedDesc{idx: idx, anchor: anchorScratchMid, scale: scale8, off: off, length: l}
	}
	plain := vhost.NetHeader{}
	tso := vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, GSOType: vhost.NetHdrGSOTCPv4, HdrLen: 54, GSOSize: 500, CsumStart: 34, CsumOffset: 16}
	csum := vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 16}
	traffic := []seedOp{arrive(8, 0), poll(4), arrive(4, 6), poll(4)}
	tx := []seedOp{txChain(plain, txAt(0, 0, 300)), txChain(csum, txAt(1, 64, 200)), txChain(tso, txAt(2, 128, 1200)), poll(4)}
	all := func(parts ...[]seedOp) []seedOp {
		var out []seedOp
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return []engineSeed{
		{"zero-copy-split", seedBytes(0, all(rxBufs(8, 4096), traffic, tx)...)},
		{"zero-copy-packed", seedBytes(engineCfgPacked, all(rxBufs(8, 4096), traffic, tx)...)},
		{"zero-copy-split-memory", seedBytes(engineCfgSplitMem, all(rxBufs(8, 4096), traffic, tx)...)},
		{"small-buffers-copy", seedBytes(0, all(rxBufs(8, 1024), traffic)...)},
		{"no-mrg-spanning", seedBytes(engineCfgNoMrg, all(rxBufs(8, 1036), traffic)...)},
		{"header-apart", seedBytes(0, rxChain(
			seedDesc{idx: 0, flags: w, anchor: anchorScratch, length: special(12)},
			seedDesc{idx: 1, flags: w, anchor: anchorScratch, off: 64, length: special(4096)}),
			arrive(2, 6), poll(4))},
		{"buffer-past-memory-end", seedBytes(0, append(rxBufs(2, 4096),
			rxChain(seedDesc{idx: 2, flags: w, anchor: anchorMemEnd, scale: scale8, off: -256, length: special(4096)}),
			rxChain(seedDesc{idx: 3, flags: w, anchor: anchorRegion0End, off: -12, length: special(2060)}),
			arrive(8, 7), poll(8))...)},
		{"buffers-ending-at-region-ends", seedBytes(engineCfgSplitMem,
			rxChain(seedDesc{idx: 0, flags: w, anchor: anchorRegion0End, scale: scale4096, off: -1, length: special(4096)}),
			rxChain(seedDesc{idx: 1, flags: w, anchor: anchorMemEnd, scale: scale4096, off: -1, length: special(4096)}),
			arrive(2, 6), poll(4),
			txChain(plain, seedDesc{idx: 0, anchor: anchorMemEnd, off: -300, length: 300}),
			poll(4))},
		{"buffer-across-regions", seedBytes(engineCfgSplitMem, append(rxBufs(1, 4096),
			rxChain(seedDesc{idx: 1, flags: w, anchor: anchorRegion0End, scale: scale8, off: -128, length: special(4096)}),
			arrive(4, 6), poll(8))...)},
		{"buffer-on-the-rings", seedBytes(0,
			rxChain(seedDesc{idx: 0, flags: w, anchor: anchorRxDesc, length: special(4096)}),
			rxChain(seedDesc{idx: 1, flags: w, anchor: anchorRxUsed, length: special(2048)}),
			arrive(4, 6), poll(8))},
		{"huge-and-zero-lengths", seedBytes(0,
			rxChain(seedDesc{idx: 0, flags: w, anchor: anchorScratch, length: special(1 << 31)}),
			rxChain(seedDesc{idx: 1, flags: w, anchor: anchorScratch, length: special(0)}),
			txChain(plain, seedDesc{idx: 0, anchor: anchorScratchMid, length: special(1<<32 - 1)}),
			arrive(4, 4), poll(8))},
		{"address-wraps", seedBytes(0,
			rxChain(seedDesc{idx: 0, flags: w, anchor: anchorTop, scale: scale8, off: 100, length: special(4096)}),
			txChain(plain, seedDesc{idx: 0, anchor: anchorTop, length: special(4096)}),
			arrive(2, 2), poll(8))},
		{"indirect-rx-tx", seedBytes(0,
			indirectOp(0x8000, seedDesc{flags: w, anchor: anchorScratch, length: special(12)},
				seedDesc{flags: w, anchor: anchorScratch, scale: scale8, off: 8, length: special(4096)}),
			rxChain(seedDesc{idx: 0, flags: descFlagIndirect, anchor: anchorScratch, scale: scale8, off: 0x1000, length: 32}),
			arrive(2, 3), poll(4),
			indirectOp(0x8100, seedDesc{anchor: anchorScratchMid, length: 12},
				seedDesc{anchor: anchorScratchMid, off: 12, length: 300}),
			txChain(plain, seedDesc{idx: 0, flags: descFlagIndirect, anchor: anchorScratch, scale: scale8, off: 0x8100 >> 3, length: 32}),
			poll(4))},
		{"indirect-packed", seedBytes(engineCfgPacked,
			indirectOp(0x8000, seedDesc{flags: w, anchor: anchorScratch, scale: scale8, off: 8, length: special(4096)}),
			rxChain(seedDesc{idx: 3, flags: descFlagIndirect, anchor: anchorScratch, scale: scale8, off: 0x1000, length: 16}),
			arrive(2, 3), poll(4))},
		{"chain-loop", seedBytes(0,
			rxChain(seedDesc{idx: 0, flags: w | descFlagRaw | descFlagNext, anchor: anchorScratch, length: 2048, next: 1},
				seedDesc{idx: 1, flags: w | descFlagRaw | descFlagNext, anchor: anchorScratch, off: 2048, length: 2048, next: 0}),
			arrive(2, 3), poll(4))},
		{"avail-idx-jumps", seedBytes(0, append(rxBufs(4, 4096),
			seedOp{opRawAvail, 2, 0xff, 0x7f}, arrive(4, 3), poll(4))...)},
		{"stop-resume-mid-traffic", seedBytes(0, all(rxBufs(8, 4096), traffic, tx,
			[]seedOp{arrive(4, 3), stopResume(0), stopResume(1)}, rxBufs(4, 4096), traffic)...)},
		{"new-memory-table-mid-traffic", seedBytes(engineCfgSplitMem, all(rxBufs(8, 4096), []seedOp{arrive(4, 3)}, tx,
			[]seedOp{memTable()}, traffic)...)},
		{"reset-queue-mid-traffic", seedBytes(engineCfgPacked, all(rxBufs(8, 4096), []seedOp{arrive(4, 3), poll(1), resetQueue(0)}, rxBufs(4, 4096), traffic)...)},
		{"packed-wrong-wrap", seedBytes(engineCfgPacked|2<<6,
			rxChain(seedDesc{idx: 0, flags: w | descFlagWrongWrap, anchor: anchorScratch, length: special(4096)}),
			rxChain(seedDesc{idx: 9, flags: w, anchor: anchorScratch, length: special(4096)}),
			arrive(2, 3), poll(4))},
	}
}

// TestEngineChainsCorpus checks that the committed seeds are the ones
// engineSeeds encodes (go test -run TestEngineChainsCorpus
// -enginefuzz.update rewrites them), so that they stay meaningful when the
// input format changes.
func TestEngineChainsCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", engineFuzzName)
	for _, s := range engineSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
		path := filepath.Join(dir, "seed-"+s.name)
		if *updateEngineCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			t.Errorf("seed %s is not in the corpus (run with -enginefuzz.update)", s.name)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("seed %s differs from what engineSeeds encodes (run with -enginefuzz.update)", s.name)
		}
	}
}

// seedEffect is what a seed made the engine do.
type seedEffect struct {
	rxZeroCopy, rxCopied, rxPackets, txZeroCopy, guestErrors, restarts uint64
	broke                                                              bool
}

func effectOf(before, after Stats, broke bool) seedEffect {
	return seedEffect{broke: broke,
		rxZeroCopy: after.RxZeroCopy - before.RxZeroCopy, rxCopied: after.RxCopied - before.RxCopied,
		rxPackets: after.RxPackets - before.RxPackets, txZeroCopy: after.TxZeroCopy - before.TxZeroCopy,
		guestErrors: after.GuestErrors - before.GuestErrors, restarts: after.Restarts - before.Restarts,
	}
}

// seedReaches is, per seed, what it must make the engine do: the fuzzer
// mutates from these, so a seed that silently stopped reaching the path it
// names (a changed input format, anchor or default) would leave that path
// unfuzzed.
var seedReaches = map[string]func(e seedEffect) bool{
	"zero-copy-split":               func(e seedEffect) bool { return e.rxZeroCopy >= 8 && e.txZeroCopy == 3 },
	"zero-copy-packed":              func(e seedEffect) bool { return e.rxZeroCopy >= 8 && e.txZeroCopy == 3 },
	"zero-copy-split-memory":        func(e seedEffect) bool { return e.rxZeroCopy >= 8 && e.txZeroCopy == 3 },
	"small-buffers-copy":            func(e seedEffect) bool { return e.rxCopied >= 4 && e.rxZeroCopy == 0 },
	"no-mrg-spanning":               func(e seedEffect) bool { return e.rxCopied >= 4 && e.rxZeroCopy == 0 },
	"header-apart":                  func(e seedEffect) bool { return e.rxZeroCopy >= 1 },
	"buffers-ending-at-region-ends": func(e seedEffect) bool { return e.rxZeroCopy == 2 && e.txZeroCopy == 1 },
	"buffer-on-the-rings":           func(e seedEffect) bool { return e.rxZeroCopy >= 1 },
	"indirect-rx-tx":                func(e seedEffect) bool { return e.rxZeroCopy >= 1 && e.txZeroCopy == 1 },
	"indirect-packed":               func(e seedEffect) bool { return e.rxZeroCopy >= 1 },
	"stop-resume-mid-traffic":       func(e seedEffect) bool { return e.rxZeroCopy >= 8 && e.restarts >= 2 },
	"new-memory-table-mid-traffic":  func(e seedEffect) bool { return e.rxZeroCopy >= 8 && e.restarts >= 2 },
	"reset-queue-mid-traffic":       func(e seedEffect) bool { return e.rxZeroCopy >= 4 && e.restarts >= 1 },
	"buffer-past-memory-end":        func(e seedEffect) bool { return e.broke },
	"buffer-across-regions":         func(e seedEffect) bool { return e.broke },
	"huge-and-zero-lengths":         func(e seedEffect) bool { return e.broke },
	"address-wraps":                 func(e seedEffect) bool { return e.broke },
	"chain-loop":                    func(e seedEffect) bool { return e.broke },
	"avail-idx-jumps":               func(e seedEffect) bool { return e.broke },
	"packed-wrong-wrap":             func(e seedEffect) bool { return e.rxPackets == 0 },
}

// TestEngineChainsSeedsReachTheEngine runs every seed and checks that it
// does what its name says (seedReaches), besides what every input must
// satisfy.
func TestEngineChainsSeedsReachTheEngine(t *testing.T) {
	e := newEngineFuzz(t)
	for _, s := range engineSeeds() {
		t.Run(s.name, func(t *testing.T) {
			reaches, ok := seedReaches[s.name]
			if !ok {
				t.Fatalf("seed %s has no entry in seedReaches", s.name)
			}
			before := e.r.channel.Stats()
			e.run(t, s.data)
			if eff := effectOf(before, e.r.channel.Stats(), e.broke); !reaches(eff) {
				t.Fatalf("seed %s no longer does what it is for: %+v", s.name, eff)
			}
		})
	}
}
