package sim

import (
	"encoding/binary"
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

// Conformance tests for the transmit side of virtualization: which pool a
// TX queue belongs to (MTQC), PFVFTE and anti-spoofing (PFVFSPOOF,
// VMECM, SSVPC).

const vtTxIOVA = 0x8000_0000

// vtTxQueue is a TX queue of a pool test with its own IOVA window.
type vtTxQueue struct {
	bar  vfio.BAR
	q, n int
	ring []byte
	bufs []byte
	tail int
}

func newVTTxQueue(t testing.TB, p *PF, bar vfio.BAR, q int) *vtTxQueue {
	t.Helper()
	v := &vtTxQueue{bar: bar, q: q, n: 32, ring: dmaMem(t, 4096), bufs: dmaMem(t, 32*2048)}
	ringIOVA := uint64(vtTxIOVA) + uint64(q)<<20
	if err := p.DMA().MapDMA(ringIOVA, v.ring); err != nil {
		t.Fatal(err)
	}
	if err := p.DMA().MapDMA(ringIOVA+0x10000, v.bufs); err != nil {
		t.Fatal(err)
	}
	bar.Write32(tDMATXCTL, bar.Read32(tDMATXCTL)|1)
	bar.Write32(tTxq(q, 0x00), uint32(ringIOVA))
	bar.Write32(tTxq(q, 0x04), uint32(ringIOVA>>32))
	bar.Write32(tTxq(q, 0x08), uint32(16*v.n))
	bar.Write32(tTxq(q, 0x10), 0)
	bar.Write32(tTxq(q, 0x28), 1<<25)
	pollSet(t, bar, tTxq(q, 0x28), 1<<25)
	bar.Write32(tTxq(q, 0x18), 0)
	return v
}

// send posts f as one advanced data descriptor (EOP, RS, IFCS) and bumps
// the tail. It returns the descriptor's index.
func (v *vtTxQueue) send(f []byte) int {
	i := v.tail
	copy(v.bufs[2048*i:], f)
	d := v.ring[16*i:]
	le := binary.LittleEndian
	le.PutUint64(d, uint64(vtTxIOVA)+uint64(v.q)<<20+0x10000+uint64(2048*i))
	le.PutUint32(d[8:], uint32(len(f))|0x3<<20|1<<29|1<<25|1<<24|1<<27)
	le.PutUint32(d[12:], uint32(len(f))<<14)
	v.tail = (v.tail + 1) % v.n
	v.bar.Write32(tTxq(v.q, 0x18), uint32(v.tail))
	return i
}

func (v *vtTxQueue) done(i int) bool { return binary.LittleEndian.Uint32(v.ring[16*i+12:])&1 != 0 }

// vtTxRig is a vtRig (64 pools of 2 queues, pools 0-3 with their MACs,
// default pool 4) whose transmit side is virtualized too (MTQC VT_Ena,
// 64 pools), every pool's transmit enabled, with a TX queue on the first
// queue of pools 0-3 and the wire captured.
type vtTxRig struct {
	*vtRig
	tx   map[int]*vtTxQueue // by pool
	wire *capture
}

func newVTTxRig(t *testing.T, rxQueues ...int) *vtTxRig {
	r := &vtTxRig{vtRig: newVTRig(t, 0x8, 2, 4, rxQueues...), tx: map[int]*vtTxQueue{}, wire: &capture{}}
	r.p.Attach(r.wire)
	r.bar.Write32(tMTQC, 1<<1|1<<2)
	r.bar.Write32(tPFVFTE, 0xFFFFFFFF)
	r.bar.Write32(tPFVFTE+4, 0xFFFFFFFF)
	for pool := 0; pool < 4; pool++ {
		r.tx[pool] = newVTTxQueue(t, r.p, r.bar, 2*pool)
	}
	return r
}

// frameFrom is a UDP frame from pool src's address to dst.
func frameFrom(src int, dst [6]byte) []byte {
	return buildFrame(frameSpec{dst: dst, src: poolMAC(src), vlan: -1, srcIP: ip4a, dstIP: ip4b,
		proto: 17, sport: 7, dport: 9, payload: 30})
}

// wireFrames returns and forgets what the wire received.
func (r *vtTxRig) wireFrames() [][]byte {
	r.wire.mu.Lock()
	defer r.wire.mu.Unlock()
	f := r.wire.frames
	r.wire.frames = nil
	return f
}

func TestTxPoolAntiSpoofMAC(t *testing.T) {
	r := newVTTxRig(t)
	r.bar.Write32(tPFVFSPOOF, 1<<1) // MAC anti-spoofing for pool 1
	r.bar.Write32(tVMECM, 1<<1)     // counted in SSVPC
	own := frameFrom(1, peerMAC)
	i := r.tx[1].send(own)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(own) || !r.tx[1].done(i) {
		t.Fatalf("pool 1 sending from its own address: wire got %d frames, DD %v", len(w), r.tx[1].done(i))
	}
	forged := frameFrom(2, peerMAC) // pool 2's address, sent by pool 1
	i = r.tx[1].send(forged)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 0 {
		t.Errorf("a spoofed frame reached the wire")
	}
	if !r.tx[1].done(i) {
		t.Error("the spoofed packet's descriptor was not completed: a dropped packet is still done with")
	}
	if v := r.bar.Read32(tSSVPC); v != 1 {
		t.Errorf("SSVPC = %d, want 1", v)
	}
	if c := r.p.Counters(); c.TxSpoofed != 1 {
		t.Errorf("Counters.TxSpoofed = %d, want 1", c.TxSpoofed)
	}
	if v := r.bar.Read32(tGPTC); v != 1 {
		t.Errorf("GPTC = %d, want 1 (the spoofed frame never reached the MAC)", v)
	}
	// Pool 0 has no anti-spoofing: the same forgery goes out.
	r.tx[0].send(forged)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 {
		t.Errorf("pool 0 without anti-spoofing: wire got %d frames, want 1", len(w))
	}
	// Without its VMECM bit a pool's spoofed frames are dropped but not
	// counted in SSVPC.
	r.bar.Write32(tVMECM, 0)
	r.tx[1].send(forged)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 0 {
		t.Error("a spoofed frame reached the wire with VMECM clear")
	}
	if v := r.bar.Read32(tSSVPC); v != 0 {
		t.Errorf("SSVPC = %d with VMECM clear, want 0", v)
	}
	if c := r.p.Counters(); c.TxSpoofed != 2 {
		t.Errorf("Counters.TxSpoofed = %d, want 2", c.TxSpoofed)
	}
}

func TestTxPoolAntiSpoofVLAN(t *testing.T) {
	r := newVTTxRig(t)
	r.bar.Write32(tPFVFSPOOF, 1<<(8+3)) // VLAN anti-spoofing for pool 3
	r.bar.Write32(tPFVLVF, 1<<31|100)
	r.bar.Write32(tPFVLVFB, 1<<3)
	tagged := func(vid int) []byte {
		return buildFrame(frameSpec{dst: peerMAC, src: poolMAC(3), vlan: vid, srcIP: ip4a, dstIP: ip4b, proto: 17, sport: 7, dport: 9, payload: 30})
	}
	r.tx[3].send(tagged(100))
	r.tx[3].send(tagged(200))
	r.tx[3].send(frameFrom(3, peerMAC))
	r.p.Step()
	w := r.wireFrames()
	if len(w) != 2 || string(w[0]) != string(tagged(100)) || string(w[1]) != string(frameFrom(3, peerMAC)) {
		t.Errorf("wire got %d frames, want the VLAN 100 one and the untagged one", len(w))
	}
	if c := r.p.Counters(); c.TxSpoofed != 1 {
		t.Errorf("Counters.TxSpoofed = %d, want 1 (VLAN 200)", c.TxSpoofed)
	}
}

func TestTxPoolTransmitEnable(t *testing.T) {
	r := newVTTxRig(t)
	r.bar.Write32(tPFVFTE, 0xFFFFFFFF&^(1<<2))
	i := r.tx[2].send(frameFrom(2, peerMAC))
	r.tx[1].send(frameFrom(1, peerMAC))
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(frameFrom(1, peerMAC)) {
		t.Errorf("with pool 2's transmit disabled the wire got %d frames, want pool 1's only", len(w))
	}
	if h := r.bar.Read32(tTxq(4, 0x10)); h != 0 || r.tx[2].done(i) {
		t.Errorf("pool 2's queue moved (TDH %d, DD %v) while PFVFTE disabled it", h, r.tx[2].done(i))
	}
	r.bar.Write32(tPFVFTE, 0xFFFFFFFF)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || !r.tx[2].done(i) {
		t.Errorf("after PFVFTE enabled pool 2: wire got %d frames, DD %v", len(w), r.tx[2].done(i))
	}
	// MTQC decides the pool of a queue: with 32 pools of 4 queues, queue 4
	// is pool 1's.
	r.bar.Write32(tMTQC, 1<<1|2<<2)
	r.bar.Write32(tPFVFTE, 0xFFFFFFFF&^(1<<1))
	i = r.tx[2].send(frameFrom(2, peerMAC))
	r.p.Step()
	if w := r.wireFrames(); len(w) != 0 || r.tx[2].done(i) {
		t.Errorf("queue 4 in the 32-pool layout sent with pool 1 disabled (%d frames)", len(w))
	}
}
