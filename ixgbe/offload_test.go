package ixgbe

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// submitOne sends one packet made of frame (in one segment) and waits until
// the wire has it and the cookie came back.
func submitAndCollect(t *testing.T, env txEnv, pk ring.TxPkt, wantFrames int) [][]byte {
	t.Helper()
	if n := env.q.Submit([]ring.TxPkt{pk}); n != 1 {
		t.Fatalf("Submit took %d packets", n)
	}
	c := reclaimN(t, env.pf, env.q, 1)
	if c[0] != pk.Cookie {
		t.Fatalf("reclaimed cookie %d, want %d", c[0], pk.Cookie)
	}
	got := env.rec.take()
	if len(got) != wantFrames {
		t.Fatalf("wire carried %d frames, want %d", len(got), wantFrames)
	}
	return got
}

func TestTxChecksumOffload(t *testing.T) {
	env := newTxEnv(t, Config{})
	for _, proto := range []uint8{ring.L4UDP, ring.L4TCP} {
		hdr := 8
		if proto == ring.L4TCP {
			hdr = 20
		}
		f := ipv4Frame([6]byte{2, 0, 0, 0, 0, 9}, proto, 4000, 80, hdr, payloadBytes(301, proto))
		want := append([]byte(nil), f...)
		fillChecksums(want)
		// What a stack hands the NIC: IPv4 checksum 0, L4 checksum field
		// seeded with the pseudo-header sum (datasheet 7.2.5.2).
		off := 14 + 20 + 6
		if proto == ring.L4TCP {
			off = 14 + 20 + 16
		}
		binary.BigEndian.PutUint16(f[off:], fold(pseudoSum(testIPSrc, testIPDst, proto, len(f)-34)))
		seg, _ := env.bufs.txSeg(t, f)
		pk := ring.TxPkt{
			Segs: []ring.Segment{seg}, Cookie: ring.Cookie(proto),
			Offload: ring.OffloadIPv4Csum | ring.OffloadL4Csum,
			L4Proto: proto, L2Len: 14, L3Len: 20,
		}
		got := submitAndCollect(t, env, pk, 1)[0]
		ipOK, l4OK := checksumsOK(got)
		if !ipOK || !l4OK {
			t.Errorf("proto %d: checksums on the wire: IPv4 ok=%v L4 ok=%v", proto, ipOK, l4OK)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("proto %d: frame on the wire differs from the frame with checksums computed in software", proto)
		}
	}
	// The second packet of the same kind reuses the loaded context: one
	// descriptor only.
	f := udpFrame([6]byte{2, 0, 0, 0, 0, 9}, 1, 2, payloadBytes(50, 3))
	seg, _ := env.bufs.txSeg(t, f)
	pk := ring.TxPkt{Segs: []ring.Segment{seg}, Offload: ring.OffloadIPv4Csum | ring.OffloadL4Csum, L4Proto: ring.L4UDP, L2Len: 14, L3Len: 20}
	before := env.q.tail
	env.q.Submit([]ring.TxPkt{pk})
	if used := env.q.tail - before; used != 2 {
		t.Errorf("first UDP packet after a TCP context used %d descriptors, want 2 (context + data)", used)
	}
	reclaimN(t, env.pf, env.q, 1)
	before = env.q.tail
	env.q.Submit([]ring.TxPkt{pk})
	if used := env.q.tail - before; used != 1 {
		t.Errorf("repeat packet with the same offloads used %d descriptors, want 1 (context reused)", used)
	}
	reclaimN(t, env.pf, env.q, 1)
	env.rec.take()
}

