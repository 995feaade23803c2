package sim

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// The verification suite of Microsoft's "Verifying the RSS Hash
// Calculation" (also in the 82599 datasheet, 7.1.2.8.3).
var msRSSKey = [40]byte{
	0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
	0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
	0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
}

var msRSSVectors = []struct {
	dst, src       string
	dport, sport   uint16
	ipOnly, withL4 uint32
}{
	{"161.142.100.80", "66.9.149.187", 1766, 2794, 0x323e8fc2, 0x51ccc178},
	{"65.69.140.83", "199.92.111.2", 4739, 14230, 0xd718262a, 0xc626b0ea},
	{"12.22.207.184", "24.19.198.95", 38024, 12898, 0xd2d0a5de, 0x5c2b394a},
	{"209.142.163.6", "38.27.205.30", 2217, 48228, 0x82989176, 0xafc7327f},
	{"202.188.127.2", "153.39.163.191", 1303, 44251, 0x5d1809c5, 0x10e828a2},
	{"3ffe:2501:200:3::1", "3ffe:2501:200:1fff::7", 1766, 2794, 0x2cc18cd5, 0x40207d3d},
	{"ff02::1", "3ffe:501:8::260:97ff:fe40:efab", 4739, 14230, 0x0f0c461c, 0xdde51bbf},
	{"fe80::200:f8ff:fe21:67cf", "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 38024, 44251, 0x4b61e985, 0x02d1feef},
}

func TestRSSMicrosoftVectors(t *testing.T) {
	p, bar := rxSetup(t, nil)
	r0 := setupRx(t, p, bar, 0, 64, 2, 0)
	r1 := setupRx(t, p, bar, 1, 64, 2, 0)
	r0.give(63)
	r1.give(63)
	for i := 0; i < 10; i++ {
		bar.Write32(tRSSRK+4*uint32(i), binary.LittleEndian.Uint32(msRSSKey[4*i:]))
	}
	// RETA: every entry to queue 0 except the one the first TCP vector
	// lands on, which goes to queue 1.
	steer := msRSSVectors[0].withL4 & 0x7F
	for i := uint32(0); i < 32; i++ {
		var v uint32
		for b := uint32(0); b < 4; b++ {
			if 4*i+b == steer {
				v |= 1 << (8 * b)
			}
		}
		bar.Write32(tRETA+4*i, v)
	}
	// RSS on, hash TCP/IPv4, IPv4, TCP/IPv6, IPv6 (not UDP: UDP frames hash
	// on addresses only, which is the "IP only" column).
	bar.Write32(tMRQC, 1|1<<16|1<<17|1<<20|1<<21)
	bar.Write32(tRXCSUM, 1<<13) // PCSD: the descriptor carries the hash

	type result struct {
		hash, typ uint32
		q         int
	}
	var got []result
	collect := func() {
		for _, r := range []*rxRing{r0, r1} {
			for ; r.wb(r.next).status&1 != 0; r.next++ {
				w := r.wb(r.next)
				got = append(got, result{w.rss, w.pktInfo & 0xF, r.q})
			}
		}
	}
	for _, v := range msRSSVectors {
		src, dst := netip.MustParseAddr(v.src), netip.MustParseAddr(v.dst)
		for _, proto := range []byte{6, 17} {
			p.Deliver(buildFrame(frameSpec{dst: testMAC, src: peerMAC, vlan: -1, srcIP: src, dstIP: dst,
				proto: proto, sport: v.sport, dport: v.dport, payload: 4}))
			got = got[:0]
			p.Step()
			collect()
			if len(got) != 1 {
				t.Fatalf("%s→%s proto %d: %d frames received", v.src, v.dst, proto, len(got))
			}
			// RSS types: 1 TCP/IPv4, 2 IPv4, 3 TCP/IPv6, 5 IPv6.
			want, wantType := v.withL4, uint32(1)
			switch {
			case proto == 17 && src.Is4():
				want, wantType = v.ipOnly, 2
			case proto == 17:
				want, wantType = v.ipOnly, 5
			case src.Is6():
				wantType = 3
			}
			if got[0].hash != want || got[0].typ != wantType {
				t.Errorf("%s:%d → %s:%d proto %d: hash %#08x type %d, want %#08x type %d",
					v.src, v.sport, v.dst, v.dport, proto, got[0].hash, got[0].typ, want, wantType)
			}
			wantQ := 0
			if got[0].hash&0x7F == steer {
				wantQ = 1
			}
			if got[0].q != wantQ {
				t.Errorf("hash %#x went to queue %d, RETA says %d", got[0].hash, got[0].q, wantQ)
			}
		}
	}
	// A key change takes effect on the next frame.
	bar.Write32(tRSSRK, 0)
	v := msRSSVectors[0]
	p.Deliver(buildFrame(frameSpec{dst: testMAC, src: peerMAC, vlan: -1, srcIP: netip.MustParseAddr(v.src),
		dstIP: netip.MustParseAddr(v.dst), proto: 6, sport: v.sport, dport: v.dport}))
	got = got[:0]
	p.Step()
	collect()
	if len(got) != 1 || got[0].hash == v.withL4 {
		t.Errorf("hash unchanged after RSSRK(0) was rewritten: %+v", got)
	}
}
