package sim

import (
	"encoding/binary"

	"github.com/zcnet/zcnet/internal/checksum"
)

// Packet parsing and pseudo-header sums shared by the receive checks and
// the transmit offloads.

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86DD
	protoTCP      = 6
	protoUDP      = 17
	protoSCTP     = 132
)

// pktInfo is what the receive parser finds in a frame.
type pktInfo struct {
	vlan    bool   // an 802.1Q tag (ethertype VLNCTRL.VET) follows the addresses
	tci     uint16 // the tag's TCI
	l3      int    // offset of the IP header
	ipv4    bool
	ipv4Opt bool // IPv4 header with options
	ipv6    bool
	ipv6Ext bool // IPv6 with extension headers (not parsed further)
	l4      int  // offset of the L4 header, 0 if none
	l4Len   int  // L4 header + payload length, from the IP header
	proto   uint8
	frag    bool // IPv4 fragment: no L4 header to trust
	ipOK    bool // IPv4 header complete
}

func parsePacket(f []byte, vet uint16) pktInfo {
	var pi pktInfo
	if len(f) < 14 {
		return pi
	}
	et := binary.BigEndian.Uint16(f[12:])
	pi.l3 = 14
	if et == vet && len(f) >= 18 {
		pi.vlan = true
		pi.tci = binary.BigEndian.Uint16(f[14:])
		et = binary.BigEndian.Uint16(f[16:])
		pi.l3 = 18
	}
	ip := f[pi.l3:]
	switch et {
	case etherTypeIPv4:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return pi
		}
		ihl := int(ip[0]&0xF) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || total < ihl || total > len(ip) {
			return pi
		}
		pi.ipv4, pi.ipOK = true, true
		pi.ipv4Opt = ihl > 20
		pi.proto = ip[9]
		pi.frag = binary.BigEndian.Uint16(ip[6:])&0x3FFF != 0 // MF or offset
		pi.l4 = pi.l3 + ihl
		pi.l4Len = total - ihl
	case etherTypeIPv6:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return pi
		}
		payload := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+payload > len(ip) {
			return pi
		}
		pi.ipv6 = true
		pi.proto = ip[6]
		switch pi.proto {
		case protoTCP, protoUDP, protoSCTP:
			pi.l4 = pi.l3 + 40
			pi.l4Len = payload
		default:
			pi.ipv6Ext = true
		}
	}
	if pi.l4 != 0 {
		minLen := 8
		if pi.proto == protoTCP {
			minLen = 20
		}
		if pi.frag || pi.l4Len < minLen {
			pi.l4 = 0
		}
	}
	return pi
}

// pseudoSum is the one's-complement sum of the IPv4 or IPv6 pseudo-header
// of an L4 segment of length n.
func pseudoSum(f []byte, pi *pktInfo, n int) uint64 {
	ip := f[pi.l3:]
	var s uint64
	if pi.ipv4 {
		s = checksum.Add(0, ip[12:20])
	} else {
		s = checksum.Add(0, ip[8:40])
	}
	return s + uint64(pi.proto) + uint64(n)
}

// rxChecksums verifies the IPv4 header and TCP/UDP checksums the way the
// receive descriptor reports them.
func rxChecksums(f []byte, pi *pktInfo) (ipcs, ipe, l4cs, udpcs, l4e bool) {
	if pi.ipv4 && pi.ipOK {
		ipcs = true
		ihl := int(f[pi.l3]&0xF) * 4
		ipe = checksum.Fold(checksum.Add(0, f[pi.l3:pi.l3+ihl])) != 0xFFFF
	}
	if pi.l4 == 0 || (pi.proto != protoTCP && pi.proto != protoUDP) {
		return
	}
	seg := f[pi.l4 : pi.l4+pi.l4Len]
	if pi.proto == protoUDP {
		udpcs = true
		if pi.ipv4 && binary.BigEndian.Uint16(seg[6:]) == 0 {
			return // no checksum sent
		}
	}
	l4cs = true
	l4e = checksum.Fold(checksum.Add(pseudoSum(f, pi, pi.l4Len), seg)) != 0xFFFF
	return
}