func TestTxTSO(t *testing.T) {
	env := newTxEnv(t, Config{})
	const mss = 1000
	payload := payloadBytes(2600, 9)
	f := tcpFrame([6]byte{2, 0, 0, 0, 0, 9}, 5555, 80, payload)
	// TSO input per datasheet 7.2.4: checksum fields seeded with the
	// pseudo-header sum without the length; the device rewrites lengths,
	// IDs, sequence numbers and checksums per segment.
	binary.BigEndian.PutUint16(f[14+20+16:], fold(pseudoSum(testIPSrc, testIPDst, 6, 0)))
	// Three segments (buffers are 2 KiB), split inside the payload.
	s1, _ := env.bufs.txSeg(t, f[:100])
	s2, _ := env.bufs.txSeg(t, f[100:1500])
	s3, _ := env.bufs.txSeg(t, f[1500:])
	pk := ring.TxPkt{
		Segs: []ring.Segment{s1, s2, s3}, Cookie: 77,
		Offload: ring.OffloadTSO | ring.OffloadIPv4Csum | ring.OffloadL4Csum,
		L4Proto: ring.L4TCP, L2Len: 14, L3Len: 20, L4Len: 20, MSS: mss,
	}
	frames := submitAndCollect(t, env, pk, 3)
	var joined []byte
	seq := uint32(1000)
	for i, g := range frames {
		ipOK, l4OK := checksumsOK(g)
		if !ipOK || !l4OK {
			t.Errorf("segment %d: IPv4 checksum ok=%v, TCP checksum ok=%v", i, ipOK, l4OK)
		}
		ip := g[14:]
		total := int(binary.BigEndian.Uint16(ip[2:]))
		data := ip[40:total]
		if want := min(mss, len(payload)-len(joined)); len(data) != want {
			t.Errorf("segment %d carries %d bytes, want %d", i, len(data), want)
		}
		if got := binary.BigEndian.Uint32(ip[24:]); got != seq {
			t.Errorf("segment %d: sequence %d, want %d", i, got, seq)
		}
		seq += uint32(len(data))
		joined = append(joined, data...)
		if !bytes.Equal(g[:12], f[:12]) || !bytes.Equal(ip[12:24], f[14+12:14+24]) {
			t.Errorf("segment %d: addresses or ports changed", i)
		}
	}
	if !bytes.Equal(joined, payload) {
		i := 0
		for i < len(joined) && i < len(payload) && joined[i] == payload[i] {
			i++
		}
		t.Errorf("segments carry %d payload bytes that differ from the %d sent, first at byte %d", len(joined), len(payload), i)
	}
}

func TestVLANInsertAndStrip(t *testing.T) {
	env := newTxEnv(t, Config{VLANStrip: true})
	f := udpFrame([6]byte{2, 0, 0, 0, 0, 9}, 1, 2, payloadBytes(80, 1))
	fillChecksums(f)
	seg, _ := env.bufs.txSeg(t, f)
	got := submitAndCollect(t, env, ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: 1, Offload: ring.OffloadVLAN, VLAN: 0x2064, L2Len: 14, L3Len: 20}, 1)[0]
	want := append(append(append([]byte(nil), f[:12]...), 0x81, 0x00, 0x20, 0x64), f[12:]...)
	if !bytes.Equal(got, want) {
		t.Errorf("VLAN insert: wire frame % x...\nwant % x...", got[:20], want[:20])
	}

	// Receive the tagged frame back: the tag is stripped and reported.
	bufs := env.bufs
	q := env.p.RxQueue(0)
	q.Post(bufs.rxBufs(t, 4))
	tagged := append([]byte(nil), want...)
	copy(tagged[0:6], env.p.MAC())
	env.pf.Deliver(tagged)
	d := harvestN(t, env.pf, q, 1)[0]
	if !d.VLANStripped() || d.VLAN != 0x2064 {
		t.Errorf("RX: VLANStripped=%v VLAN=%#x, want stripped 0x2064", d.VLANStripped(), d.VLAN)
	}
	untagged := append(append([]byte(nil), tagged[:12]...), tagged[16:]...)
	if got := bufs.Bytes(uint32(d.Cookie))[:d.Len]; !bytes.Equal(got, untagged) {
		t.Errorf("RX: stripped frame differs from the frame without its tag")
	}
}

