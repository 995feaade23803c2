package sim

import (
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

// Conformance tests for the internal switch (VEB, PFDTXGSWC.LBE): frames
// one pool transmits reach the other local pools they are for through
// the NIC, never the pool that sent them.

func TestVEBUnicastBetweenPools(t *testing.T) {
	r := newVTTxRig(t, 0, 2, 4, 6, 8)
	r.bar.Write32(tPFDTXGSWC, 1)
	r.bar.Write32(0x02304, 3)     // RQSMR(1): queue 4 → counter set 3
	r.bar.Write32(0x08600, 5<<0)  // TQSM(0): queue 0 → counter set 5
	f := frameFrom(0, poolMAC(2)) // pool 0 → pool 2
	i := r.pass(0, f)
	if w := r.wireFrames(); len(w) != 0 {
		t.Errorf("a frame for a local pool went out on the wire (%d frames)", len(w))
	}
	if got := r.got(f); !sameCounts(got, map[int]int{4: 1}) {
		t.Errorf("frames per queue %v, want pool 2's queue 4 once", got)
	}
	if !r.tx[0].done(i) {
		t.Error("the switched packet's descriptor was not completed")
	}
	// Both sides count it; the MAC counts nothing.
	wantRegs(t, r.bar, []regWant{
		{"QPTC(5)", tQPTC0 + 4*5, 1},
		{"TXDGPC", tTXDGPC, 1},
		{"QPRC(3)", tQPRC0 + 0x40*3, 1},
		{"RXLPBKGPC", tRXLPBKGPC, 1},
		{"RXDLPBKGPC", tRXDLPBKGP, 0},
		{"RXDGPC", tRXDGPC, 1},
		{"GPTC", tGPTC, 0},
		{"GPRC", tGPRC, 0},
	})
	// To an address outside: the wire only, not the default pool.
	out := frameFrom(0, peerMAC)
	r.pass(0, out)
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(out) {
		t.Errorf("a frame for the network: wire got %d frames", len(w))
	}
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("a frame for the network was also received locally: %v", got)
	}
	// Without LBE the frame for pool 2 goes out and stays out.
	r.bar.Write32(tPFDTXGSWC, 0)
	r.pass(0, f)
	if w := r.wireFrames(); len(w) != 1 {
		t.Errorf("without LBE: wire got %d frames, want 1", len(w))
	}
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("without LBE the frame was switched locally: %v", got)
	}
}

func TestVEBBroadcastFromPool(t *testing.T) {
	r := newVTTxRig(t, 0, 2, 4, 6, 8)
	r.bar.Write32(tPFDTXGSWC, 1)
	r.bar.Write32(tVMOLR+4*3, aupe) // pool 3 refuses broadcast
	b := frameFrom(1, bcastMAC)
	r.pass(1, b)
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(b) {
		t.Errorf("broadcast: wire got %d frames, want 1", len(w))
	}
	// Pools 0, 2 and 4 (the default pool has BAM too), not pool 1 (the
	// sender) nor pool 3 (no BAM).
	if got := r.got(b); !sameCounts(got, map[int]int{0: 1, 4: 1, 8: 1}) {
		t.Errorf("broadcast from pool 1: frames per queue %v, want queues 0, 4, 8", got)
	}
	wantRegs(t, r.bar, []regWant{
		{"GPTC", tGPTC, 1},
		{"BPTC", 0x040F4, 1},
		{"TXDGPC", tTXDGPC, 1},
		{"RXLPBKGPC", tRXLPBKGPC, 3},
		{"RXDLPBKGPC", tRXDLPBKGP, 2},
		{"GPRC", tGPRC, 0},
	})
}

// pass sends f from pool's TX queue and runs the engines twice: the TX
// pass, then the RX pass that writes what the switch kept inside (it
// waits in the receive packet buffer until then).
func (r *vtTxRig) pass(pool int, f []byte) int {
	i := r.tx[pool].send(f)
	r.p.Step()
	r.p.Step()
	return i
}

// regWant is a register value a test expects.
type regWant struct {
	name string
	off  uint32
	want uint32
}

func wantRegs(t *testing.T, bar vfio.BAR, regs []regWant) {
	t.Helper()
	for _, c := range regs {
		if v := bar.Read32(c.off); v != c.want {
			t.Errorf("%s = %d, want %d", c.name, v, c.want)
		}
	}
}

func TestVEBMulticastAndVLAN(t *testing.T) {
	r := newVTTxRig(t, 0, 2, 4, 6, 8)
	r.bar.Write32(tPFDTXGSWC, 1)
	g := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x07, 0x07}
	r.bar.Write32(tVMOLR+4*2, aupe|bam|mpe)
	r.bar.Write32(tVMOLR+4*0, aupe|bam|mpe)
	m := frameFrom(0, g)
	r.pass(0, m)
	if w := r.wireFrames(); len(w) != 1 {
		t.Errorf("multicast: wire got %d frames, want 1", len(w))
	}
	if got := r.got(m); !sameCounts(got, map[int]int{4: 1}) {
		t.Errorf("multicast from pool 0: frames per queue %v, want only pool 2's queue 4", got)
	}
	// A unicast frame for pool 2 on a VLAN pool 2 is not a member of stays
	// inside (the address is local) and is dropped there.
	r.bar.Write32(tVLNCTRL, r.bar.Read32(tVLNCTRL)|1<<30)
	r.bar.Write32(tVFTA+4*(100>>5), 1<<(100&31))
	r.bar.Write32(tPFVLVF, 1<<31|100)
	r.bar.Write32(tPFVLVFB, 1<<3)
	u := buildFrame(frameSpec{dst: poolMAC(2), src: poolMAC(0), vlan: 100, srcIP: ip4a, dstIP: ip4b, proto: 17, sport: 7, dport: 9, payload: 30})
	r.pass(0, u)
	if w := r.wireFrames(); len(w) != 0 {
		t.Errorf("a unicast frame for a local address went out (%d frames)", len(w))
	}
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("VLAN 100 frame for pool 2 (not a member) was received: %v", got)
	}
	if c := r.p.Counters(); c.RxNoPool != 1 {
		t.Errorf("Counters.RxNoPool = %d, want 1", c.RxNoPool)
	}
	// On VLAN 100 pool 3 takes it.
	u3 := buildFrame(frameSpec{dst: poolMAC(3), src: poolMAC(0), vlan: 100, srcIP: ip4a, dstIP: ip4b, proto: 17, sport: 7, dport: 9, payload: 30})
	r.pass(0, u3)
	if got := r.got(u3); !sameCounts(got, map[int]int{6: 1}) {
		t.Errorf("VLAN 100 frame for pool 3: frames per queue %v, want queue 6", got)
	}
}
