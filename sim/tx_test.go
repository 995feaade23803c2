package sim

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

const (
	txRingIOVA = 0x2000000
	txBufIOVA  = 0x2100000
	txWBIOVA   = 0x2F00000
)

// capture is a wire endpoint that keeps copies of what it receives.
type capture struct {
	mu     sync.Mutex
	frames [][]byte
}

func (c *capture) Deliver(f []byte) {
	c.mu.Lock()
	c.frames = append(c.frames, append([]byte(nil), f...))
	c.mu.Unlock()
}

type txRing struct {
	bar  vfio.BAR
	q, n int
	ring []byte
	bufs []byte
	wb   []byte
	tail int
	used int // bytes of bufs used
}

func setupTx(t testing.TB, p *PF, bar vfio.BAR, q, n int) *txRing {
	t.Helper()
	r := &txRing{bar: bar, q: q, n: n, ring: dmaMem(t, 64<<10), bufs: dmaMem(t, 1<<20), wb: dmaMem(t, 4096)}
	for _, m := range []struct {
		iova uint64
		mem  []byte
	}{{txRingIOVA, r.ring}, {txBufIOVA, r.bufs}, {txWBIOVA, r.wb}} {
		if err := p.DMA().MapDMA(m.iova, m.mem); err != nil {
			t.Fatal(err)
		}
	}
	bar.Write32(tDMATXCTL, bar.Read32(tDMATXCTL)|1)
	bar.Write32(tTxq(q, 0x00), txRingIOVA)
	bar.Write32(tTxq(q, 0x04), 0)
	bar.Write32(tTxq(q, 0x08), uint32(16*n))
	bar.Write32(tTxq(q, 0x10), 0)
	bar.Write32(tTxq(q, 0x28), 1<<25)
	pollSet(t, bar, tTxq(q, 0x28), 1<<25)
	bar.Write32(tTxq(q, 0x18), 0)
	return r
}

// context writes an advanced context descriptor.
func (r *txRing) context(maclen, iplen, l4len, mss int, vlan uint16, tucmd uint32) {
	d := r.ring[16*r.tail:]
	le := binary.LittleEndian
	le.PutUint32(d[0:], uint32(iplen)|uint32(maclen)<<9|uint32(vlan)<<16)
	le.PutUint32(d[4:], 0)
	le.PutUint32(d[8:], tucmd|0x2<<20|1<<29)
	le.PutUint32(d[12:], uint32(l4len)<<8|uint32(mss)<<16)
	r.tail = (r.tail + 1) % r.n
}

// data writes advanced data descriptors for pkt split into pieces of at
// most split bytes; cmd bits go on every descriptor, EOP|RS on the last.
func (r *txRing) data(pkt []byte, split int, cmd, popts uint32, paylen int) (first int) {
	first = r.tail
	le := binary.LittleEndian
	for off := 0; off < len(pkt); off += split {
		piece := pkt[off:min(off+split, len(pkt))]
		copy(r.bufs[r.used:], piece)
		d := r.ring[16*r.tail:]
		le.PutUint64(d, txBufIOVA+uint64(r.used))
		c := uint32(len(piece)) | 0x3<<20 | 1<<29 | 1<<25 | cmd // DTYP data, DEXT, IFCS
		if off+split >= len(pkt) {
			c |= 1<<24 | 1<<27 // EOP, RS
		}
		le.PutUint32(d[8:], c)
		le.PutUint32(d[12:], popts|uint32(paylen)<<14)
		r.used += (len(piece) + 63) &^ 63
		r.tail = (r.tail + 1) % r.n
	}
	return first
}

func (r *txRing) kick() { r.bar.Write32(tTxq(r.q, 0x18), uint32(r.tail)) }

func (r *txRing) dd(i int) bool { return binary.LittleEndian.Uint32(r.ring[16*i+12:])&1 != 0 }

func txSetup(t testing.TB) (*PF, vfio.BAR, *txRing, *capture) {
	p, bar := newPF(t, func(o *Options) { o.LinkDelay = 0; o.QueueEnableDelay = 1 })
	p.Step()
	c := &capture{}
	p.Attach(c)
	return p, bar, setupTx(t, p, bar, 3, 64), c
}

var (
	ip4a = netip.MustParseAddr("192.0.2.1")
	ip4b = netip.MustParseAddr("198.51.100.7")
	ip6a = netip.MustParseAddr("2001:db8::1")
	ip6b = netip.MustParseAddr("2001:db8::2:7")
)