// TestTxIPv6Offloads: IPv6 packets get their L4 checksum, and TSO its
// segments, even when the caller also asks for the IPv4 header checksum:
// an IPv6 packet has none, and the device refuses a packet whose
// descriptor asks for one (IXSM with an IPv6 context).
func TestTxIPv6Offloads(t *testing.T) {
	env := newTxEnv(t, Config{})
	dst := [6]byte{2, 0, 0, 0, 0, 9}
	for _, proto := range []uint8{ring.L4UDP, ring.L4TCP} {
		hdr, off := 8, 6
		if proto == ring.L4TCP {
			hdr, off = 20, 16
		}
		f := ipv6Frame(dst, proto, 4000, 80, hdr, payloadBytes(201, proto))
		binary.BigEndian.PutUint16(f[14+40+off:], fold(pseudoSum6(proto, len(f)-54)))
		seg, _ := env.bufs.txSeg(t, f)
		got := submitAndCollect(t, env, ring.TxPkt{
			Segs: []ring.Segment{seg}, Cookie: ring.Cookie(proto), IPv6: true,
			Offload: ring.OffloadIPv4Csum | ring.OffloadL4Csum,
			L4Proto: proto, L2Len: 14, L3Len: 40,
		}, 1)[0]
		if !l4ChecksumOK6(got) {
			t.Errorf("proto %d: L4 checksum wrong on the wire", proto)
		}
	}

	const mss = 500
	payload := payloadBytes(1200, 5)
	f := ipv6Frame(dst, ring.L4TCP, 5555, 80, 20, payload)
	binary.BigEndian.PutUint16(f[14+40+16:], fold(pseudoSum6(ring.L4TCP, 0)))
	seg, _ := env.bufs.txSeg(t, f)
	frames := submitAndCollect(t, env, ring.TxPkt{
		Segs: []ring.Segment{seg}, Cookie: 9, IPv6: true,
		Offload: ring.OffloadTSO | ring.OffloadIPv4Csum | ring.OffloadL4Csum,
		L4Proto: ring.L4TCP, L2Len: 14, L3Len: 40, L4Len: 20, MSS: mss,
	}, 3)
	var joined []byte
	for i, g := range frames {
		if !l4ChecksumOK6(g) {
			t.Errorf("TSO segment %d: TCP checksum wrong", i)
		}
		joined = append(joined, g[14+40+20:]...)
	}
	if !bytes.Equal(joined, payload) {
		t.Errorf("TSO segments carry %d payload bytes differing from the %d sent", len(joined), len(payload))
	}
	if m := env.pf.Counters().TxMalformed; m != 0 {
		t.Errorf("the device refused %d packets as malformed", m)
	}
}

// TestTxTSOPayloadLength: with TSO, PAYLEN is the TCP payload alone,
// whatever the headers' lengths (IPv4 options, TCP options); the device
// segments by it and refuses a packet whose PAYLEN disagrees with its
// buffers.
func TestTxTSOPayloadLength(t *testing.T) {
	env := newTxEnv(t, Config{})
	const mss = 600
	payload := payloadBytes(1500, 3)
	for _, tcpHdr := range []int{20, 32, 60} {
		f := ipv4Frame([6]byte{2, 0, 0, 0, 0, 9}, ring.L4TCP, 5555, 80, tcpHdr, payload)
		binary.BigEndian.PutUint16(f[14+20+16:], fold(pseudoSum(testIPSrc, testIPDst, 6, 0)))
		// Headers and payload in separate buffers, as a stack hands them.
		h := 14 + 20 + tcpHdr
		s1, _ := env.bufs.txSeg(t, f[:h])
		s2, _ := env.bufs.txSeg(t, f[h:])
		frames := submitAndCollect(t, env, ring.TxPkt{
			Segs: []ring.Segment{s1, s2}, Cookie: ring.Cookie(tcpHdr),
			Offload: ring.OffloadTSO | ring.OffloadIPv4Csum | ring.OffloadL4Csum,
			L4Proto: ring.L4TCP, L2Len: 14, L3Len: 20, L4Len: uint8(tcpHdr), MSS: mss,
		}, 3)
		var joined []byte
		for i, g := range frames {
			if ipOK, l4OK := checksumsOK(g); !ipOK || !l4OK {
				t.Errorf("TCP header %d bytes, segment %d: checksums ok IPv4 %v, TCP %v", tcpHdr, i, ipOK, l4OK)
			}
			joined = append(joined, g[h:]...)
		}
		if !bytes.Equal(joined, payload) {
			t.Errorf("TCP header %d bytes: segments carry %d payload bytes differing from the %d sent", tcpHdr, len(joined), len(payload))
		}
	}
	if m := env.pf.Counters().TxMalformed; m != 0 {
		t.Errorf("the device refused %d TSO packets as malformed (PAYLEN must count the payload only)", m)
	}
}
