package sim

import (
	"encoding/binary"
	"testing"
)

// Conformance tests for a pool on an access VLAN, the way a PF driver sets
// up a VF's port VLAN (Linux: ip link set PF vf N vlan V): the pool's
// default tag is inserted on everything it sends (PFVMVIR), tagged frames
// reach it only through the PFVLVF/PFVLVFB entry of their VLAN (with
// VLNCTRL.VFE and the VFTA), untagged ones not at all (no VMOLR.AUPE), and
// its queues strip the tag (RXDCTL.VME), reporting it in the descriptor.

const (
	tPFVMVIR = 0x08000 // + 4*pool

	vlanaAlways = 1 << 30 // PFVMVIR.VLANA 01b: always insert the default tag
	vlanaNever  = 2 << 30 // 10b: never insert

	rxdctlVMEBit = 1 << 30
	rdVP         = 1 << 3 // receive descriptor status: VLAN stripped
)

// withTag is f with an 802.1Q tag carrying tci inserted after the
// addresses.
func withTag(f []byte, tci uint16) []byte {
	out := append([]byte(nil), f[:12]...)
	out = binary.BigEndian.AppendUint16(out, 0x8100)
	out = binary.BigEndian.AppendUint16(out, tci)
	return append(out, f[12:]...)
}

// taggedFrom is a UDP frame from pool src's address to dst tagged tci.
func taggedFrom(src int, dst [6]byte, tci int) []byte {
	return buildFrame(frameSpec{dst: dst, src: poolMAC(src), vlan: tci, srcIP: ip4a, dstIP: ip4b,
		proto: 17, sport: 7, dport: 9, payload: 30})
}

// rxVLAN is a received frame with what its descriptor reports.
type rxVLAN struct {
	frame []byte
	vp    bool   // status VP: a tag was stripped
	tci   uint16 // the descriptor's VLAN tag field
}

// vlanFrames returns the frames v's queue received since the last call,
// with the VP bit and VLAN field of each (advanced write-back: status in
// dword 2, length and VLAN tag in dword 3).
func vlanFrames(v *vtQueue) []rxVLAN {
	le := binary.LittleEndian
	var out []rxVLAN
	for {
		d := v.ring[16*v.next:]
		st := le.Uint32(d[8:])
		if st&1 == 0 {
			return out
		}
		w := le.Uint32(d[12:])
		n := int(w & 0xFFFF)
		out = append(out, rxVLAN{
			frame: append([]byte(nil), v.bufs[2048*v.next:2048*v.next+n]...),
			vp:    st&rdVP != 0,
			tci:   uint16(w >> 16),
		})
		le.PutUint64(d[8:], 0)
		v.next = (v.next + 1) % v.n
	}
}

// newVLANPoolRig is a vtTxRig (pools 0-3 with their MACs, RX queues 0, 2,
// 4 and 6: the first queue of each) set up as a PF driver sets up port
// VLANs: no default pool, VLAN filtering on with VFTA bits for 100 and
// 200, pool 0 on VLAN 100 (PFVLVF entry 1) and pool 1 on VLAN 200 (entry
// 2), both without AUPE and with the default tag inserted on transmit;
// pools 2 and 3 untagged (AUPE). Queue 0 strips tags (VME); queue 2 does
// not.
func newVLANPoolRig(t *testing.T) *vtTxRig {
	r := newVTTxRig(t, 0, 2, 4, 6)
	b := r.bar
	b.Write32(tPFVTCTL, b.Read32(tPFVTCTL)|disDefPL)
	b.Write32(tVLNCTRL, b.Read32(tVLNCTRL)|1<<30) // VFE
	for _, vid := range []uint32{100, 200} {
		b.Write32(tVFTA+4*(vid>>5), b.Read32(tVFTA+4*(vid>>5))|1<<(vid&31))
	}
	b.Write32(tPFVLVF+4*1, 1<<31|100)
	b.Write32(tPFVLVFB+8*1, 1<<0)
	b.Write32(tPFVLVF+4*2, 1<<31|200)
	b.Write32(tPFVLVFB+8*2, 1<<1)
	b.Write32(tVMOLR+4*0, bam)
	b.Write32(tVMOLR+4*1, bam)
	b.Write32(tPFVMVIR+4*0, vlanaAlways|100)
	b.Write32(tPFVMVIR+4*1, vlanaAlways|200)
	b.Write32(tRxq(0, 0x28), b.Read32(tRxq(0, 0x28))|rxdctlVMEBit)
	return r
}

// sendLegacy posts f as one legacy data descriptor (EOP, IFCS, RS), with
// VLE and the tag in the special field when vle is set.
func (v *vtTxQueue) sendLegacy(f []byte, vle bool, tag uint16) int {
	i := v.tail
	copy(v.bufs[2048*i:], f)
	d := v.ring[16*i:]
	le := binary.LittleEndian
	le.PutUint64(d, uint64(vtTxIOVA)+uint64(v.q)<<20+0x10000+uint64(2048*i))
	cmd := uint32(len(f)) | 1<<24 | 1<<25 | 1<<27
	if vle {
		cmd |= 1 << 30
	}
	le.PutUint32(d[8:], cmd)
	le.PutUint32(d[12:], uint32(tag)<<16)
	v.tail = (v.tail + 1) % v.n
	v.bar.Write32(tTxq(v.q, 0x18), uint32(v.tail))
	return i
}