func TestTxPlainFrameAndDD(t *testing.T) {
	p, bar, r, c := txSetup(t)
	f := udpFrame(peerMAC, 200)
	r.data(f, 100, 0, 0, len(f)) // three descriptors
	r.kick()
	if n := p.Step(); n != 1 {
		t.Fatalf("Step sent %d frames", n)
	}
	if len(c.frames) != 1 || string(c.frames[0]) != string(f) {
		t.Fatalf("wire got %d frames; content equal: %v", len(c.frames), len(c.frames) == 1 && string(c.frames[0]) == string(f))
	}
	if r.dd(0) || r.dd(1) || !r.dd(2) {
		t.Errorf("DD on descriptors: %v %v %v, want only the RS one", r.dd(0), r.dd(1), r.dd(2))
	}
	if h := bar.Read32(tTxq(3, 0x10)); h != 3 {
		t.Errorf("TDH = %d, want 3", h)
	}
	if v := bar.Read32(tGPTC); v != 1 {
		t.Errorf("GPTC = %d", v)
	}
	if v := bar.Read32(tGOTCL); v != uint32(len(f)+4) {
		t.Errorf("GOTC = %d, want %d", v, len(f)+4)
	}
	// A short frame is padded to 60 bytes (HLREG0.TXPADEN).
	short := f[:42]
	r.data(short, 100, 0, 0, len(short))
	r.kick()
	p.Step()
	if got := c.frames[1]; len(got) != 60 || string(got[:42]) != string(short) {
		t.Errorf("short frame sent as %d bytes", len(got))
	}
}

func TestTxChecksumOffload(t *testing.T) {
	p, _, r, c := txSetup(t)
	const ixsm, txsm = 1 << 8, 1 << 9
	cases := []struct {
		name  string
		spec  frameSpec
		iplen int
		tucmd uint32
		popts uint32
	}{
		{"TCP/IPv4", frameSpec{proto: 6, srcIP: ip4a, dstIP: ip4b, payload: 333}, 20, 1<<10 | 1<<11, ixsm | txsm},
		{"UDP/IPv4", frameSpec{proto: 17, srcIP: ip4a, dstIP: ip4b, payload: 100}, 20, 1 << 10, ixsm | txsm},
		{"TCP/IPv6", frameSpec{proto: 6, srcIP: ip6a, dstIP: ip6b, payload: 777}, 40, 1 << 11, txsm},
		{"UDP/IPv6", frameSpec{proto: 17, srcIP: ip6a, dstIP: ip6b, payload: 31}, 40, 0, txsm},
	}
	for _, tc := range cases {
		s := tc.spec
		s.dst, s.src, s.vlan, s.sport, s.dport, s.l4Partial = peerMAC, testMAC, -1, 1234, 80, true
		f := buildFrame(s)
		r.context(14, tc.iplen, 0, 0, 0, tc.tucmd)
		r.data(f, 256, 0, tc.popts, len(f))
		r.kick()
		c.frames = nil
		p.Step()
		if len(c.frames) != 1 {
			t.Fatalf("%s: %d frames", tc.name, len(c.frames))
		}
		out := c.frames[0]
		ip := out[14 : 14+tc.iplen]
		l4 := out[14+tc.iplen:]
		if s.srcIP.Is4() {
			if csum(ip) != 0xFFFF {
				t.Errorf("%s: IPv4 header checksum wrong", tc.name)
			}
			l4 = l4[:binary.BigEndian.Uint16(ip[2:])-20]
		} else {
			l4 = l4[:binary.BigEndian.Uint16(ip[4:])]
		}
		if csum(pseudo(s.srcIP, s.dstIP, s.proto, len(l4)), l4) != 0xFFFF {
			t.Errorf("%s: L4 checksum wrong", tc.name)
		}
	}
}

