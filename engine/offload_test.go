package engine

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// The guest asks for checksum and segmentation offloads; what the NIC puts
// on the wire is decoded and every checksum recomputed here, independently
// of the driver's own arithmetic.

// csum16 is the Internet checksum's ones'-complement sum of b, folded, not
// inverted.
func csum16(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// pseudoSum is the IPv4 pseudo-header sum for an L4 segment of l4len bytes.
func pseudoSum(ip []byte, proto byte, l4len int) uint32 {
	return uint32(csum16(0, ip[12:20])) + uint32(proto) + uint32(l4len)
}

// ipv4Frame builds Ethernet + IPv4 + TCP (proto 6) or UDP (17) + payload.
func ipv4Frame(proto byte, payload []byte) []byte {
	l4 := 20
	if proto == 17 {
		l4 = 8
	}
	f := make([]byte, 14+20+l4+len(payload))
	copy(f, []byte{0x02, 0, 0, 0, 0, 0x09, 0x02, 0, 0, 0, 0, 0x08, 0x08, 0x00})
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+l4+len(payload)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	binary.BigEndian.PutUint16(ip[10:], ^csum16(0, ip[:20]))
	l := ip[20:]
	binary.BigEndian.PutUint16(l, 40000)
	binary.BigEndian.PutUint16(l[2:], 80)
	if proto == 6 {
		binary.BigEndian.PutUint32(l[4:], 1000000)
		binary.BigEndian.PutUint32(l[8:], 7)
		l[12], l[13] = 5<<4, 0x18 // PSH|ACK
		binary.BigEndian.PutUint16(l[14:], 65535)
	} else {
		binary.BigEndian.PutUint16(l[4:], uint16(8+len(payload)))
	}
	copy(l[l4:], payload)
	return f
}

// partial seeds the L4 checksum the way a guest kernel does for
// CHECKSUM_PARTIAL (the pseudo-header sum, not inverted) and returns the
// header asking the device to finish it.
func partial(f []byte, proto byte) vhost.NetHeader {
	ip := f[14:]
	off := uint16(16)
	if proto == 17 {
		off = 6
	}
	binary.BigEndian.PutUint16(ip[20+int(off):], csum16(pseudoSum(ip, proto, len(f)-34), nil))
	return vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: off}
}

// checkWireIPv4 verifies the IPv4 header checksum and length and the L4
// checksum of a frame taken from the wire, and returns its L4 segment.
func checkWireIPv4(t *testing.T, f []byte, proto byte) []byte {
	t.Helper()
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		t.Fatalf("not an IPv4 frame: %x", f)
	}
	ip := f[14:]
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot < 28 || tot > len(ip) || ip[9] != proto {
		t.Fatalf("IPv4 total length %d, proto %d in a %d-byte packet", tot, ip[9], len(ip))
	}
	if s := csum16(0, ip[:20]); s != 0xffff {
		t.Fatalf("IPv4 header checksum wrong (sum %#x)", s)
	}
	l4 := ip[20:tot]
	if s := csum16(pseudoSum(ip, proto, len(l4)), l4); s != 0xffff {
		t.Fatalf("L4 (proto %d) checksum wrong: sum %#x over %d bytes", proto, s, len(l4))
	}
	return l4
}

func (r *rig) transmitHdr(t *testing.T, h vhost.NetHeader, f []byte, frames int) [][]byte {
	t.Helper()
	if err := r.g.Transmit(0, h, f); err != nil {
		t.Fatal(err)
	}
	return r.collectWire(t, frames)
}

// collectWire steps the rig until the wire has carried frames frames (at
// most 1000 steps), then 5 steps more, and returns what it carried, which
// must be exactly frames frames.
func (r *rig) collectWire(t *testing.T, frames int) [][]byte {
	t.Helper()
	var got [][]byte
	for i := 0; i < 1000 && len(got) < frames; i++ {
		r.step()
		got = append(got, r.wire.take()...)
	}
	for range 5 {
		r.step()
		got = append(got, r.wire.take()...)
	}
	if len(got) != frames {
		t.Fatalf("wire got %d frames, want %d (stats %+v)", len(got), frames, r.channel.Stats())
	}
	return got
}