// TestVLANPoolInsertOnTX: PFVMVIR.VLANA 01b puts the pool's default tag
// (VID and priority) on every frame it sends, in place of a descriptor's
// tag; 00b leaves the descriptor in charge; 10b sends untagged even when
// the descriptor asks for a tag. VLAN anti-spoofing checks the tag the
// frame leaves with.
func TestVLANPoolInsertOnTX(t *testing.T) {
	r := newVLANPoolRig(t)
	f := frameFrom(0, peerMAC)
	r.tx[0].send(f)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(withTag(f, 100)) {
		t.Fatalf("pool 0 (VMVIR 100) sent an untagged frame: the wire got %d frames, want it once tagged 100", len(w))
	}
	// The priority bits of VLAN_default go out too.
	r.bar.Write32(tPFVMVIR, vlanaAlways|5<<13|100)
	r.tx[0].send(f)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(withTag(f, 5<<13|100)) {
		t.Errorf("VMVIR with priority 5: the wire did not get the frame tagged 0x%04x", 5<<13|100)
	}
	// The default tag replaces the one the descriptor asks for.
	r.bar.Write32(tPFVMVIR, vlanaAlways|100)
	r.tx[0].sendLegacy(f, true, 300)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(withTag(f, 100)) {
		t.Errorf("VLANA 01b with a descriptor tag 300: the frame did not leave tagged 100 (only)")
	}
	// A pool without a default VLAN (VMVIR 0): the descriptor decides.
	g := frameFrom(2, peerMAC)
	r.tx[2].send(g)
	r.tx[2].sendLegacy(g, true, 300)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 2 || string(w[0]) != string(g) || string(w[1]) != string(withTag(g, 300)) {
		t.Errorf("VMVIR 0: the wire got %d frames, want the frame untagged, then tagged 300 as its descriptor asks", len(w))
	}
	// VLANA 10b: never a tag.
	r.bar.Write32(tPFVMVIR+4*2, vlanaNever|300)
	r.tx[2].sendLegacy(g, true, 300)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(g) {
		t.Errorf("VLANA 10b: the frame did not leave untagged")
	}
	// VLAN anti-spoofing sees the inserted tag: 100 is pool 0's VLAN, 300
	// is not.
	r.bar.Write32(tPFVFSPOOF, 1<<8)
	r.tx[0].send(f)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(withTag(f, 100)) {
		t.Errorf("VLAN anti-spoofing with the pool's own default VLAN: the frame did not go out")
	}
	r.bar.Write32(tPFVMVIR, vlanaAlways|300)
	i := r.tx[0].send(f)
	r.p.Step()
	if w := r.wireFrames(); len(w) != 0 {
		t.Errorf("a default tag (300) outside the pool's VLANs passed VLAN anti-spoofing")
	}
	if c := r.p.Counters(); c.TxSpoofed != 1 || !r.tx[0].done(i) {
		t.Errorf("Counters.TxSpoofed = %d, DD %v; want 1 and the descriptor done", c.TxSpoofed, r.tx[0].done(i))
	}
}

