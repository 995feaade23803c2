package ixgbe

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
)

// outside is an address no pool has.
var outside = [6]byte{2, 0, 0, 0, 0, 9}

// tagged is f with an 802.1Q tag carrying tci after the addresses.
func tagged(f []byte, tci uint16) []byte {
	out := append([]byte(nil), f[:12]...)
	out = binary.BigEndian.AppendUint16(out, 0x8100)
	out = binary.BigEndian.AppendUint16(out, tci)
	return append(out, f[12:]...)
}

// vlanPoolEnv is a port with three pools, each with its MAC, enabled and
// with buffers on its first queue, and the wire recorded: the set-up of
// guests on one port.
type vlanPoolEnv struct {
	pf   *sim.PF
	p    *Port
	bufs testBufs
	wire *recorder
}

func newVLANPoolEnv(t *testing.T) *vlanPoolEnv {
	pf, p, alloc := simPort(t, Config{Pools: 3, RxRingSize: 64, TxRingSize: 64})
	e := &vlanPoolEnv{pf: pf, p: p, wire: &recorder{}}
	pf.Attach(e.wire)
	e.bufs = newTestBufs(t, pf, p, alloc, 256, 2048)
	for pool := range 3 {
		m := poolMAC(pool)
		if err := p.AddPoolMAC(pool, net.HardwareAddr(m[:])); err != nil {
			t.Fatal(err)
		}
		if err := p.EnablePool(pool, true); err != nil {
			t.Fatal(err)
		}
		e.post(t, pool, 32)
	}
	return e
}

func (e *vlanPoolEnv) rxq(pool int) *RxQueue { return e.p.PoolQueuePair(pool, 0).Rx().(*RxQueue) }

func (e *vlanPoolEnv) post(t *testing.T, pool, n int) {
	t.Helper()
	if got := e.rxq(pool).Post(e.bufs.rxBufs(t, n)); got != n {
		t.Fatalf("pool %d: Post took %d of %d", pool, got, n)
	}
}

// frame is a UDP frame to pool's address.
func (e *vlanPoolEnv) frame(pool int, seed byte) []byte {
	f := udpFrame(poolMAC(pool), 1000, 53, payloadBytes(64, seed))
	fillChecksums(f)
	return f
}

// from is a UDP frame from pool's address to dst.
func from(pool int, dst [6]byte, seed byte) []byte {
	f := udpFrame(dst, 1, 2, payloadBytes(64, seed))
	m := poolMAC(pool)
	copy(f[6:12], m[:])
	fillChecksums(f)
	return f
}

// receive delivers f and checks that pool gets exactly want (its bytes
// in the buffer) with the VLAN the descriptor reports (stripped says
// whether it reports one).
func (e *vlanPoolEnv) receive(t *testing.T, what string, f []byte, pool int, want []byte, stripped bool, vlan uint16) {
	t.Helper()
	e.pf.Deliver(f)
	done := harvestN(t, e.pf, e.rxq(pool), 1)
	d := done[0]
	if got := e.bufs.Bytes(uint32(d.Cookie))[:d.Len]; !bytes.Equal(got, want) {
		t.Errorf("%s: pool %d received %d bytes, not the %d expected", what, pool, len(got), len(want))
	}
	if d.VLANStripped() != stripped || stripped && d.VLAN != vlan {
		t.Errorf("%s: descriptor VLANStripped %v VLAN %d, want %v %d", what, d.VLANStripped(), d.VLAN, stripped, vlan)
	}
	e.bufs.Put([]uint32{uint32(d.Cookie)})
	e.post(t, pool, 1)
	e.nothing(t, what+" (a second copy)")
}

// nothing checks that no queue of the port received anything.
func (e *vlanPoolEnv) nothing(t *testing.T, what string) {
	t.Helper()
	for range 100 {
		e.pf.Step()
	}
	buf := make([]ring.RxDone, 64)
	for q := range e.p.NumRxQueues() {
		if n := e.p.RxQueue(q).Harvest(buf); n != 0 {
			t.Errorf("%s: queue %d received %d frames, want none", what, q, n)
		}
	}
}

