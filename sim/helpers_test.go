package sim

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// Register offsets as the datasheet's tables give them, written out again
// here so the tests do not trust the model's own constants.
const (
	tCTRL     = 0x00000
	tSTATUS   = 0x00008
	tEICR     = 0x00800
	tEICS     = 0x00808
	tEIMS     = 0x00880
	tEIMC     = 0x00888
	tGPIE     = 0x00898
	tIVAR     = 0x00900
	tIVARMISC = 0x00A00
	tRXCTRL   = 0x03000
	tRDRXCTL  = 0x02F00
	tHLREG0   = 0x04240
	tLINKS    = 0x042A4
	tAUTOC    = 0x042A0
	tDMATXCTL = 0x04A80
	tRXCSUM   = 0x05000
	tFCTRL    = 0x05080
	tVLNCTRL  = 0x05088
	tMCSTCTRL = 0x05090
	tMTA      = 0x05200
	tVFTA     = 0x0A000
	tRAL      = 0x0A200
	tRETA     = 0x0EB00
	tRSSRK    = 0x0EB80
	tMRQC     = 0x0EC80
	tEEC      = 0x10010
	tEERD     = 0x10014
	tGPRC     = 0x04074
	tGPTC     = 0x04080
	tGORCL    = 0x04088
	tGORCH    = 0x0408C
	tGOTCL    = 0x04090
	tMPC0     = 0x03FA0
	tRNBC0    = 0x03FC0
	tQPRC0    = 0x01030
	tQPRDC0   = 0x01430
	tQPTC0    = 0x08680
	tBPRC     = 0x04078
	tMPRC     = 0x0407C
)

func tRxq(q int, reg uint32) uint32 {
	if q < 64 {
		return 0x01000 + 0x40*uint32(q) + reg
	}
	return 0x0D000 + 0x40*uint32(q-64) + reg
}

func tTxq(q int, reg uint32) uint32 { return 0x06000 + 0x40*uint32(q) + reg }

// newPF builds a model with the default delays, bus mastering on.
func newPF(t testing.TB, mod func(*Options)) (*PF, vfio.BAR) {
	t.Helper()
	o := DefaultOptions()
	if mod != nil {
		mod(&o)
	}
	p := NewPF(o)
	if err := vfio.EnableBusMaster(p.Config()); err != nil {
		t.Fatalf("enable bus master: %v", err)
	}
	bar, err := p.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, bar
}

// dmaMem returns anonymous mmap memory, as VFIO requires (not Go heap).
func dmaMem(t testing.TB, size int) []byte {
	t.Helper()
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", size, err)
	}
	t.Cleanup(func() { _ = unix.Munmap(m) })
	return m
}

// pollSet reads reg until mask is set, failing after many reads.
func pollSet(t testing.TB, bar vfio.BAR, reg, mask uint32) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if bar.Read32(reg)&mask == mask {
			return
		}
	}
	t.Fatalf("register %#x bits %#x never set (reads %#x)", reg, mask, bar.Read32(reg))
}

func setBits(bar vfio.BAR, reg, v uint32) { bar.Write32(reg, bar.Read32(reg)|v) }