func TestTxChecksumOffload(t *testing.T) {
	r := newRig(t, rigOptions{})
	for _, proto := range []byte{6, 17} {
		for _, n := range []int{1, 101, 1400} {
			payload := bytes.Repeat([]byte{byte(n), 0x5a, 0xa5}, n)[:n]
			f := ipv4Frame(proto, payload)
			h := partial(f, proto)
			got := r.transmitHdr(t, h, f, 1)[0]
			l4 := checkWireIPv4(t, got, proto)
			hl := 20
			if proto == 17 {
				hl = 8
			}
			if !bytes.Equal(l4[hl:], payload) || !bytes.Equal(got[:34], f[:34]) {
				t.Fatalf("proto %d, %d bytes: frame altered beyond the checksum", proto, n)
			}
		}
	}
	if st := r.channel.Stats(); st.TxZeroCopy != 6 || st.Drops.TxOffload != 0 {
		t.Fatalf("want 6 frames sent zero-copy with offloads: %+v", st)
	}
}

func TestTxTSOv4(t *testing.T) {
	r := newRig(t, rigOptions{})
	const mss = 1000
	payload := make([]byte, 3*mss+123)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	f := ipv4Frame(6, payload)
	h := partial(f, 6)
	h.GSOType, h.GSOSize, h.HdrLen = vhost.NetHdrGSOTCPv4, mss, 54
	got := r.transmitHdr(t, h, f, 4)
	var joined []byte
	seq := uint32(1000000)
	for i, seg := range got {
		tcp := checkWireIPv4(t, seg, 6)
		data := tcp[20:]
		last := i == len(got)-1
		if (!last && len(data) != mss) || (last && len(data) != 123) {
			t.Fatalf("segment %d carries %d bytes, want %d", i, len(data), map[bool]int{true: 123, false: mss}[last])
		}
		if s := binary.BigEndian.Uint32(tcp[4:]); s != seq {
			t.Fatalf("segment %d seq %d, want %d", i, s, seq)
		}
		if id := binary.BigEndian.Uint16(seg[18:]); id != 0x1234+uint16(i) {
			t.Fatalf("segment %d IPv4 id %#x, want %#x", i, id, 0x1234+i)
		}
		if psh := tcp[13]&0x08 != 0; psh != last {
			t.Fatalf("segment %d PSH %v, want it on the last segment only", i, psh)
		}
		seq += uint32(len(data))
		joined = append(joined, data...)
	}
	if !bytes.Equal(joined, payload) {
		t.Fatal("segments do not add up to the guest's payload")
	}
	if st := r.channel.Stats(); st.TxZeroCopy != 1 || st.TxCopied != 0 {
		t.Fatalf("want the GSO frame sent zero-copy: %+v", st)
	}
}

// TestRxDataValidNeedsAGoodIPHeader: DATA_VALID tells the guest not to
// check the frame's checksums, so a frame whose UDP checksum is good but
// whose IPv4 header checksum is bad must arrive without it (the guest's
// stack then drops it), while the intact frame has it.
func TestRxDataValidNeedsAGoodIPHeader(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, frame: 200})
	r.postRx(t, 8)
	r.gen.Emit(1)
	good := r.receive(t, 1)[0]
	sent := r.input.take()[0]
	if good.Hdr.Flags&vhost.NetHdrFDataValid == 0 {
		t.Fatal("intact UDP frame arrived without DATA_VALID")
	}
	bad := append([]byte(nil), sent...)
	bad[14+10] ^= 0xff // the IPv4 header checksum; the UDP checksum stays right
	r.pf.Deliver(bad)
	got := r.receive(t, 1)[0]
	if got.Hdr.Flags&vhost.NetHdrFDataValid != 0 {
		t.Fatal("frame with a bad IPv4 header checksum arrived with DATA_VALID")
	}
}