// TestVLANPoolRxByVID: with VLNCTRL.VFE a tagged frame reaches only the
// pools of its VLAN's PFVLVF entry, an untagged one only pools with AUPE;
// a queue with RXDCTL.VME writes the frame without its tag and reports
// the tag (VP, VLAN field); without VME the tag stays in the buffer.
func TestVLANPoolRxByVID(t *testing.T) {
	r := newVLANPoolRig(t)
	q0, q2, q4, q6 := r.rx[0], r.rx[2], r.rx[4], r.rx[6]
	untagged := frameFrom(9, poolMAC(0))
	for _, tci := range []uint16{100, 3<<13 | 100} {
		r.deliver(withTag(untagged, tci))
		got := vlanFrames(q0)
		if len(got) != 1 {
			t.Fatalf("tagged 0x%04x for pool 0 (VLAN 100): pool 0 got %d frames, want 1", tci, len(got))
		}
		if string(got[0].frame) != string(untagged) || !got[0].vp || got[0].tci != tci {
			t.Errorf("tagged 0x%04x: pool 0 got %d bytes, VP %v, VLAN 0x%04x; want the frame without its tag, VP, 0x%04x",
				tci, len(got[0].frame), got[0].vp, got[0].tci, tci)
		}
	}
	noPool := r.p.Counters().RxNoPool
	for _, c := range []struct {
		what string
		f    []byte
	}{
		{"tagged 200 for pool 0's address", withTag(untagged, 200)},
		{"untagged for pool 0's address", untagged},
		{"tagged 100 for untagged pool 2's address", taggedFrom(9, poolMAC(2), 100)},
	} {
		r.deliver(c.f)
		if got := r.got(nil); len(got) != 0 {
			t.Errorf("%s: frames per queue %v, want none", c.what, got)
		}
	}
	if n := r.p.Counters().RxNoPool - noPool; n != 3 {
		t.Errorf("Counters.RxNoPool rose by %d, want 3", n)
	}
	// VLAN 300 is not in the VFTA: the MAC filters it.
	filtered := r.p.Counters().RxFiltered
	r.deliver(taggedFrom(9, poolMAC(0), 300))
	if got := r.got(nil); len(got) != 0 || r.p.Counters().RxFiltered != filtered+1 {
		t.Errorf("VLAN 300 (no VFTA bit): frames per queue %v, RxFiltered +%d; want none, +1", got, r.p.Counters().RxFiltered-filtered)
	}
	// Untagged pool 2 still gets its untagged frames.
	u2 := frameFrom(9, poolMAC(2))
	r.deliver(u2)
	if got := vlanFrames(q4); len(got) != 1 || string(got[0].frame) != string(u2) || got[0].vp {
		t.Errorf("untagged for pool 2: %d frames (want 1, as sent, VP clear)", len(got))
	}
	// Broadcast: tagged 200 to pool 1 alone; its queue does not strip.
	b200 := taggedFrom(9, bcastMAC, 200)
	r.deliver(b200)
	if got := vlanFrames(q2); len(got) != 1 || string(got[0].frame) != string(b200) || got[0].vp {
		t.Errorf("broadcast on VLAN 200: pool 1 got %d frames (want 1, tag kept without VME, VP clear)", len(got))
	}
	for _, q := range []*vtQueue{q0, q4, q6} {
		if got := vlanFrames(q); len(got) != 0 {
			t.Errorf("broadcast on VLAN 200 reached queue %d", q.q)
		}
	}
	// Untagged broadcast: the AUPE pools 2 and 3 only.
	b := frameFrom(9, bcastMAC)
	r.deliver(b)
	if got := r.got(b); !sameCounts(got, map[int]int{4: 1, 6: 1}) {
		t.Errorf("untagged broadcast: frames per queue %v, want pools 2 and 3 (queues 4, 6)", got)
	}
}

// TestVLANPoolVEB: frames switched inside the NIC carry the sender's
// inserted tag into the receive pool selection: a pool on the same VLAN
// gets them (stripped by its queue), a pool on another VLAN does not.
func TestVLANPoolVEB(t *testing.T) {
	r := newVLANPoolRig(t)
	b := r.bar
	b.Write32(tPFDTXGSWC, 1)
	// Pool 3 joins VLAN 100 beside pool 0, strips on its queue 6.
	b.Write32(tPFVLVFB+8*1, 1<<0|1<<3)
	b.Write32(tVMOLR+4*3, bam)
	b.Write32(tPFVMVIR+4*3, vlanaAlways|100)
	b.Write32(tRxq(6, 0x28), b.Read32(tRxq(6, 0x28))|rxdctlVMEBit)

	f := frameFrom(0, poolMAC(3))
	r.pass(0, f)
	if w := r.wireFrames(); len(w) != 0 {
		t.Errorf("pool 0 to pool 3 on the same VLAN: %d frames went out on the wire", len(w))
	}
	if got := vlanFrames(r.rx[6]); len(got) != 1 || string(got[0].frame) != string(f) || !got[0].vp || got[0].tci != 100 {
		t.Errorf("pool 0 to pool 3 on VLAN 100: pool 3 got %d frames (want 1, untagged, VP, VLAN 100)", len(got))
	}
	// Pool 1 is on VLAN 200: its address is local but the VLAN keeps the
	// frame from it.
	r.pass(0, frameFrom(0, poolMAC(1)))
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("pool 0 (VLAN 100) to pool 1 (VLAN 200): frames per queue %v, want none", got)
	}
	// Pool 2 is untagged: the tagged frame does not reach it either.
	r.pass(0, frameFrom(0, poolMAC(2)))
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("pool 0 (VLAN 100) to untagged pool 2: frames per queue %v, want none", got)
	}
	r.wireFrames()
	// Broadcast from pool 0: the wire tagged 100, and pool 3 alone inside.
	bc := frameFrom(0, bcastMAC)
	r.pass(0, bc)
	if w := r.wireFrames(); len(w) != 1 || string(w[0]) != string(withTag(bc, 100)) {
		t.Errorf("broadcast from pool 0: the wire got %d frames, want one tagged 100", len(w))
	}
	if got := vlanFrames(r.rx[6]); len(got) != 1 || string(got[0].frame) != string(bc) || got[0].tci != 100 {
		t.Errorf("broadcast from pool 0: pool 3 got %d frames, want 1 (stripped, VLAN 100)", len(got))
	}
	if got := r.got(nil); len(got) != 0 {
		t.Errorf("broadcast from pool 0 on VLAN 100 reached queues %v besides pool 3", got)
	}
}