// send transmits f from pool's first queue and returns what the wire got.
func (e *vlanPoolEnv) send(t *testing.T, pool int, f []byte) [][]byte {
	t.Helper()
	q := e.p.PoolQueuePair(pool, 0).Tx().(*TxQueue)
	s, idx := e.bufs.txSeg(t, f)
	if n := q.Submit([]ring.TxPkt{{Segs: []ring.Segment{s}, Cookie: ring.Cookie(idx)}}); n != 1 {
		t.Fatalf("Submit took %d of 1", n)
	}
	reclaimN(t, e.pf, q, 1)
	e.bufs.Put([]uint32{idx})
	return e.wire.take()
}

// TestPoolVLAN: pools A and B on access VLANs 100 and 200, pool C
// untagged. A receives frames tagged 100 to its address untagged, with
// the descriptor reporting VLAN 100; frames tagged 200 or untagged do not
// reach it; C receives its untagged frames but not tagged ones; what A
// sends untagged leaves tagged 100, C's untagged. Stripping survives a
// queue restart; SetPoolVLAN(A, 0) restores A's untagged behaviour and
// the last pool leaving its VLAN turns VLAN filtering off.
func TestPoolVLAN(t *testing.T) {
	e := newVLANPoolEnv(t)
	p := e.p
	const a, b, c = 0, 1, 2
	if err := p.SetPoolVLAN(a, 100); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPoolVLAN(b, 200); err != nil {
		t.Fatal(err)
	}
	if p.PoolVLAN(a) != 100 || p.PoolVLAN(c) != 0 {
		t.Errorf("PoolVLAN: A %d, C %d; want 100 and 0", p.PoolVLAN(a), p.PoolVLAN(c))
	}
	fa := e.frame(a, 1)
	e.receive(t, "tagged 100 for A", tagged(fa, 100), a, fa, true, 100)
	e.receive(t, "tagged 100 priority 5 for A", tagged(fa, 5<<13|100), a, fa, true, 5<<13|100)
	fb := e.frame(b, 2)
	e.receive(t, "tagged 200 for B", tagged(fb, 200), b, fb, true, 200)
	fc := e.frame(c, 3)
	e.receive(t, "untagged for C", fc, c, fc, false, 0)

	e.pf.Deliver(tagged(fa, 200))
	e.nothing(t, "tagged 200 for A's address")
	e.pf.Deliver(fa)
	e.nothing(t, "untagged for A's address")
	e.pf.Deliver(tagged(fc, 100))
	e.nothing(t, "tagged 100 for untagged C's address")

	// Transmit: A's untagged frame leaves tagged 100, C's untagged.
	out := from(a, outside, 4)
	if w := e.send(t, a, out); len(w) != 1 || !bytes.Equal(w[0], tagged(out, 100)) {
		t.Errorf("A sent an untagged frame: the wire got %d frames, want it once tagged 100", len(w))
	}
	outC := from(c, outside, 4)
	if w := e.send(t, c, outC); len(w) != 1 || !bytes.Equal(w[0], outC) {
		t.Errorf("C sent an untagged frame: the wire got %d frames, want it once untagged", len(w))
	}

	// A restarted queue keeps stripping.
	qi := a * p.QueuesPerPool()
	if err := p.StopRxQueue(qi); err != nil {
		t.Fatal(err)
	}
	cookies, err := e.rxq(a).Drain(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ck := range cookies {
		e.bufs.Put([]uint32{uint32(ck)})
	}
	if err := p.StartRxQueue(qi, 0); err != nil {
		t.Fatal(err)
	}
	e.post(t, a, 32)
	e.receive(t, "tagged 100 for A after a queue restart", tagged(fa, 100), a, fa, true, 100)

	// Back to untagged: A gets untagged frames again and sends untagged;
	// VLAN 100 is gone from the filters. B keeps VLAN filtering on.
	if err := p.SetPoolVLAN(a, 0); err != nil {
		t.Fatal(err)
	}
	e.receive(t, "untagged for A after SetPoolVLAN(A, 0)", fa, a, fa, false, 0)
	e.pf.Deliver(tagged(fa, 100))
	e.nothing(t, "tagged 100 for A after SetPoolVLAN(A, 0), B still on VLAN 200")
	if w := e.send(t, a, out); len(w) != 1 || !bytes.Equal(w[0], out) {
		t.Errorf("A without a VLAN: the wire got %d frames, want its frame untagged", len(w))
	}
	e.receive(t, "tagged 200 for B after A left", tagged(fb, 200), b, fb, true, 200)
	if err := p.SetPoolVLAN(b, 0); err != nil {
		t.Fatal(err)
	}
	if v := p.read(regVLNCTRL); v&vlnctrlVFE != 0 {
		t.Errorf("VLNCTRL = %#x with no pool on a VLAN: VFE still set", v)
	}
	for i := range uint32(numVLVF) {
		if v := p.read(regPFVLVF + 4*i); v != 0 {
			t.Errorf("PFVLVF(%d) = %#x after every pool left its VLAN", i, v)
		}
	}
	for _, vid := range []uint32{100, 200} {
		if v := p.read(regVFTA + 4*(vid>>5)); v&(1<<(vid&31)) != 0 {
			t.Errorf("VFTA bit of VLAN %d still set", vid)
		}
	}
	// Untagged port again: a tagged frame to A reaches it, tag and all.
	e.receive(t, "tagged 100 for A with no VLANs left", tagged(fa, 100), a, tagged(fa, 100), false, 0)
}

// TestPoolVLANShared: pools on one VLAN share its filter entry; both get
// its broadcast; when one leaves, the other keeps the VLAN.
func TestPoolVLANShared(t *testing.T) {
	e := newVLANPoolEnv(t)
	p := e.p
	for _, pool := range []int{0, 2} {
		if err := p.SetPoolVLAN(pool, 300); err != nil {
			t.Fatal(err)
		}
	}
	used := 0
	for i := range uint32(numVLVF) {
		if v := p.read(regPFVLVF + 4*i); v != 0 {
			used++
			if v != vlvfVIEN|300 || p.read(regPFVLVFB+8*i) != 1<<0|1<<2 {
				t.Errorf("PFVLVF(%d) = %#x, PFVLVFB = %#x; want VLAN 300 valid with pools 0 and 2", i, v, p.read(regPFVLVFB+8*i))
			}
		}
	}
	if used != 1 {
		t.Errorf("%d VLAN filter entries in use, want 1 shared", used)
	}
	bc := udpFrame([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 67, 68, payloadBytes(80, 7))
	fillChecksums(bc)
	e.pf.Deliver(tagged(bc, 300))
	for _, pool := range []int{0, 2} {
		d := harvestN(t, e.pf, e.rxq(pool), 1)
		if got := e.bufs.Bytes(uint32(d[0].Cookie))[:d[0].Len]; !bytes.Equal(got, bc) || d[0].VLAN != 300 {
			t.Errorf("broadcast on VLAN 300: pool %d got %d bytes VLAN %d, want the untagged broadcast, VLAN 300", pool, len(got), d[0].VLAN)
		}
	}
	e.nothing(t, "broadcast on VLAN 300 (pool 1 is untagged)")
	if err := p.SetPoolVLAN(0, 0); err != nil {
		t.Fatal(err)
	}
	f2 := e.frame(2, 9)
	e.receive(t, "tagged 300 for pool 2 after pool 0 left", tagged(f2, 300), 2, f2, true, 300)
}

// TestPoolVLANAntiSpoof: a pool with anti-spoofing on a VLAN gets VLAN
// anti-spoofing too (in either order of the calls), and loses it with
// its VLAN; MAC anti-spoofing stays.
func TestPoolVLANAntiSpoof(t *testing.T) {
	e := newVLANPoolEnv(t)
	p := e.p
	spoof := func() uint32 { return p.read(regPFVFSPOOF) }
	if err := p.SetPoolAntiSpoof(1, true); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPoolVLAN(1, 100); err != nil {
		t.Fatal(err)
	}
	if v := spoof(); v != 1<<1|1<<(8+1) {
		t.Errorf("PFVFSPOOF(0) = %#x, want MAC and VLAN anti-spoofing for pool 1 (%#x)", v, 1<<1|1<<9)
	}
	if err := p.SetPoolVLAN(2, 200); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPoolAntiSpoof(2, true); err != nil {
		t.Fatal(err)
	}
	if v := spoof(); v != 1<<1|1<<2|1<<9|1<<10 {
		t.Errorf("PFVFSPOOF(0) = %#x, want pools 1 and 2 with both", v)
	}
	// Pool 1 sends from its own address: it leaves tagged 100.
	out := from(1, outside, 4)
	if w := e.send(t, 1, out); len(w) != 1 || !bytes.Equal(w[0], tagged(out, 100)) {
		t.Errorf("pool 1 with anti-spoofing on VLAN 100: the wire got %d frames, want its frame tagged 100", len(w))
	}
	if st := p.Stats(); st.TxSpoofed != 0 {
		t.Errorf("TxSpoofed = %d, want 0", st.TxSpoofed)
	}
	if err := p.SetPoolVLAN(1, 0); err != nil {
		t.Fatal(err)
	}
	if v := spoof(); v != 1<<1|1<<2|1<<10 {
		t.Errorf("PFVFSPOOF(0) = %#x after pool 1 left its VLAN, want %#x", v, 1<<1|1<<2|1<<10)
	}
}

// TestPoolVLANSwitching: with the internal switch, pools on one VLAN
// reach each other (untagged in, untagged out, VLAN reported), a pool on
// another VLAN does not get the frame.
func TestPoolVLANSwitching(t *testing.T) {
	e := newVLANPoolEnv(t)
	p := e.p
	p.SetPoolSwitching(true)
	for pool, vid := range []uint16{100, 100, 200} {
		if err := p.SetPoolVLAN(pool, vid); err != nil {
			t.Fatal(err)
		}
	}
	f := from(0, poolMAC(1), 5)
	if w := e.send(t, 0, f); len(w) != 0 {
		t.Errorf("pool 0 to pool 1 on VLAN 100: %d frames left on the wire", len(w))
	}
	d := harvestN(t, e.pf, e.rxq(1), 1)
	if got := e.bufs.Bytes(uint32(d[0].Cookie))[:d[0].Len]; !bytes.Equal(got, f) || !d[0].VLANStripped() || d[0].VLAN != 100 {
		t.Errorf("pool 1 got %d bytes, VLAN %d stripped %v; want the frame untagged, VLAN 100", len(got), d[0].VLAN, d[0].VLANStripped())
	}
	e.send(t, 0, from(0, poolMAC(2), 6))
	e.nothing(t, "pool 0 (VLAN 100) to pool 2 (VLAN 200)")
}

// TestPoolVLANErrors: out-of-range VLANs and pools, and ports without
// pools, are refused.
func TestPoolVLANErrors(t *testing.T) {
	_, p, _ := simPort(t, Config{Pools: 2, RxRingSize: 16, TxRingSize: 16})
	if err := p.SetPoolVLAN(0, 4096); err == nil {
		t.Error("VLAN 4096 accepted")
	}
	if err := p.SetPoolVLAN(2, 100); err == nil {
		t.Error("pool 2 of 2 accepted")
	}
	if p.read(regVLNCTRL)&vlnctrlVFE != 0 {
		t.Error("a refused SetPoolVLAN turned VLAN filtering on")
	}
	_, q, _ := simPort(t, Config{RxRingSize: 16, TxRingSize: 16})
	if err := q.SetPoolVLAN(0, 100); err == nil {
		t.Error("a port without pools accepted SetPoolVLAN")
	}
}