func TestTxTSO(t *testing.T) {
	p, _, r, c := txSetup(t)
	for _, v6 := range []bool{false, true} {
		s := frameSpec{dst: peerMAC, src: testMAC, vlan: -1, proto: 6, srcIP: ip4a, dstIP: ip4b,
			sport: 1234, dport: 80, payload: 2500, tsoPartial: true, tcpFlags: 0x19} // FIN|PSH|ACK
		iplen, tucmd, popts := 20, uint32(1<<10|1<<11), uint32(1<<8|1<<9)
		if v6 {
			s.srcIP, s.dstIP, iplen, tucmd, popts = ip6a, ip6b, 40, 1<<11, 1<<9
		}
		f := buildFrame(s)
		hlen := 14 + iplen + 20
		const mss = 1000
		r.context(14, iplen, 20, mss, 0, tucmd)
		r.data(f, 1024, 1<<31, popts, len(f)-hlen) // TSE
		r.kick()
		c.frames = nil
		p.Step()
		if len(c.frames) != 3 {
			t.Fatalf("v6=%v: %d segments, want 3", v6, len(c.frames))
		}
		be := binary.BigEndian
		payload := f[hlen:]
		for k, seg := range c.frames {
			ip, tcp := seg[14:14+iplen], seg[14+iplen:]
			want := min(mss, len(payload)-k*mss)
			if len(tcp) != 20+want {
				t.Errorf("segment %d: %d TCP bytes, want %d", k, len(tcp), 20+want)
				continue
			}
			if string(tcp[20:]) != string(payload[k*mss:k*mss+want]) {
				t.Errorf("segment %d: payload differs", k)
			}
			if v6 {
				if n := be.Uint16(ip[4:]); int(n) != 20+want {
					t.Errorf("segment %d: IPv6 payload length %d", k, n)
				}
			} else {
				if n := be.Uint16(ip[2:]); int(n) != 40+want {
					t.Errorf("segment %d: IPv4 total length %d", k, n)
				}
				if id := be.Uint16(ip[4:]); id != 0x1234+uint16(k) {
					t.Errorf("segment %d: IP ID %#x", k, id)
				}
				if csum(ip) != 0xFFFF {
					t.Errorf("segment %d: IPv4 checksum wrong", k)
				}
			}
			if seq := be.Uint32(tcp[4:]); seq != 1000+uint32(k*mss) {
				t.Errorf("segment %d: seq %d", k, seq)
			}
			flags := tcp[13]
			last := k == 2
			if (flags&0x09 != 0) != last || flags&0x10 == 0 {
				t.Errorf("segment %d: flags %#x (FIN/PSH only on the last, ACK on all)", k, flags)
			}
			if csum(pseudo(s.srcIP, s.dstIP, 6, len(tcp)), tcp) != 0xFFFF {
				t.Errorf("segment %d: TCP checksum wrong", k)
			}
		}
	}
}

func TestTxVLANInsertion(t *testing.T) {
	p, _, r, c := txSetup(t)
	f := udpFrame(peerMAC, 50)
	r.context(14, 20, 0, 0, 0x6005, 0)
	r.data(f, 512, 1<<30, 0, len(f)) // VLE
	r.kick()
	p.Step()
	out := c.frames[0]
	if binary.BigEndian.Uint16(out[12:]) != 0x8100 || binary.BigEndian.Uint16(out[14:]) != 0x6005 {
		t.Fatalf("no 802.1Q tag 0x6005 after the addresses: % x", out[12:18])
	}
	if string(out[:12]) != string(f[:12]) || string(out[16:]) != string(f[12:]) {
		t.Error("frame around the tag changed")
	}
}

func TestTxHeadWriteBack(t *testing.T) {
	p, bar, r, c := txSetup(t)
	bar.Write32(tTxq(3, 0x38), txWBIOVA|1)
	bar.Write32(tTxq(3, 0x3C), 0)
	f := udpFrame(peerMAC, 10)
	r.data(f, 512, 0, 0, len(f))
	r.data(f, 512, 0, 0, len(f))
	r.kick()
	p.Step()
	if len(c.frames) != 2 {
		t.Fatalf("%d frames", len(c.frames))
	}
	if h := binary.LittleEndian.Uint32(r.wb); h != 2 {
		t.Errorf("head write-back %d, want 2", h)
	}
	if r.dd(0) || r.dd(1) {
		t.Error("descriptor DD written back although head write-back is on")
	}
}

