package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/zcnet/zcnet/internal/checksum"
)

func testHeader() UDP4Header {
	return UDP4Header{
		DstMAC: MAC{0x02, 0xaa, 0, 0, 0, 2}, SrcMAC: MAC{0x02, 0xaa, 0, 0, 0, 1},
		SrcIP: [4]byte{192, 0, 2, 1}, DstIP: [4]byte{192, 0, 2, 200},
		SrcPort: 40000, DstPort: 5201,
	}
}

func buildUDP4(h UDP4Header, payload []byte) []byte {
	f := make([]byte, UDP4FrameLen(len(payload)))
	copy(f[UDP4FrameLen(0):], payload)
	PutUDP4(f, h)
	return f
}

func TestPutUDP4Layout(t *testing.T) {
	h := testHeader()
	payload := []byte("hello, wire")
	f := buildUDP4(h, payload)
	// Offsets straight from the header formats (RFC 791, RFC 768).
	if !bytes.Equal(f[0:6], h.DstMAC[:]) || !bytes.Equal(f[6:12], h.SrcMAC[:]) || f[12] != 0x08 || f[13] != 0x00 {
		t.Fatalf("Ethernet header wrong: % x", f[:14])
	}
	ip := f[14:]
	if ip[0] != 0x45 || int(ip[2])<<8|int(ip[3]) != 20+8+len(payload) || ip[8] != 64 || ip[9] != 17 {
		t.Fatalf("IPv4 header wrong: % x", ip[:20])
	}
	if checksum.Finish(checksum.Add(0, ip[:20])) != 0 {
		t.Errorf("IPv4 header checksum does not verify: % x", ip[:20])
	}
	udp := ip[20:]
	if int(udp[0])<<8|int(udp[1]) != 40000 || int(udp[2])<<8|int(udp[3]) != 5201 || int(udp[4])<<8|int(udp[5]) != 8+len(payload) {
		t.Fatalf("UDP header wrong: % x", udp[:8])
	}
	pseudo := append(append(append([]byte{}, ip[12:20]...), 0, 17, udp[4], udp[5]), udp...)
	if checksum.Finish(checksum.Add(0, pseudo)) != 0 {
		t.Errorf("UDP checksum does not verify over pseudo-header and datagram")
	}
	if !bytes.Equal(udp[8:], payload) {
		t.Errorf("payload = %q, want %q", udp[8:], payload)
	}
}

func TestParseUDP4(t *testing.T) {
	h := testHeader()
	payload := []byte("0123456789abcdef!")
	good := buildUDP4(h, payload)

	p, err := ParseUDP4(good)
	if err != nil {
		t.Fatal(err)
	}
	if p.SrcMAC != h.SrcMAC || p.DstMAC != h.DstMAC || p.SrcIP != h.SrcIP || p.DstIP != h.DstIP ||
		p.SrcPort != h.SrcPort || p.DstPort != h.DstPort || !bytes.Equal(p.Payload, payload) || p.Tagged {
		t.Errorf("parsed %+v", p)
	}
	if !p.IPChecksumOK || !p.UDPChecksumOK || !p.UDPChecksumPresent {
		t.Errorf("checksums of a good frame: ip %v udp %v present %v", p.IPChecksumOK, p.UDPChecksumOK, p.UDPChecksumPresent)
	}

	t.Run("padding ignored", func(t *testing.T) {
		f := append(append([]byte{}, good...), 0, 0, 0, 0, 0)
		p, err := ParseUDP4(f)
		if err != nil || !p.UDPChecksumOK || len(p.Payload) != len(payload) {
			t.Errorf("err %v udp ok %v payload %d bytes", err, p.UDPChecksumOK, len(p.Payload))
		}
	})
	t.Run("vlan tag", func(t *testing.T) {
		f := append(append(append([]byte{}, good[:12]...), 0x81, 0x00, 0x20, 0x05), good[12:]...)
		p, err := ParseUDP4(f)
		if err != nil || !p.Tagged || p.VLAN != 0x2005 || !p.UDPChecksumOK || !p.IPChecksumOK {
			t.Errorf("err %v tagged %v vlan %#x ok %v/%v", err, p.Tagged, p.VLAN, p.IPChecksumOK, p.UDPChecksumOK)
		}
	})
	t.Run("payload corrupted", func(t *testing.T) {
		f := append([]byte{}, good...)
		f[len(f)-3] ^= 0x10
		p, err := ParseUDP4(f)
		if err != nil || !p.IPChecksumOK || p.UDPChecksumOK {
			t.Errorf("err %v ip ok %v udp ok %v, want ip ok and udp bad", err, p.IPChecksumOK, p.UDPChecksumOK)
		}
	})
	t.Run("ttl corrupted", func(t *testing.T) {
		// TTL is in the IPv4 header but not in the UDP pseudo-header.
		f := append([]byte{}, good...)
		f[14+8]--
		p, err := ParseUDP4(f)
		if err != nil || p.IPChecksumOK || !p.UDPChecksumOK {
			t.Errorf("err %v ip ok %v udp ok %v, want ip bad and udp ok", err, p.IPChecksumOK, p.UDPChecksumOK)
		}
	})
	t.Run("no udp checksum", func(t *testing.T) {
		f := append([]byte{}, good...)
		f[14+20+6], f[14+20+7] = 0, 0
		p, err := ParseUDP4(f)
		if err != nil || p.UDPChecksumPresent || !p.UDPChecksumOK {
			t.Errorf("err %v present %v ok %v", err, p.UDPChecksumPresent, p.UDPChecksumOK)
		}
	})
	for _, c := range []struct {
		name   string
		mangle func([]byte) []byte
		want   error
	}{
		{"short ethernet", func(f []byte) []byte { return f[:10] }, ErrTruncated},
		{"arp", func(f []byte) []byte { f[12], f[13] = 0x08, 0x06; return f }, ErrNotIPv4},
		{"ipv6 version", func(f []byte) []byte { f[14] = 0x65; return f }, ErrNotIPv4},
		{"short ip", func(f []byte) []byte { return f[:30] }, ErrTruncated},
		{"total beyond frame", func(f []byte) []byte { return f[:len(f)-1] }, ErrTruncated},
		{"ihl too small", func(f []byte) []byte { f[14] = 0x44; return f }, ErrBadIPv4},
		{"fragment", func(f []byte) []byte { f[14+6] = 0x20; return f }, ErrFragment},
		{"tcp", func(f []byte) []byte { f[14+9] = 6; return f }, ErrNotUDP},
		{"udp length", func(f []byte) []byte { f[14+20+5]++; return f }, ErrBadUDPSize},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseUDP4(c.mangle(append([]byte{}, good...)))
			if !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestProbeRoundTrip(t *testing.T) {
	var b [ProbeLen]byte
	for _, c := range []struct {
		seq   uint64
		stamp int64
	}{{0, 0}, {1, 12345}, {probeSeqMask, 1<<63 - 1}, {0xabcdef012345, 42}} {
		putProbe(b[:], c.seq, c.stamp)
		seq, stamp, ok := parseProbe(b[:])
		if !ok || seq != c.seq || stamp != c.stamp {
			t.Errorf("probe %d/%d read back as %d/%d ok=%v", c.seq, c.stamp, seq, stamp, ok)
		}
	}
	b[0] ^= 1
	if _, _, ok := parseProbe(b[:]); ok {
		t.Error("probe with a wrong magic accepted")
	}
	if _, _, ok := parseProbe(b[:ProbeLen-1]); ok {
		t.Error("short probe accepted")
	}
}