// TestTxChecksumRequestOutsideFrame: a checksum request whose field or
// L4 header lies beyond the frame (csum_start + csum_offset + 2 past its
// end, or a TCP/UDP header cut short) is a malformed virtio-net header:
// the channel drops it as tx_bad_header and gives the chain back; it never
// reaches the NIC, which would drop it counting only its internal
// malformed-packet tally, seen by no operator. An IP header longer than
// the NIC's context descriptor can describe is an offload it cannot do.
func TestTxChecksumRequestOutsideFrame(t *testing.T) {
	udp := ipv4Frame(17, make([]byte, 10)) // 52 bytes, UDP header at 34
	tcp := ipv4Frame(6, nil)[:52]          // a TCP header cut to 18 bytes
	long := make([]byte, 14+600+8+20)      // 600 bytes of IP header
	copy(long, udp[:14])
	for _, c := range []struct {
		name  string
		frame []byte
		hdr   vhost.NetHeader
		want  func(Drops) uint64
	}{
		{"csum_start far past the end", udp, vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 2000, CsumOffset: 6},
			func(d Drops) uint64 { return d.TxBadHeader }},
		{"checksum field past the end", udp, vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 46, CsumOffset: 6},
			func(d Drops) uint64 { return d.TxBadHeader }},
		{"TCP header cut short", tcp, vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 16},
			func(d Drops) uint64 { return d.TxBadHeader }},
		{"TCP checksum on a UDP-sized segment", udp, vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 16},
			func(d Drops) uint64 { return d.TxBadHeader }},
		{"IP header longer than IPLEN", long, vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 614, CsumOffset: 6},
			func(d Drops) uint64 { return d.TxOffload }},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{})
			if err := r.g.Transmit(0, c.hdr, c.frame); err != nil {
				t.Fatal(err)
			}
			for range 5 {
				r.step()
			}
			st := r.channel.Stats()
			if got := len(r.wire.take()); got != 0 || st.TxPackets != 0 || c.want(st.Drops) != 1 {
				t.Fatalf("wire got %d frames, the NIC was given %d; want the frame dropped by the channel under its cause: %+v", got, st.TxPackets, st.Drops)
			}
			if m := r.pf.Counters().TxMalformed; m != 0 {
				t.Fatalf("the NIC dropped %d malformed packets: the channel handed it one", m)
			}
			if n := r.g.ReclaimTx(0); n != 1 {
				t.Fatalf("the guest got %d chains back, want 1", n)
			}
			// The channel goes on sending what is well formed.
			f := ipv4Frame(17, []byte("fine"))
			got := r.transmitHdr(t, partial(f, 17), f, 1)[0]
			checkWireIPv4(t, got, 17)
		})
	}
}

// TestRxHeaderFollowsEachFrame: the channel stores a receive header only
// where the buffer does not already hold it (putRxHeader), so a buffer
// used again must still get each frame's own header. The guest posts one
// receive buffer at a time and takes the same slot back each time, so an
// intact frame, a frame with a bad IPv4 header checksum and an intact one
// arrive in buffers that held a header before: DATA_VALID set, cleared,
// set again. (Comparing num_buffers alone fails here.)
func TestRxHeaderFollowsEachFrame(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, frame: 200})
	r.postRx(t, 1)
	r.gen.Emit(1)
	first := r.receive(t, 1)[0]
	sent := r.input.take()[0]
	bad := append([]byte(nil), sent...)
	bad[14+10] ^= 0xff // the IPv4 header checksum
	r.pf.Deliver(bad)
	second := r.receive(t, 1)[0]
	r.pf.Deliver(sent)
	third := r.receive(t, 1)[0]
	for i, c := range []struct {
		got   vhost.NetHeader
		valid bool
	}{{first.Hdr, true}, {second.Hdr, false}, {third.Hdr, true}} {
		want := vhost.NetHeader{NumBuffers: 1}
		if c.valid {
			want.Flags = vhost.NetHdrFDataValid
		}
		if c.got != want {
			t.Errorf("frame %d: header %+v, want %+v", i+1, c.got, want)
		}
	}
}

// TestRxHeaderFlagsEveryVerdict: a received frame is marked DATA_VALID
// exactly when the guest negotiated GUEST_CSUM, the NIC found the TCP/UDP
// checksum good and did not find the IP header checksum bad, for every
// pair of verdicts, whatever else the completion's flags say.
func TestRxHeaderFlagsEveryVerdict(t *testing.T) {
	verdicts := []ring.CsumStatus{ring.CsumUnknown, ring.CsumGood, ring.CsumBad}
	for _, csum := range []bool{false, true} {
		p := &Channel{}
		if csum {
			p.dataValid = dataValidMask(vhost.NetFGuestCsum | vhost.FVersion1)
		} else {
			p.dataValid = dataValidMask(vhost.FVersion1)
		}
		for _, ip := range verdicts {
			for _, l4 := range verdicts {
				f := ring.RxFlagEOP | ring.RxFlagVLANStripped | ring.RxVerdicts(ip, l4)
				want := uint64(0)
				if csum && l4 == ring.CsumGood && ip != ring.CsumBad {
					want = vhost.NetHdrFDataValid
				}
				if got := p.rxHeaderFlags(f); got != want {
					t.Errorf("GUEST_CSUM %v, IP %v, L4 %v: header flags %#x, want %#x", csum, ip, l4, got, want)
				}
			}
		}
	}
}