func TestTxIOMMUFaultAndNoLink(t *testing.T) {
	p, _, r, c := txSetup(t)
	f := udpFrame(peerMAC, 10)
	first := r.data(f, 512, 0, 0, len(f))
	binary.LittleEndian.PutUint64(r.ring[16*first:], 0x7770000)
	r.kick()
	p.Step()
	if len(c.frames) != 0 {
		t.Error("frame sent from an unmapped buffer")
	}
	if n, last := p.IOMMU().Faults(); n != 1 || last != 0x7770000 {
		t.Errorf("faults %d at %#x", n, last)
	}
	p.SetLink(false)
	r.data(f, 512, 0, 0, len(f))
	r.kick()
	p.Step()
	if len(c.frames) != 0 || p.Counters().TxNoLink != 1 {
		t.Errorf("link down: %d frames on the wire, TxNoLink %d", len(c.frames), p.Counters().TxNoLink)
	}
	if !r.dd(1) {
		t.Error("descriptor not completed while the link is down")
	}
}

// Two models back to back: A's TX feeds B's RX, free-running engines.
func TestBackToBackFreeRunning(t *testing.T) {
	a, abar, ar, _ := txSetup(t)
	b, bbar := rxSetup(t, nil)
	rr := setupRx(t, b, bbar, 0, 64, 2, 0)
	rr.give(63)
	a.Attach(b)
	a.Start()
	b.Start()
	defer a.Stop()
	defer b.Stop()
	_ = abar
	for i := 0; i < 10; i++ {
		f := udpFrame(testMAC, 60+i)
		ar.data(f, 512, 0, 0, len(f))
	}
	ar.kick()
	for i := 0; i < 10; i++ {
		for spin := 0; atomicLoadLE32(rr.desc(i)[8:])&1 == 0; spin++ {
			if spin > 5_000_000 {
				t.Fatalf("frame %d never arrived", i)
			}
		}
		if w := rr.wb(i); int(w.length) != len(udpFrame(testMAC, 60+i)) {
			t.Errorf("frame %d: %d bytes", i, w.length)
		}
	}
}

// TestTxRefusesContradictoryDescriptors: a PAYLEN that is not the packet's
// length (without TSO) or its TCP payload (with TSO, headers excluded),
// and an IPv4 checksum asked for a packet the context calls IPv6, are
// refused and counted, and still completed; a correct packet goes next.
func TestTxRefusesContradictoryDescriptors(t *testing.T) {
	p, _, r, c := txSetup(t)
	const ixsm, txsm, tse = 1 << 8, 1 << 9, 1 << 31
	v4 := buildFrame(frameSpec{dst: peerMAC, src: testMAC, vlan: -1, proto: 6, srcIP: ip4a, dstIP: ip4b,
		sport: 1, dport: 2, payload: 1500, tsoPartial: true})
	v6 := buildFrame(frameSpec{dst: peerMAC, src: testMAC, vlan: -1, proto: 6, srcIP: ip6a, dstIP: ip6b,
		sport: 1, dport: 2, payload: 100, l4Partial: true})
	hlen := 14 + 20 + 20
	cases := []struct {
		name string
		send func()
	}{
		{"PAYLEN one byte long", func() { r.data(v4, 2048, 0, 0, len(v4)+1) }},
		{"PAYLEN short", func() { r.data(v4, 2048, 0, 0, len(v4)-1) }},
		{"TSO PAYLEN with the headers", func() {
			r.context(14, 20, 20, 1000, 0, 1<<10|1<<11)
			r.data(v4, 2048, tse, ixsm|txsm, len(v4))
		}},
		{"TSO PAYLEN short", func() {
			r.context(14, 20, 20, 1000, 0, 1<<10|1<<11)
			r.data(v4, 2048, tse, ixsm|txsm, len(v4)-hlen-1)
		}},
		{"IXSM for IPv6", func() {
			r.context(14, 40, 0, 0, 0, 1<<11)
			r.data(v6, 2048, 0, ixsm|txsm, len(v6))
		}},
	}
	for i, tc := range cases {
		tc.send()
		last := (r.tail + r.n - 1) % r.n
		r.kick()
		p.Step()
		if len(c.frames) != 0 || !r.dd(last) {
			t.Errorf("%s: %d frames sent (want 0), completed %v (want true)", tc.name, len(c.frames), r.dd(last))
		}
		if m := p.Counters().TxMalformed; m != uint64(i+1) {
			t.Errorf("%s: TxMalformed %d, want %d", tc.name, m, i+1)
		}
		c.frames = nil
	}
	r.context(14, 20, 20, 1000, 0, 1<<10|1<<11)
	r.data(v4, 2048, tse, ixsm|txsm, len(v4)-hlen)
	r.kick()
	p.Step()
	if len(c.frames) != 2 {
		t.Errorf("a correct TSO packet after the refused ones made %d segments, want 2", len(c.frames))
	}
}