var (
	testMAC  = [6]byte{0x02, 0x00, 0x5e, 0x10, 0xfb, 0x01}
	peerMAC  = [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	bcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// csum is an independent RFC 1071 checksum (byte pairs, 32-bit fold) used
// to verify the model's.
func csum(parts ...[]byte) uint16 {
	var s uint32
	var odd bool
	var carry byte
	for _, b := range parts {
		for _, c := range b {
			if odd {
				s += uint32(carry)<<8 | uint32(c)
			} else {
				carry = c
			}
			odd = !odd
		}
	}
	if odd {
		s += uint32(carry) << 8
	}
	for s > 0xFFFF {
		s = s>>16 + s&0xFFFF
	}
	return uint16(s)
}

func pseudo(src, dst netip.Addr, proto byte, n int) []byte {
	var b []byte
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	if src.Is4() {
		return append(b, 0, proto, byte(n>>8), byte(n))
	}
	return append(b, 0, 0, byte(n>>8), byte(n), 0, 0, 0, proto)
}

// frameSpec describes a test frame.
type frameSpec struct {
	dst, src   [6]byte
	vlan       int // -1: untagged
	srcIP      netip.Addr
	dstIP      netip.Addr
	proto      byte // 6 TCP, 17 UDP, 0: raw payload, no IP
	sport      uint16
	dport      uint16
	payload    int
	badL4      bool
	l4Partial  bool // TX: leave pseudo-header sum in the L4 checksum field (and no IP checksum)
	tsoPartial bool // TX TSO: pseudo-header sum without length
	tcpFlags   byte
}

// buildFrame makes an Ethernet frame with correct checksums (unless asked
// otherwise).
func buildFrame(s frameSpec) []byte {
	be := binary.BigEndian
	f := append([]byte{}, s.dst[:]...)
	f = append(f, s.src[:]...)
	if s.vlan >= 0 {
		f = be.AppendUint16(f, 0x8100)
		f = be.AppendUint16(f, uint16(s.vlan))
	}
	if s.proto == 0 {
		f = be.AppendUint16(f, 0x88B5) // local experimental ethertype
		for i := 0; i < s.payload; i++ {
			f = append(f, byte(i))
		}
		return f
	}
	var l4 []byte
	if s.proto == 6 {
		l4 = make([]byte, 20)
		be.PutUint16(l4[0:], s.sport)
		be.PutUint16(l4[2:], s.dport)
		be.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = s.tcpFlags
		if l4[13] == 0 {
			l4[13] = 0x10 // ACK
		}
		be.PutUint16(l4[14:], 8192)
	} else {
		l4 = make([]byte, 8)
		be.PutUint16(l4[0:], s.sport)
		be.PutUint16(l4[2:], s.dport)
	}
	for i := 0; i < s.payload; i++ {
		l4 = append(l4, byte(i*7))
	}
	if s.proto == 17 {
		be.PutUint16(l4[4:], uint16(len(l4)))
	}
	off := 16
	if s.proto == 17 {
		off = 6
	}
	switch {
	case s.tsoPartial:
		be.PutUint16(l4[off:], csum(pseudo(s.srcIP, s.dstIP, s.proto, 0)))
	case s.l4Partial:
		be.PutUint16(l4[off:], csum(pseudo(s.srcIP, s.dstIP, s.proto, len(l4))))
	default:
		c := ^csum(pseudo(s.srcIP, s.dstIP, s.proto, len(l4)), l4)
		if s.badL4 {
			c ^= 0x5555
		}
		be.PutUint16(l4[off:], c)
	}
	if s.srcIP.Is4() {
		f = be.AppendUint16(f, 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		be.PutUint16(ip[2:], uint16(20+len(l4)))
		be.PutUint16(ip[4:], 0x1234)
		ip[8] = 64
		ip[9] = s.proto
		copy(ip[12:], s.srcIP.AsSlice())
		copy(ip[16:], s.dstIP.AsSlice())
		if !s.l4Partial && !s.tsoPartial {
			be.PutUint16(ip[10:], ^csum(ip))
		}
		f = append(f, ip...)
	} else {
		f = be.AppendUint16(f, 0x86DD)
		ip := make([]byte, 40)
		ip[0] = 0x60
		be.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = s.proto
		ip[7] = 64
		copy(ip[8:], s.srcIP.AsSlice())
		copy(ip[24:], s.dstIP.AsSlice())
		f = append(f, ip...)
	}
	f = append(f, l4...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

func udpFrame(dst [6]byte, payload int) []byte {
	return buildFrame(frameSpec{dst: dst, src: peerMAC, vlan: -1,
		srcIP: netip.MustParseAddr("10.0.0.2"), dstIP: netip.MustParseAddr("10.0.0.1"),
		proto: 17, sport: 4000, dport: 5000, payload: payload})
}
